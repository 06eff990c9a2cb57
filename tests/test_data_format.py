"""Dataset table, scene record, shards and manifest, TFRecord framing and Examples (no TensorFlow)."""
import os

import google_crc32c
import numpy as np
import pytest

from gqn import datasets, scene_format, tfrecord


def _scene(views=4, seed=0):
    rng = np.random.default_rng(seed)
    frames = [rng.bytes(int(n)) for n in rng.integers(1, 300, views)]
    return frames, rng.normal(size=(views, 5)).astype(np.float32)


def test_dataset_table_matches_deepmind():
    table = datasets.DEEPMIND_DATASETS
    assert len(table) == 7
    assert table["mazes"] == ("mazes", 84, 300, 1080, 120)
    assert table["rooms_free_camera_with_object_rotations"][1:] == (128, 10, 2034, 226)
    assert datasets.expected_files(table["jaco"], "test") == 400
    with pytest.raises(ValueError, match="rooms_ring_camera.*shepard_metzler_7_parts"):
        datasets.get_dataset("rooms_ring_cameras")
    with pytest.raises(ValueError, match="valid splits: train, test"):
        datasets.expected_files(table["jaco"], "validation")


def test_file_stem_pads_like_deepmind():
    assert datasets.file_stem(1, 2160) == "0001-of-2160"
    assert datasets.file_stem(12, 120) == "012-of-120"
    assert datasets.file_stem(1, 1) == "1-of-1"


def test_scene_record_round_trip_without_pickle():
    frames, cameras = _scene()
    record = scene_format.encode_scene(frames, cameras)
    assert record[:4] == scene_format.MAGIC and b"pickle" not in record
    assert len(record) == 8 + 4 * 4 + 4 * 20 + sum(map(len, frames)) + 4
    assert int.from_bytes(record[-4:], "little") == google_crc32c.value(record[:-4])
    got_frames, got_cameras = scene_format.decode_scene(record)
    assert got_frames == frames
    np.testing.assert_array_equal(got_cameras, cameras)


def test_every_flipped_byte_fails_the_checksum():
    frames, cameras = _scene(views=2)
    record = bytearray(scene_format.encode_scene(frames, cameras))
    for position in range(4, len(record)):  # bytes 0-3 are the magic, checked first
        damaged = bytearray(record)
        damaged[position] ^= 0x01
        with pytest.raises(scene_format.DataError, match="checksum mismatch"):
            scene_format.decode_scene(bytes(damaged))


def _with_crc(body):
    return body + google_crc32c.value(body).to_bytes(4, "little")


def test_scene_record_rejects_bad_input():
    frames, cameras = _scene()
    record = scene_format.encode_scene(frames, cameras)
    with pytest.raises(scene_format.DataError, match="magic"):
        scene_format.decode_scene(b"XXXX" + record[4:])
    with pytest.raises(scene_format.DataError, match="format version 1"):
        scene_format.decode_scene(b"GQS1" + record[4:-4])
    with pytest.raises(scene_format.DataError, match="checksum mismatch"):
        scene_format.decode_scene(record[:-1])
    with pytest.raises(scene_format.DataError, match="header says"):
        scene_format.decode_scene(_with_crc(record[:-5]))  # the last JPEG one byte short, checksum matching
    with pytest.raises(scene_format.DataError, match="too short for 4 views"):
        scene_format.decode_scene(_with_crc(record[:20]))
    with pytest.raises(ValueError, match=r"expected \(4, 5\)"):
        scene_format.encode_scene(frames, cameras[:3])


_RIO_MAGIC = (0xCED7230A).to_bytes(4, "little")
_PAYLOADS = [b"", b"a", b"abcd", b"abcde" * 13, _RIO_MAGIC, b"xxxx" + _RIO_MAGIC + b"yy", b"x" + _RIO_MAGIC + b"zzz",
             _RIO_MAGIC * 3 + b"tail", bytes(range(256)) * 9]


def test_shards_are_mxnet_indexed_recordio_byte_for_byte(tmp_path):
    """The writer frames records as dmlc-core does, including splitting at an aligned magic number."""
    import mxnet as mx
    writer = mx.recordio.MXIndexedRecordIO(str(tmp_path / "mx.idx"), str(tmp_path / "mx.rec"), "w")
    for key, payload in enumerate(_PAYLOADS):
        writer.write_idx(key, payload)
    writer.close()
    with scene_format.shard_writer(str(tmp_path), "ours") as ours:
        for payload in _PAYLOADS:
            ours.write(payload)
    for suffix in (".rec", ".idx"):
        assert (tmp_path / ("ours" + suffix)).read_bytes() == (tmp_path / ("mx" + suffix)).read_bytes()
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "ours.idx"), str(tmp_path / "ours.rec"), "r")
    assert [reader.read_idx(k) for k in range(len(_PAYLOADS))] == _PAYLOADS
    offsets = scene_format.read_index(str(tmp_path / "mx.idx"))
    fd = os.open(tmp_path / "mx.rec", os.O_RDONLY)
    try:
        assert [scene_format.read_record(fd, int(o))[0] for o in offsets] == _PAYLOADS
    finally:
        os.close(fd)


def test_shard_appears_only_when_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with scene_format.shard_writer(str(tmp_path), "1-of-2") as writer:
            writer.write(b"first")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with scene_format.shard_writer(str(tmp_path), "2-of-2") as writer:
        for payload in (b"a", b"bb", b"ccc"):
            writer.write(payload)
    assert sorted(os.listdir(tmp_path)) == ["2-of-2.idx", "2-of-2.rec"]
    assert len(scene_format.open_shard(str(tmp_path), {"name": "2-of-2", "scenes": 3})) == 3


@pytest.mark.parametrize("text,message", [
    ("0\t0\n1\t12\n2\t2", "line 3 is cut short"),
    ("0\t0\n1 12\n", "line 2 is not 'key<TAB>offset'"),
    ("0\t0\n2\t12\n", "keys are not 0..1"),
    ("0\t12\n1\t0\n", "increasing offsets"),
])
def test_damaged_index_is_named(tmp_path, text, message):
    (tmp_path / "a.idx").write_text(text)
    with pytest.raises(scene_format.DataError, match=message) as error:
        scene_format.read_index(str(tmp_path / "a.idx"))
    assert str(error.value).startswith(str(tmp_path / "a.idx"))


def test_manifest_round_trip_and_missing(tmp_path):
    info = datasets.get_dataset("jaco")
    manifest = scene_format.make_manifest(info, "train", [("1-of-2", 3, "a"), ("2-of-2", 4, "b")],
                                          {"kind": "test"})
    scene_format.write_manifest(str(tmp_path), manifest)
    assert scene_format.read_manifest(str(tmp_path)) == manifest
    assert manifest["scene_count"] == 7 and manifest["views_per_scene"] == 11
    assert manifest["format_version"] == 2
    with pytest.raises(FileNotFoundError, match="gqn_data_to_recordio"):
        scene_format.read_manifest(str(tmp_path / "nowhere"))


def test_crc32c_check_value():
    # CRC-32C of "123456789" is 0xE3069283 (RFC 3720); masking is TFRecord's rotate-and-add.
    crc = 0xE3069283
    assert tfrecord.masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2 ** 32


def _write(path, payloads):
    tfrecord.write_records(str(path), payloads)
    return bytearray(path.read_bytes())


def test_tfrecord_round_trip_and_corruption(tmp_path):
    payloads = [b"zero", b"one" * 50, b"two"]
    data = _write(tmp_path / "a.tfrecord", payloads)
    assert list(tfrecord.read_records(str(tmp_path / "a.tfrecord"))) == payloads
    second = 16 + len(payloads[0])  # where record 1 starts
    cases = {"record 1: data CRC mismatch": second + 12 + 40,
             "record 1: length CRC mismatch": second + 2}
    for message, offset in cases.items():
        bad = bytearray(data)
        bad[offset] ^= 0x01
        (tmp_path / "b.tfrecord").write_bytes(bytes(bad))
        with pytest.raises(tfrecord.RecordError, match=message):
            list(tfrecord.read_records(str(tmp_path / "b.tfrecord")))
    for cut, message in [(5, "record 2: truncated"), (len(payloads[2]) + 14, "record 2: file ends")]:
        (tmp_path / "c.tfrecord").write_bytes(bytes(data[:-cut]))
        with pytest.raises(tfrecord.RecordError, match=message):
            list(tfrecord.read_records(str(tmp_path / "c.tfrecord")))


def test_example_round_trip_and_validation():
    frames, cameras = _scene(views=3)
    data = tfrecord.encode_example(frames, cameras)
    got_frames, got_cameras = tfrecord.decode_scene_example(data, 3)
    assert got_frames == frames
    np.testing.assert_array_equal(got_cameras, cameras)
    with pytest.raises(tfrecord.RecordError, match="3 frames and 15 camera values; expected 4 and 20"):
        tfrecord.decode_scene_example(data, 4)
    only_frames = tfrecord._len_field(1, tfrecord._len_field(1, tfrecord._len_field(1, b"frames")))
    with pytest.raises(tfrecord.RecordError, match=r"features \['frames'\]"):
        tfrecord.decode_scene_example(only_frames, 3)
    with pytest.raises(tfrecord.RecordError, match="malformed"):
        tfrecord.decode_scene_example(data[:-7], 3)
