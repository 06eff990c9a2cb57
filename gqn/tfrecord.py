"""TFRecord files and DeepMind's scene Examples, read and written without TensorFlow.

A TFRecord is a sequence of records: length uint64 | masked CRC32C of length | data | masked
CRC32C of data (little-endian). Each record holds one `tf.train.Example` protobuf; DeepMind's have
exactly two features, `frames` (S JPEG byte strings) and `cameras` (5*S floats). Our reader checks
both CRCs and reports the record index; tests/tf_io.py cross-checks all of this against TensorFlow.
"""
import os
import struct

import google_crc32c
import numpy as np

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_LEN, _FIXED32, _FIXED64, _VARINT = 2, 5, 1, 0  # protobuf wire types
_FEATURE_KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


class RecordError(ValueError):
    """A TFRecord or Example that cannot be read; the message names the record index."""


def masked_crc(data):
    """TFRecord's masked CRC32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data):
    """The bytes of one TFRecord record holding `data`."""
    length = _LENGTH.pack(len(data))
    return b"".join([length, _CRC.pack(masked_crc(length)), data, _CRC.pack(masked_crc(data))])


def read_records(path):
    """Yield the data of each record of a TFRecord file, checking lengths and both CRCs."""
    with open(path, "rb") as f:
        index = 0
        while True:
            header = f.read(_LENGTH.size + _CRC.size)
            if not header:
                return
            if len(header) < _LENGTH.size + _CRC.size:
                raise RecordError("record %d: file ends inside the record header" % index)
            length_bytes, (length_crc,) = header[:8], _CRC.unpack(header[8:])
            if masked_crc(length_bytes) != length_crc:
                raise RecordError("record %d: length CRC mismatch" % index)
            (length,) = _LENGTH.unpack(length_bytes)
            data, footer = f.read(length), f.read(_CRC.size)
            if len(data) < length or len(footer) < _CRC.size:
                raise RecordError("record %d: truncated, file ends inside its %d data bytes"
                                  % (index, length))
            if masked_crc(data) != _CRC.unpack(footer)[0]:
                raise RecordError("record %d: data CRC mismatch" % index)
            yield data
            index += 1


def _varint(buf, pos):
    """(value, next position) of the varint at buf[pos]."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of the message")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(buf):
    """Yield (field number, wire type, value) of a protobuf message; LEN values are memoryviews."""
    buf, pos = memoryview(buf), 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_LEN, _FIXED32, _FIXED64):
            if wire == _LEN:
                size, pos = _varint(buf, pos)
            else:
                size = 4 if wire == _FIXED32 else 8
            if pos + size > len(buf):
                raise ValueError("field %d runs past the end of the message" % number)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError("unsupported protobuf wire type %d in field %d" % (wire, number))
        yield number, wire, value


def _feature(buf):
    """(kind, values) of a tf.train.Feature: a list of bytes, or a float32 array."""
    kind, values = None, []
    for number, _, body in _fields(buf):
        kind = _FEATURE_KINDS.get(number, "field %d" % number)
        for item_number, wire, item in _fields(body):
            if item_number != 1:
                continue
            if kind == "bytes_list":
                values.append(bytes(item))
            elif kind == "float_list":  # packed (LEN) or one fixed32 per value
                values.append(np.frombuffer(item, "<f4") if wire == _LEN else
                              np.frombuffer(item, "<f4", 1))
    if kind == "float_list":
        values = np.concatenate(values) if values else np.zeros(0, np.float32)
    return kind, values


def parse_example(data):
    """{feature name: (kind, values)} of a serialized tf.train.Example."""
    features = {}
    for number, _, body in _fields(data):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(body):
            if entry_number != 1:
                continue
            parts = {n: v for n, _, v in _fields(entry)}
            features[bytes(parts.get(1, b"")).decode("utf-8")] = _feature(parts.get(2, b""))
    return features


def _len_field(number, payload):
    """A LEN-typed protobuf field."""
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _encode_varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_example(frames, cameras):
    """A serialized tf.train.Example with DeepMind's `frames` and `cameras` features."""
    bytes_list = b"".join(_len_field(1, bytes(f)) for f in frames)
    floats = np.ascontiguousarray(cameras, dtype="<f4").reshape(-1).tobytes()
    features = [("cameras", _len_field(2, _len_field(1, floats))),  # Feature.float_list, packed
                ("frames", _len_field(1, bytes_list))]  # Feature.bytes_list
    entries = b"".join(_len_field(1, _len_field(1, name.encode()) + _len_field(2, feature))
                       for name, feature in features)
    return _len_field(1, entries)


def decode_scene_example(data, views):
    """(frames: S JPEG byte strings, cameras (S, 5) float32) of a DeepMind Example, validated."""
    try:
        features = parse_example(data)
    except ValueError as err:
        raise RecordError("malformed tf.train.Example: %s" % err)
    if sorted(features) != ["cameras", "frames"]:
        raise RecordError("features %s; expected exactly cameras, frames" % sorted(features))
    (frames_kind, frames), (cameras_kind, cameras) = features["frames"], features["cameras"]
    if frames_kind != "bytes_list" or cameras_kind != "float_list":
        raise RecordError("feature kinds frames=%s cameras=%s; expected bytes_list, float_list"
                          % (frames_kind, cameras_kind))
    if len(frames) != views or cameras.size != 5 * views:
        raise RecordError("%d frames and %d camera values; expected %d and %d"
                          % (len(frames), cameras.size, views, 5 * views))
    return frames, cameras.reshape(views, 5)


def write_records(path, payloads):
    """Write a TFRecord file of the given record payloads; it appears under `path` only when whole."""
    with open(path + ".tmp", "wb") as f:
        for payload in payloads:
            f.write(frame_record(payload))
    os.replace(path + ".tmp", path)
