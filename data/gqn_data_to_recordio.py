"""Convert DeepMind's gqn-datasets TFRecords into our indexed RecordIO shards, one shard per input file.

Examples (the third converts what python -m gqn.synthetic --tfrecord-dir /tmp/gqn-tf --train-scenes 500 wrote):
  python data/gqn_data_to_recordio.py --dataset rooms_ring_camera --tfrecord-dir /data/gqn --data-dir datasets
  python data/gqn_data_to_recordio.py --dataset rooms_ring_camera --data-dir datasets --verify
  python data/gqn_data_to_recordio.py --dataset rooms_ring --train-scenes 500 --tfrecord-dir /tmp/gqn-tf --data-dir .

Reads TFRECORD_DIR/NAME/{train,test}/*.tfrecord and writes DATA_DIR/NAME/{train,test}/{stem}.rec + .idx (the
stem of the input file), then {stem}.source.json (the source file's size and mtime: the shard is finished), and last
manifest.json. Every record is checked (both CRCs, the two features, S frames and 5*S finite cameras, each
frame a colour JPEG of the dataset's size); JPEG bytes are copied verbatim. A rerun keeps each finished shard
whose source is unchanged and whose files check out and redoes the others, so an interrupted conversion ends
byte-identical to an uninterrupted one. One converter at a time per DATA_DIR/NAME: DATA_DIR/NAME/convert.lock
holds its pid. --verify reads every record of a converted dataset and checks it against its checksum and the
manifest. A synthetic family's NAME follows the rule of every other tool, NAME-SIZEpx-SCENES (--image-size,
--train-scenes), as python -m gqn.synthetic --tfrecord-dir writes it.
"""
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gqn import cli, locks, processes, scene_format, tfrecord  # noqa: E402  (needs the repository root on sys.path)
from gqn.datasets import (ALL_DATASETS, SPLITS, SYNTHETIC_FAMILIES, dataset_root,  # noqa: E402
                          expected_files, get_dataset)
from gqn.files import fsync_path  # noqa: E402

SUFFIX = ".tfrecord"
NOTE_SUFFIX = ".source.json"
LOCK = "convert.lock"
_BAD_INPUT = (tfrecord.RecordError, scene_format.DataError)
_stop = None  # in a worker process: the Event that asks it to abandon its file


class ConversionError(Exception):
    """Input that cannot be converted; the message says which file, record or directory."""


class _Stopped(Exception):
    """In a worker: the parent asked it to abandon its file (another file failed, or Ctrl-C)."""


def check_scene(frames, cameras, size):
    """Raise DataError unless every frame is a colour JPEG of size x size pixels and every camera finite."""
    scene_format.check_frames(frames, size)
    bad = np.flatnonzero(~np.isfinite(cameras).all(axis=1))
    if len(bad):
        raise scene_format.DataError("camera of view %d is not finite: %s" % (bad[0], cameras[bad[0]].tolist()))


def _scene_records(path, info):
    """Yield our scene record for each validated Example of a TFRecord file."""
    for index, data in enumerate(tfrecord.read_records(path)):
        if _stop is not None and _stop.is_set():
            raise _Stopped()
        try:
            frames, cameras = tfrecord.decode_scene_example(data, info.views_per_scene)
            check_scene(frames, cameras, info.frame_size)
        except _BAD_INPUT as err:
            raise tfrecord.RecordError("record %d: %s" % (index, err))
        yield scene_format.encode_scene(frames, cameras)


def _source_stamp(path):
    """What a finished shard records of its source, to tell when the file changed since."""
    stat = os.stat(path)
    return {"source": os.path.basename(path), "source_bytes": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def convert_file(job):
    """Convert one TFRecord file into its shard: (stem, scenes, None), or (stem, 0, error line)."""
    path, split_dir, info = job
    stem = os.path.basename(path)[:-len(SUFFIX)]
    note = _source_stamp(path)  # before reading: a file that grows meanwhile is redone by the next run
    try:
        with scene_format.shard_writer(split_dir, stem) as writer:
            for record in _scene_records(path, info):
                writer.write(record)
    except tfrecord.RecordError as err:
        return stem, 0, "%s: %s" % (path, err)
    except _Stopped:
        return stem, 0, "stopped"
    note.update(scenes=writer.count, rec_bytes=os.path.getsize(scene_format.shard_paths(split_dir, stem)[0]))
    scene_format.write_json(os.path.join(split_dir, stem + NOTE_SUFFIX), note)
    return stem, writer.count, None


def _read_note(split_dir, stem):
    try:
        with open(os.path.join(split_dir, stem + NOTE_SUFFIX)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _redo_reason(split_dir, stem, path):
    """None for a finished shard that is current; else why it is (re)done ('' when it was never finished)."""
    note = _read_note(split_dir, stem)
    if note is None:
        return "" if not os.path.exists(os.path.join(split_dir, stem + NOTE_SUFFIX)) else "its note is unreadable"
    if {k: note.get(k) for k in ("source", "source_bytes", "source_mtime_ns")} != _source_stamp(path):
        return "%s changed since it was converted" % path
    rec, idx = scene_format.shard_paths(split_dir, stem)
    try:
        count = len(scene_format.read_index(idx))
        size = os.path.getsize(rec)
    except (scene_format.DataError, OSError):
        count = size = None
    if (count, size) != (note.get("scenes"), note.get("rec_bytes")):
        return "its files do not match what was written (damaged or truncated)"
    return None


def _discard_shard(split_dir, stem):
    """Remove a shard's note first (it is no longer finished), then its files."""
    rec, idx = scene_format.shard_paths(split_dir, stem)
    for path in (os.path.join(split_dir, stem + NOTE_SUFFIX), rec, idx):
        if os.path.exists(path):
            os.remove(path)


def _plan(split_dir, paths, stems):
    """The source files whose shards are to be (re)done; ConversionError for a shard whose source is gone
    (a wrong --root would otherwise look like a dataset that shrank)."""
    present = {n[:-len(suffix)] for n in os.listdir(split_dir) for suffix in (".rec", ".idx", NOTE_SUFFIX)
               if n.endswith(suffix)}
    orphans = sorted(present - set(stems))
    if orphans:
        raise ConversionError("%s holds %d shards without a source in %s (e.g. %s has no %s%s); restore the "
                              "sources, or delete those shards (.rec, .idx, %s)" % (
                                  split_dir, len(orphans), os.path.dirname(paths[0]), orphans[0], orphans[0],
                                  SUFFIX, NOTE_SUFFIX))
    todo = []
    for path, stem in zip(paths, stems):
        reason = _redo_reason(split_dir, stem, path)
        if reason:
            print("redoing shard %s: %s" % (stem, reason), file=sys.stderr)
        if reason is not None:
            todo.append(path)
    return todo


def _init_worker(parent_pid, stop):
    global _stop
    processes.init_worker(parent_pid)
    _stop = stop


def _run_jobs(jobs, workers, bar):
    """Convert the jobs (in worker processes when workers > 1); ConversionError on the first failure.

    After a failure or Ctrl-C the workers abandon their files (a rerun redoes them) and the rest are cancelled.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _finished(convert_file(job), bar)
        return
    stop = multiprocessing.Event()
    with concurrent.futures.ProcessPoolExecutor(workers, initializer=_init_worker,
                                                initargs=(os.getpid(), stop)) as pool:
        futures = [pool.submit(convert_file, job) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                _finished(future.result(), bar)
        except concurrent.futures.process.BrokenProcessPool:
            raise ConversionError("a worker process died (killed, or out of memory?); "
                                  "rerun the same command to resume")
        finally:
            stop.set()
            for future in futures:
                future.cancel()


def _finished(result, bar):
    """Count a converted file, or raise its error."""
    _, _, error = result
    if error:
        raise ConversionError(error)
    bar.update(1)


def convert_split(info, root, out, split, workers=1, folder=None):
    """Convert ROOT/FOLDER/split into OUT/FOLDER/split (keeping finished, current shards); its manifest. FOLDER is
    the dataset's directory name (default: its name)."""
    folder = folder or info.name
    paths = _source_files(root, info, split, folder)
    split_dir = os.path.join(out, folder, split)
    os.makedirs(split_dir, exist_ok=True)
    scene_format.remove_temporary_files(split_dir)
    stems = [os.path.basename(p)[:-len(SUFFIX)] for p in paths]
    todo = _plan(split_dir, paths, stems)
    if todo:  # until the new one is written, no manifest says the split is complete
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(split_dir, scene_format.MANIFEST))
        fsync_path(split_dir)
        for path in todo:
            _discard_shard(split_dir, os.path.basename(path)[:-len(SUFFIX)])
    if len(todo) < len(paths):
        print("%s/%s: %d shards already finished, keeping them"
              % (info.name, split, len(paths) - len(todo)), file=sys.stderr)
    desc = "%s/%s" % (info.name, split)
    try:
        with tqdm(total=len(paths), initial=len(paths) - len(todo), unit="file", desc=desc) as bar:
            _run_jobs([(p, split_dir, info) for p in todo], workers, bar)
    finally:
        scene_format.remove_temporary_files(split_dir)
    notes = [_read_note(split_dir, s) for s in stems]
    shards = [(s, note["scenes"], note["source"]) for s, note in zip(stems, notes)]
    source = {"kind": "deepmind-tfrecord", "files": len(paths), "files_expected": expected_files(info, split)}
    manifest = scene_format.make_manifest(info, split, shards, source)
    scene_format.write_manifest(split_dir, manifest)
    return manifest


def _source_files(root, info, split, folder):
    """Sorted paths of the split's TFRecord files, with a note when the download is partial."""
    src_dir = os.path.join(root, folder, split)
    if not os.path.isdir(src_dir):
        raise ConversionError("missing split directory %s (expected TFRECORD_DIR/%s/%s/*%s)"
                              % (src_dir, folder, split, SUFFIX))
    names = sorted(n for n in os.listdir(src_dir) if n.endswith(SUFFIX))
    if not names:
        raise ConversionError("no *%s files in %s" % (SUFFIX, src_dir))
    expected = expected_files(info, split)
    if expected is not None and len(names) < expected:
        print("%s/%s: %d of %d files present (partial download); converting those"
              % (info.name, split, len(names), expected), file=sys.stderr)
    return [os.path.join(src_dir, n) for n in names]


def verify_split(split_dir, manifest, bar):
    """One line per problem of a converted split with a readable manifest: its shard files against the manifest,
    and every record's checksum and view count."""
    listed = {s["name"] + ".rec" for s in manifest["shards"]}
    problems = ["%s: not listed in %s" % (os.path.join(split_dir, n), scene_format.MANIFEST)
                 for n in sorted(os.listdir(split_dir)) if n.endswith(".rec") and n not in listed]
    for entry in manifest["shards"]:
        rec, idx = scene_format.shard_paths(split_dir, entry["name"])
        try:
            offsets = scene_format.read_index(idx)
        except scene_format.DataError as error:
            problems.append(str(error))
            bar.update(entry["scenes"])
            continue
        if len(offsets) != entry["scenes"]:
            problems.append("%s: %d records; %s says %d" % (idx, len(offsets), scene_format.MANIFEST, entry["scenes"]))
        problems += _verify_records(rec, offsets, manifest["views_per_scene"], bar)
    if not problems:  # else open_split would only repeat the first of them
        try:
            scene_format.open_split(split_dir)  # adds the first record's frame size against the manifest
        except scene_format.DataError as error:
            problems.append(str(error))
    return problems


def _verify_records(rec, offsets, views, bar):
    """Problems of each record of one .rec file, and bytes after its last record."""
    try:
        fd = os.open(rec, os.O_RDONLY)
    except FileNotFoundError:
        bar.update(len(offsets))
        return ["%s: missing" % rec]
    problems, end = [], 0
    try:
        for number, offset in enumerate(offsets.tolist()):
            try:
                payload, end = scene_format.read_record(fd, offset)
                frames, _ = scene_format.decode_scene(payload)
                if len(frames) != views:
                    raise scene_format.DataError("%d views; the manifest says %d" % (len(frames), views))
            except scene_format.DataError as error:
                problems.append("%s: record %d: %s" % (rec, number, error))
                end = None
            bar.update(1)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if end is not None and end != size:
        problems.append("%s: %d bytes after the last record" % (rec, size - end))
    return problems


def verify(out, name, splits):
    """Check every record of OUT/NAME/{splits}; print one line per problem; exit status (0 ok, 1 problems)."""
    directory = os.path.join(out, name)
    if not os.path.isdir(directory):
        raise ConversionError("no converted dataset at %s" % directory)
    running = locks.lock_holder(directory, LOCK)
    if running:
        raise ConversionError("%s is being converted by pid %s; verify it when that has finished" % (directory, running))
    bad = 0
    for split in splits:
        split_dir = os.path.join(directory, split)
        try:
            manifest = scene_format.read_manifest(split_dir)
        except (FileNotFoundError, scene_format.DataError) as error:
            manifest, problems = None, [str(error)]
        if manifest:
            with tqdm(total=manifest["scene_count"], unit="scene", desc="verify %s/%s" % (name, split)) as bar:
                problems = verify_split(split_dir, manifest, bar)
        for line in problems:
            print("error: %s" % line, file=sys.stderr)
        bad += len(problems)
        print("%s/%s: %s" % (name, split, "%d problems" % len(problems) if problems else
                             "%d scenes, every record checks out" % manifest["scene_count"]), file=sys.stderr)
    return 1 if bad else 0


def main(argv=None):
    parser = cli.Parser(__doc__)
    parser.add_argument("--dataset", required=True, choices=list(ALL_DATASETS), metavar="NAME",
                        help="one of: " + ", ".join(ALL_DATASETS))
    parser.add_argument("--tfrecord-dir", help="directory holding NAME/{train,test}/*.tfrecord (required unless "
                        "--verify)")
    parser.add_argument("--data-dir", required=True, help="data root to write; shards go to DATA_DIR/NAME/SPLIT")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                        help="default: train test")
    parser.add_argument("--image-size", type=cli.bounded(int, 4), default=64,
                        help="a synthetic family's frame size, part of its NAME (default: 64)")
    parser.add_argument("--train-scenes", type=cli.bounded(int, 1), default=2000,
                        help="a synthetic family's training scenes, part of its NAME (default: 2000)")
    cli.add_workers(parser, "processes converting a file each")
    parser.add_argument("--verify", action="store_true",
                        help="check every record of DATA_DIR/NAME against its checksum and the manifest; exit 1 on "
                             "any problem")
    args = parser.parse_args(argv)
    if not args.verify and args.tfrecord_dir is None:
        parser.error("--tfrecord-dir is required (unless --verify)")
    info = get_dataset(args.dataset)
    if args.dataset in SYNTHETIC_FAMILIES:
        info = info._replace(frame_size=args.image_size)
    folder = os.path.basename(dataset_root("", args.dataset, args.image_size, args.train_scenes))
    try:
        if args.verify:
            return verify(args.data_dir, folder, args.splits)
        with locks.directory_lock(os.path.join(args.data_dir, folder), LOCK):
            for split in args.splits:
                manifest = convert_split(info, args.tfrecord_dir, args.data_dir, split, args.workers, folder)
                print("%s/%s: %d scenes in %d shards -> %s" % (
                    folder, split, manifest["scene_count"], len(manifest["shards"]),
                    os.path.join(args.data_dir, folder, split)), file=sys.stderr)
    except ConversionError as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    except locks.DirectoryLocked as err:
        print("error: %s: another converter is writing there; wait for it to finish, or stop it" % err,
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(processes.exit_status(main))
