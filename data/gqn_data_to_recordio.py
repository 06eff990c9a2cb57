"""Convert DeepMind's gqn-datasets TFRecords into our indexed RecordIO shards, one shard per input file.

    python data/gqn_data_to_recordio.py rooms_ring_camera --root /data/gqn-dataset --out /data/gqn --workers 4

Reads ROOT/NAME/{train,test}/*.tfrecord and writes OUT/NAME/{train,test}/{stem}.rec + .idx (the
stem of the input file) and manifest.json. Every record is checked (both CRCs, the two features,
S frames and 5*S cameras, each frame a JPEG of the dataset's size); JPEG bytes are copied verbatim.
A rerun skips the shards already finished, so an interrupted conversion resumes where it stopped
and ends byte-identical to an uninterrupted one.
"""
import argparse
import concurrent.futures
import os
import sys

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gqn import scene_format, tfrecord  # noqa: E402  (needs the repository root on sys.path)
from gqn.datasets import ALL_DATASETS, SPLITS, expected_files, get_dataset  # noqa: E402

SUFFIX = ".tfrecord"


class ConversionError(Exception):
    """Input that cannot be converted; the message says which file, record or directory."""


def check_frames(frames, size):
    """Raise RecordError unless every frame is a JPEG of size x size pixels."""
    for index, frame in enumerate(frames):
        image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise tfrecord.RecordError("frame %d is not a decodable JPEG" % index)
        if image.shape[:2] != (size, size):
            raise tfrecord.RecordError("frame %d is %dx%d pixels; expected %dx%d"
                                       % (index, image.shape[1], image.shape[0], size, size))


def _scene_records(path, info):
    """Yield our scene record for each validated Example of a TFRecord file."""
    for index, data in enumerate(tfrecord.read_records(path)):
        try:
            frames, cameras = tfrecord.decode_scene_example(data, info.views_per_scene)
            check_frames(frames, info.frame_size)
        except tfrecord.RecordError as err:
            raise tfrecord.RecordError("record %d: %s" % (index, err))
        yield scene_format.encode_scene(frames, cameras)


def convert_file(job):
    """Convert one TFRecord file into its shard: (stem, scenes, None), or (stem, 0, error line)."""
    path, split_dir, info = job
    stem = os.path.basename(path)[:-len(SUFFIX)]
    try:
        with scene_format.shard_writer(split_dir, stem) as writer:
            for record in _scene_records(path, info):
                writer.write(record)
    except tfrecord.RecordError as err:
        return stem, 0, "%s: %s" % (path, err)
    return stem, writer.count, None


def _source_files(root, info, split):
    """Sorted paths of the split's TFRecord files, with a note when the download is partial."""
    src_dir = os.path.join(root, info.name, split)
    if not os.path.isdir(src_dir):
        raise ConversionError("missing split directory %s (expected ROOT/%s/%s/*%s)"
                              % (src_dir, info.name, split, SUFFIX))
    names = sorted(n for n in os.listdir(src_dir) if n.endswith(SUFFIX))
    if not names:
        raise ConversionError("no *%s files in %s" % (SUFFIX, src_dir))
    expected = expected_files(info, split)
    if expected is not None and len(names) < expected:
        print("%s/%s: %d of %d files present (partial download); converting those"
              % (info.name, split, len(names), expected), file=sys.stderr)
    return [os.path.join(src_dir, n) for n in names]


def _run_jobs(jobs, workers, bar):
    """Convert the jobs (in worker processes when workers > 1); ConversionError on the first failure.

    After a failure the files already being converted are finished (each is a complete shard
    that a rerun keeps) and the rest are cancelled.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _finished(convert_file(job), bar)
        return
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(convert_file, job) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                _finished(future.result(), bar)
        except concurrent.futures.process.BrokenProcessPool:
            raise ConversionError("a worker process died (killed, or out of memory?); "
                                  "rerun the same command to resume")
        finally:
            for future in futures:
                future.cancel()


def _finished(result, bar):
    """Count a converted file, or raise its error."""
    _, _, error = result
    if error:
        raise ConversionError(error)
    bar.update(1)


def convert_split(info, root, out, split, workers=1):
    """Convert ROOT/NAME/split into OUT/NAME/split (skipping finished shards); its manifest."""
    paths = _source_files(root, info, split)
    split_dir = os.path.join(out, info.name, split)
    os.makedirs(split_dir, exist_ok=True)
    scene_format.remove_temporary_files(split_dir)
    stems = [os.path.basename(p)[:-len(SUFFIX)] for p in paths]
    jobs = [(p, split_dir, info) for p, s in zip(paths, stems)
            if not scene_format.shard_is_complete(split_dir, s)]
    if len(jobs) < len(paths):
        print("%s/%s: %d shards already finished, skipping them"
              % (info.name, split, len(paths) - len(jobs)), file=sys.stderr)
    desc = "%s/%s" % (info.name, split)
    try:
        with tqdm(total=len(paths), initial=len(paths) - len(jobs), unit="file", desc=desc) as bar:
            _run_jobs(jobs, workers, bar)
    finally:
        scene_format.remove_temporary_files(split_dir)
    shards = [(s, scene_format.count_records(split_dir, s), os.path.basename(p))
              for p, s in zip(paths, stems)]
    source = {"kind": "deepmind-tfrecord", "files": len(paths),
              "files_expected": expected_files(info, split)}
    manifest = scene_format.make_manifest(info, split, shards, source)
    scene_format.write_manifest(split_dir, manifest)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="one of: " + ", ".join(ALL_DATASETS))
    parser.add_argument("--root", required=True, help="directory holding NAME/{train,test}")
    parser.add_argument("--out", required=True, help="output root; shards go to OUT/NAME/SPLIT")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                        help="default: train test")
    parser.add_argument("--workers", type=int, default=1, help="parallel files (default: 1)")
    args = parser.parse_args(argv)
    try:
        info = get_dataset(args.dataset)
    except ValueError as err:
        parser.error(str(err))
    try:
        for split in args.splits:
            manifest = convert_split(info, args.root, args.out, split, args.workers)
            print("%s/%s: %d scenes in %d shards -> %s" % (
                info.name, split, manifest["scene_count"], len(manifest["shards"]),
                os.path.join(args.out, info.name, split)), file=sys.stderr)
    except ConversionError as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
