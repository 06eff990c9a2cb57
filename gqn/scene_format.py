"""Our scene record (JPEG bytes verbatim plus raw cameras, no pickle), its RecordIO shards and manifest.

A record is one scene, little-endian:
    magic b"GQS1" | S: uint32 | S frame byte lengths: uint32 | cameras: S*5 float32 | S JPEGs
where each camera is DeepMind's x, y, z, yaw, pitch (radians). A split directory holds shards
`{i}-of-{n}.rec` + `.idx` (mx.recordio.MXIndexedRecordIO, keys 0..count-1) and `manifest.json`.
Shards and manifests are written under a temporary name and renamed when complete, so a file
with its final name is always whole.
"""
import contextlib
import json
import os
import struct

import mxnet as mx
import numpy as np

MAGIC = b"GQS1"
FORMAT = "gqn-scenes-recordio"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"
_HEAD = struct.Struct("<4sI")


def encode_scene(frames, cameras):
    """Bytes of one scene record from S JPEG byte strings and raw cameras (S, 5)."""
    cameras = np.ascontiguousarray(cameras, dtype="<f4")
    if cameras.shape != (len(frames), 5):
        raise ValueError("cameras have shape %s; expected (%d, 5) for %d frames"
                         % (cameras.shape, len(frames), len(frames)))
    lengths = np.array([len(f) for f in frames], dtype="<u4")
    return b"".join([_HEAD.pack(MAGIC, len(frames)), lengths.tobytes(), cameras.tobytes()]
                    + [bytes(f) for f in frames])


def decode_scene(record):
    """(frames: list of S JPEG byte strings, cameras: (S, 5) float32) from one scene record."""
    if len(record) < _HEAD.size or record[:4] != MAGIC:
        raise ValueError("not a scene record: starts with %r, expected magic %r"
                         % (bytes(record[:4]), MAGIC))
    _, views = _HEAD.unpack_from(record)
    lengths_end = _HEAD.size + 4 * views
    cameras_end = lengths_end + 4 * 5 * views
    if len(record) < cameras_end:
        raise ValueError("scene record of %d bytes is too short for %d views" % (len(record), views))
    lengths = np.frombuffer(record, "<u4", views, _HEAD.size)
    cameras = np.frombuffer(record, "<f4", 5 * views, lengths_end).reshape(views, 5)
    if cameras_end + int(lengths.sum()) != len(record):
        raise ValueError("scene record has %d bytes; its header says %d"
                         % (len(record), cameras_end + int(lengths.sum())))
    ends = cameras_end + np.cumsum(lengths)
    frames = [record[end - n:end] for end, n in zip(ends.tolist(), lengths.tolist())]
    return frames, cameras.astype(np.float32)


def shard_paths(split_dir, stem):
    """(.rec path, .idx path) of the shard called `stem`."""
    base = os.path.join(split_dir, stem)
    return base + ".rec", base + ".idx"


def shard_is_complete(split_dir, stem):
    """True when both files of the shard exist under their final names."""
    return all(os.path.exists(p) for p in shard_paths(split_dir, stem))


def count_records(split_dir, stem):
    """Number of records in a complete shard (the lines of its index)."""
    with open(shard_paths(split_dir, stem)[1]) as f:
        return sum(1 for _ in f)


def remove_temporary_files(split_dir):
    """Delete what an interrupted writer left behind (files ending in .tmp)."""
    for name in os.listdir(split_dir):
        if name.endswith(TMP_SUFFIX):
            os.remove(os.path.join(split_dir, name))


@contextlib.contextmanager
def shard_writer(split_dir, stem):
    """Yield a writer whose write(payload) appends a record; the shard gets its name on success.

    The .rec is renamed before the .idx, so a shard whose .idx exists is complete. On an exception
    both temporary files are removed and the exception propagates.
    """
    rec, idx = shard_paths(split_dir, stem)
    tmp_rec, tmp_idx = rec + TMP_SUFFIX, idx + TMP_SUFFIX
    writer = _ShardWriter(tmp_idx, tmp_rec)
    try:
        yield writer
        writer.close()
    except BaseException:
        writer.close()
        for path in (tmp_rec, tmp_idx):
            if os.path.exists(path):
                os.remove(path)
        raise
    os.replace(tmp_rec, rec)
    os.replace(tmp_idx, idx)


class _ShardWriter:
    """Appends records with consecutive integer keys to one MXIndexedRecordIO file pair."""

    def __init__(self, idx_path, rec_path):
        self._record_io = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "w")
        self.count = 0

    def write(self, payload):
        self._record_io.write_idx(self.count, payload)
        self.count += 1

    def close(self):
        self._record_io.close()


def make_manifest(info, split, shards, source):
    """The manifest dict of a split; `shards` is a list of (stem, scene count, source file or None)."""
    entries = [{"name": stem, "scenes": count, "source": src} for stem, count, src in shards]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": info.name,
        "split": split,
        "frame_size": info.frame_size,
        "views_per_scene": info.views_per_scene,
        "scene_count": sum(count for _, count, _ in shards),
        "shards": entries,
        "source": source,
    }


def write_manifest(split_dir, manifest):
    """Write manifest.json atomically, with sorted keys so equal manifests are equal bytes."""
    path = os.path.join(split_dir, MANIFEST)
    with open(path + TMP_SUFFIX, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + TMP_SUFFIX, path)


def read_manifest(split_dir):
    """The manifest dict of a split directory, with a clear error when it is missing or foreign."""
    path = os.path.join(split_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            "no %s in %s: convert DeepMind data with data/gqn_data_to_recordio.py or make "
            "scenes with `python -m gqn.synthetic`" % (MANIFEST, split_dir))
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError("%s has format %r version %r; expected %r version %d" % (
            path, manifest.get("format"), manifest.get("format_version"), FORMAT, FORMAT_VERSION))
    return manifest
