"""The converter: round trip, clear errors with nothing partial left, resuming after an interrupt."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from gqn import loader, synthetic, tfrecord
from converter import SCRIPT, convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = "rooms_ring-64px-8"  # the naming rule of gqn.datasets.dataset_root: 8 training scenes of 64px


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """DeepMind-layout TFRecords of synthetic rooms: ROOT/rooms_ring-64px-8/{train (3 files), test (1)}."""
    root = tmp_path_factory.mktemp("tfrecords")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "SCENES_PER_SHARD", 3)
        for split, scenes in (("train", 8), ("test", 2)):
            synthetic.write_split(str(root / FOLDER), "rooms_ring", split, scenes,
                                  fmt="tfrecord", seed=5)
    return root


def _run(*args):
    result = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    return result.returncode, result.stderr


def _files(directory):
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))}


def _copy(source, tmp_path):
    shutil.copytree(source, tmp_path / "in")
    return tmp_path / "in", tmp_path / "in" / FOLDER / "train"


def test_round_trip_keeps_jpeg_bytes_and_cameras(source, tmp_path):
    code, err = _run("--dataset", "rooms_ring", "--train-scenes", "8", "--tfrecord-dir", str(source), "--data-dir",
                     str(tmp_path), "--workers", "2")
    assert code == 0, err
    assert FOLDER + "/train: 8 scenes in 3 shards" in err
    scenes = loader.SceneDataset(str(tmp_path / FOLDER), "train")
    assert [s["source"] for s in scenes.manifest["shards"]] == [
        "1-of-3.tfrecord", "2-of-3.tfrecord", "3-of-3.tfrecord"]
    expected = [tfrecord.decode_scene_example(r, 10) for name in ("1-of-3", "2-of-3", "3-of-3")
                for r in tfrecord.read_records(str(source / FOLDER / "train" / (name + ".tfrecord")))]
    assert len(scenes) == len(expected) == 8
    for (frames, cameras), (want_frames, want_cameras) in zip(scenes, expected):
        assert frames == want_frames
        np.testing.assert_array_equal(cameras, want_cameras)


@pytest.mark.parametrize("damage,message", [
    ("flip", "2-of-3.tfrecord: record 1: data CRC mismatch"),
    ("truncate", "3-of-3.tfrecord: record 1: truncated"),
])
def test_bad_record_is_one_clear_line_and_leaves_nothing_partial(source, tmp_path, damage, message):
    root, train = _copy(source, tmp_path)
    if damage == "flip":
        path = train / "2-of-3.tfrecord"
        data = bytearray(path.read_bytes())
        first = next(tfrecord.read_records(str(path)))
        data[16 + len(first) + 12 + 500] ^= 0x10  # inside record 1's data
    else:
        path = train / "3-of-3.tfrecord"
        data = path.read_bytes()[:-100]
    path.write_bytes(bytes(data))
    code, err = _run("--dataset", "rooms_ring", "--train-scenes", "8", "--tfrecord-dir", str(root), "--data-dir",
                     str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 1 and len(lines) == 1 and message in lines[0] and str(path) in lines[0]
    left = os.listdir(tmp_path / "out" / FOLDER / "train")
    assert not [n for n in left if n.startswith(path.stem) or n.endswith(".tmp")]
    assert "manifest.json" not in left


def test_wrong_name_missing_split_and_partial_download(source, tmp_path):
    code, err = _run("--dataset", "rooms_ring_camerA", "--tfrecord-dir", str(source), "--data-dir", str(tmp_path))
    assert code == 2 and "invalid choice: 'rooms_ring_camerA'" in err
    assert "rooms_ring_camera" in err and "shepard_metzler_7_parts" in err
    partial = tmp_path / "partial" / "rooms_ring_camera" / "train"
    shutil.copytree(source / FOLDER / "train", partial)
    code, err = _run("--dataset", "rooms_ring_camera", "--tfrecord-dir", str(tmp_path / "partial"), "--data-dir",
                     str(tmp_path / "out"))
    assert code == 1 and "3 of 2160 files present (partial download)" in err
    assert "rooms_ring_camera/train: 8 scenes in 3 shards" in err
    assert "error: missing split directory " + str(tmp_path / "partial" / "rooms_ring_camera" / "test") in err


def _crash_in_second_file(real, action):
    """read_records that runs `action` after the first record of file 2-of-3."""
    def read_records(path):
        for index, data in enumerate(real(path)):
            if index == 1 and path.endswith("2-of-3.tfrecord"):
                action()
            yield data
    return read_records


def _raise():
    raise RuntimeError("interrupted mid-file")


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("workers,action,error", [
    (1, _raise, RuntimeError), (2, _kill_self, convert.ConversionError)])
def test_interrupted_conversion_resumes_to_identical_output(source, tmp_path, monkeypatch,
                                                            workers, action, error):
    info = convert.get_dataset("rooms_ring")
    convert.convert_split(info, str(source), str(tmp_path / "whole"), "train", folder=FOLDER)
    want = _files(tmp_path / "whole" / FOLDER / "train")
    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(tfrecord, "read_records", _crash_in_second_file(tfrecord.read_records, action))
        with pytest.raises(error):
            convert.convert_split(info, str(source), str(out), "train", workers, FOLDER)
    split = out / FOLDER / "train"
    left = os.listdir(split)
    assert not [n for n in left if n.startswith("2-of-3") or n.endswith(".tmp")]
    assert "manifest.json" not in left
    if workers == 1:
        assert sorted(left) == ["1-of-3.idx", "1-of-3.rec", "1-of-3.source.json"]
    (split / "3-of-3.source.json").unlink(missing_ok=True)  # as if killed between the renames
    (split / "3-of-3.idx").unlink(missing_ok=True)
    (split / "3-of-3.rec").write_bytes(b"a shard without its index")
    (split / "1-of-3.rec.tmp").write_bytes(b"a leftover")
    # a killed worker may not get there; 3-of-3 (damaged above whether it finished or not) must be redone
    finished = {n.split(".")[0] for n in left if n.endswith(convert.NOTE_SUFFIX)} - {"3-of-3"}
    kept = {n: os.stat(split / n).st_mtime_ns for n in left if n.split(".")[0] in finished}
    convert.convert_split(info, str(source), str(out), "train", workers, FOLDER)
    assert _files(split) == want
    assert kept == {n: os.stat(split / n).st_mtime_ns for n in kept}  # finished shards skipped
