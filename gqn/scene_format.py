"""Our scene record (JPEG bytes verbatim, raw cameras, a CRC32C; no pickle), its RecordIO shards and manifest.

A record is one scene, little-endian:
    magic b"GQS2" | S: uint32 | S frame byte lengths: uint32 | cameras: S*5 float32 | S JPEGs | crc: uint32
where each camera is DeepMind's x, y, z, yaw, pitch (radians) and crc is the CRC32C of every byte before it.
A split directory holds shards `{stem}.rec` + `.idx` (MXNet's indexed RecordIO, keys 0..count-1, written and
read here without mxnet, byte for byte what mx.recordio writes) and `manifest.json`. Shards and manifests are
written under a temporary name, flushed to disk, and renamed when complete, so a file with its final name is
always whole, even after a power cut.
"""
import contextlib
import json
import os
import re
import struct

import cv2
import google_crc32c
import numpy as np

from gqn.files import TMP_SUFFIX, fsync_path, write_atomically

MAGIC = b"GQS2"
FORMAT = "gqn-scenes-recordio"
FORMAT_VERSION = 2  # 1: records without a checksum
MANIFEST = "manifest.json"
_HEAD = struct.Struct("<4sI")
_CRC = struct.Struct("<I")
_RIO_MAGIC = 0xCED7230A  # dmlc-core's RecordIO: magic | cflag (3 bits) << 29 | length, data, zero padding to 4
_RIO_HEAD = struct.Struct("<II")
_RIO_MAX = (1 << 29) - 1
_INDEX = re.compile(rb"(?:[0-9]+\t[0-9]+\n)*")  # MXIndexedRecordIO's index: "key<TAB>offset" lines
_REFRESH = "convert it again with data/gqn_data_to_recordio.py (synthetic scenes: delete %s to render them again)"


class DataError(ValueError):
    """Converted data that cannot be used; the message names the file, and the record where there is one."""


def encode_scene(frames, cameras):
    """Bytes of one scene record from S JPEG byte strings and raw cameras (S, 5)."""
    cameras = np.ascontiguousarray(cameras, dtype="<f4")
    if cameras.shape != (len(frames), 5):
        raise ValueError("cameras have shape %s; expected (%d, 5) for %d frames"
                         % (cameras.shape, len(frames), len(frames)))
    lengths = np.array([len(f) for f in frames], dtype="<u4")
    body = b"".join([_HEAD.pack(MAGIC, len(frames)), lengths.tobytes(), cameras.tobytes()]
                    + [bytes(f) for f in frames])
    return body + _CRC.pack(google_crc32c.value(body))


def decode_scene(record):
    """(frames: list of S JPEG byte strings, cameras: (S, 5) float32) from one scene record; DataError if bad."""
    if record[:4] == b"GQS1":
        raise DataError("a record of format version 1, which has no checksum: " + _REFRESH % "the split")
    if len(record) < _HEAD.size + _CRC.size or record[:4] != MAGIC:
        raise DataError("not a scene record: starts with %r, expected magic %r" % (bytes(record[:4]), MAGIC))
    body, (crc,) = bytes(record[:-_CRC.size]), _CRC.unpack_from(record, len(record) - _CRC.size)
    if google_crc32c.value(body) != crc:
        raise DataError("checksum mismatch: the record is damaged")
    _, views = _HEAD.unpack_from(body)
    lengths_end = _HEAD.size + 4 * views
    cameras_end = lengths_end + 4 * 5 * views
    if len(body) < cameras_end:
        raise DataError("scene record of %d bytes is too short for %d views" % (len(record), views))
    lengths = np.frombuffer(body, "<u4", views, _HEAD.size)
    cameras = np.frombuffer(body, "<f4", 5 * views, lengths_end).reshape(views, 5)
    if cameras_end + int(lengths.sum()) != len(body):
        raise DataError("scene record has %d bytes; its header says %d"
                        % (len(record), cameras_end + int(lengths.sum()) + _CRC.size))
    ends = cameras_end + np.cumsum(lengths)
    frames = [body[end - n:end] for end, n in zip(ends.tolist(), lengths.tolist())]
    return frames, cameras.astype(np.float32)


def check_frames(frames, size):
    """Raise DataError unless every frame is a colour JPEG of size x size pixels (what the loader decodes)."""
    for index, frame in enumerate(frames):
        if not frame:
            raise DataError("frame %d is empty" % index)
        if frame[:3] != b"\xff\xd8\xff":
            raise DataError("frame %d is not a JPEG (it starts with %r)" % (index, bytes(frame[:8])))
        try:
            image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            image = None
        if image is None:
            raise DataError("frame %d is not a decodable JPEG" % index)
        channels = image.shape[2] if image.ndim == 3 else 1
        if channels != 3:
            raise DataError("frame %d is a %d-channel JPEG; expected 3 (colour)" % (index, channels))
        if image.shape[:2] != (size, size):
            raise DataError("frame %d is %dx%d pixels; expected %dx%d"
                            % (index, image.shape[1], image.shape[0], size, size))


def recordio_bytes(payload):
    """One record as MXNet's RecordIO writer frames it: split where the magic sits at a 4-byte-aligned offset
    (the reader re-inserts it), each part behind a magic | cflag, length header, zero-padded to 4 bytes."""
    if len(payload) > _RIO_MAX:
        raise ValueError("a RecordIO record holds at most %d bytes, not %d" % (_RIO_MAX, len(payload)))
    words = np.frombuffer(payload, "<u4", len(payload) // 4)
    cuts = (np.flatnonzero(words == _RIO_MAGIC) * 4).tolist()
    parts, start = [], 0
    for number, cut in enumerate(cuts):
        parts += [_RIO_HEAD.pack(_RIO_MAGIC, (1 if number == 0 else 2) << 29 | cut - start), payload[start:cut]]
        start = cut + 4
    parts += [_RIO_HEAD.pack(_RIO_MAGIC, (3 if cuts else 0) << 29 | len(payload) - start), payload[start:],
              bytes(-len(payload) % 4)]
    return b"".join(parts)


def read_record(fd, offset, data=True):
    """(payload, or None when not `data`, offset after the record) of the RecordIO record at `offset` of an
    open file; DataError when there is none or the file ends inside it."""
    parts, size, first = [], os.fstat(fd).st_size, True
    while True:
        head = os.pread(fd, _RIO_HEAD.size, offset)
        if len(head) < _RIO_HEAD.size:
            raise DataError("the file ends inside the record (truncated)")
        magic, lrec = _RIO_HEAD.unpack(head)
        flag, length = lrec >> 29, lrec & _RIO_MAX
        if magic != _RIO_MAGIC or (flag in (0, 1)) != first:  # 0 whole, 1 first part, 2 middle, 3 last
            raise DataError("no RecordIO record at byte %d of the file" % offset)
        end = offset + _RIO_HEAD.size + ((length + 3) & ~3)
        if end > size:
            raise DataError("the file ends inside the record (truncated)")
        if data:
            parts.append(os.pread(fd, length, offset + _RIO_HEAD.size))
        offset, first = end, False
        if flag in (0, 3):
            return (struct.pack("<I", _RIO_MAGIC).join(parts) if data else None), offset


def shard_paths(split_dir, stem):
    """(.rec path, .idx path) of the shard called `stem`."""
    base = os.path.join(split_dir, stem)
    return base + ".rec", base + ".idx"


def read_index(idx_path):
    """Record offsets (count,) int64 of a shard's .idx, whose keys must be 0..count-1 in order; DataError if not."""
    try:
        with open(idx_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError("%s: missing" % idx_path) from None
    if not _INDEX.fullmatch(data):
        *lines, _ = data.split(b"\n")  # a last line without its newline is cut short
        bad = next((n for n, line in enumerate(lines, 1) if not _INDEX.fullmatch(line + b"\n")), None)
        raise DataError("%s: line %d %s" % (idx_path, bad or len(lines) + 1,
                                            "is not 'key<TAB>offset'" if bad else "is cut short (truncated)"))
    keys, offsets = np.fromstring(data, np.int64, sep=" ").reshape(-1, 2).T  # fast, and _INDEX vetted the text
    if not np.array_equal(keys, np.arange(len(keys))) or np.any(np.diff(offsets) <= 0):
        raise DataError("%s: keys are not 0..%d with increasing offsets" % (idx_path, len(keys) - 1))
    return offsets


def open_shard(split_dir, entry):
    """Record offsets of a manifest shard entry, checked against its files: the index holds the manifest's
    count and the .rec ends exactly where its last record does. DataError naming the file otherwise."""
    rec, idx = shard_paths(split_dir, entry["name"])
    offsets = read_index(idx)
    if len(offsets) != entry["scenes"]:
        raise DataError("%s: %d records; %s says %d" % (idx, len(offsets), os.path.join(split_dir, MANIFEST),
                                                         entry["scenes"]))
    try:
        fd = os.open(rec, os.O_RDONLY)
    except FileNotFoundError:
        raise DataError("%s: missing" % rec) from None
    try:
        size, end = os.fstat(fd).st_size, 0
        if len(offsets):
            try:
                end = read_record(fd, int(offsets[-1]), data=False)[1]
            except DataError as error:
                raise DataError("%s: record %d: %s" % (rec, len(offsets) - 1, error)) from None
    finally:
        os.close(fd)
    if size != end:
        raise DataError("%s: %d bytes after the last record" % (rec, size - end))
    return offsets


def remove_temporary_files(split_dir):
    """Delete what an interrupted writer left behind (files ending in .tmp)."""
    for name in os.listdir(split_dir):
        if name.endswith(TMP_SUFFIX):
            os.remove(os.path.join(split_dir, name))


@contextlib.contextmanager
def shard_writer(split_dir, stem):
    """Yield a writer whose write(payload) appends a record; the shard gets its name on success.

    Both files are written to disk before the .rec and then the .idx are renamed. On an exception both
    temporary files are removed and the exception propagates.
    """
    rec, idx = shard_paths(split_dir, stem)
    writer = _ShardWriter(rec + TMP_SUFFIX, idx + TMP_SUFFIX)
    try:
        yield writer
        writer.close(sync=True)
    except BaseException:
        writer.close(sync=False)
        for path in (rec + TMP_SUFFIX, idx + TMP_SUFFIX):
            if os.path.exists(path):
                os.remove(path)
        raise
    os.replace(rec + TMP_SUFFIX, rec)
    os.replace(idx + TMP_SUFFIX, idx)
    fsync_path(split_dir)


class _ShardWriter:
    """Appends records with consecutive integer keys to one indexed RecordIO file pair."""

    def __init__(self, rec_path, idx_path):
        self._rec, self._idx = open(rec_path, "wb"), open(idx_path, "w")
        self.count, self._offset = 0, 0

    def write(self, payload):
        data = recordio_bytes(payload)
        self._rec.write(data)
        self._idx.write("%d\t%d\n" % (self.count, self._offset))
        self.count, self._offset = self.count + 1, self._offset + len(data)

    def close(self, sync):
        for f in (self._rec, self._idx):
            if sync:
                f.flush()
                os.fsync(f.fileno())
            f.close()


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


def write_json(path, value):
    """Write `value` as JSON (sorted keys, so equal values are equal bytes) durably and atomically."""
    write_atomically(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def write_manifest(split_dir, manifest):
    """Write manifest.json durably and atomically."""
    write_json(os.path.join(split_dir, MANIFEST), manifest)


def read_manifest(split_dir):
    """The manifest dict of a split directory: FileNotFoundError when missing, DataError when not ours or
    inconsistent (each message names the file)."""
    path = os.path.join(split_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            "no %s in %s: convert DeepMind data with data/gqn_data_to_recordio.py or make "
            "scenes with `python -m gqn.synthetic`" % (MANIFEST, split_dir))
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DataError("%s: not valid JSON (%s)" % (path, error)) from None
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path, manifest):
    """Raise DataError naming `path` unless the manifest is of our format and version, and self-consistent."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError("%s: not a %s manifest" % (path, FORMAT))
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError("%s: format version %r; this toolkit reads version %d: %s"
                        % (path, version, FORMAT_VERSION, _REFRESH % os.path.dirname(path)))
    for key in ("frame_size", "views_per_scene", "scene_count"):
        if not isinstance(manifest.get(key), int) or manifest[key] < (0 if key == "scene_count" else 1):
            raise DataError("%s: %s is %r; expected a positive integer" % (path, key, manifest.get(key)))
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("scenes"), int)
            and s["scenes"] >= 0 and s["name"] and os.path.basename(s["name"]) == s["name"] for s in shards):
        raise DataError("%s: shards must be a list of {name: file stem, scenes: count}" % path)
    if sum(s["scenes"] for s in shards) != manifest["scene_count"]:
        raise DataError("%s: scene_count %d, but its shards hold %d"
                        % (path, manifest["scene_count"], sum(s["scenes"] for s in shards)))


def open_split(split_dir):
    """(manifest, [record offsets per shard]) of a split, checked at open time: the manifest (read_manifest),
    every shard's files against it (open_shard), no shard left out of it, and the frame size and view count
    of the first record. DataError naming the file (and record) otherwise."""
    manifest = read_manifest(split_dir)
    listed = {s["name"] + ".rec" for s in manifest["shards"]}
    extra = sorted(n for n in os.listdir(split_dir) if n.endswith(".rec") and n not in listed)
    if extra:
        raise DataError("%s: not listed in %s" % (os.path.join(split_dir, extra[0]),
                                                  os.path.join(split_dir, MANIFEST)))
    offsets = [open_shard(split_dir, entry) for entry in manifest["shards"]]
    first = next((i for i, o in enumerate(offsets) if len(o)), None)
    if first is not None:
        _check_first_record(split_dir, manifest, manifest["shards"][first]["name"], int(offsets[first][0]))
    return manifest, offsets


def _check_first_record(split_dir, manifest, stem, offset):
    """DataError unless record 0 of shard `stem` has the manifest's views per scene and frame size."""
    rec = shard_paths(split_dir, stem)[0]
    frames, _ = read_scene(rec, offset, 0)
    path = os.path.join(split_dir, MANIFEST)
    if len(frames) != manifest["views_per_scene"]:
        raise DataError("%s: views_per_scene %d, but %s record 0 has %d views"
                        % (path, manifest["views_per_scene"], rec, len(frames)))
    image = cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR) if frames[0] else None
    if image is None or image.shape[:2] != (manifest["frame_size"],) * 2:
        found = "not a JPEG" if image is None else "%dx%d pixels" % (image.shape[1], image.shape[0])
        raise DataError("%s: frame_size %d, but frame 0 of %s record 0 is %s"
                        % (path, manifest["frame_size"], rec, found))


def read_scene(rec_path, offset, record):
    """(frames, cameras) of record number `record` at `offset` of a .rec file; DataError naming both."""
    try:
        fd = os.open(rec_path, os.O_RDONLY)
    except FileNotFoundError:
        raise DataError("%s: missing" % rec_path) from None
    try:
        return decode_scene(read_record(fd, offset)[0])
    except DataError as error:
        raise DataError("%s: record %d: %s" % (rec_path, record, error)) from None
    finally:
        os.close(fd)
