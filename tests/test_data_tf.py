"""Cross-checks with TensorFlow's own TFRecord parser and writer (in a subprocess: TF must follow mxnet)."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gqn import loader, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs with TensorFlow: parses task["parse"] with DeepMind's feature spec, writes task["write"].
_TF_SCRIPT = """
import hashlib, json, sys
sys.path[:0] = [%r, %r]  # the tests (tf_io) and the repository (gqn)
import tf_io  # first: it imports mxnet before tensorflow
from gqn import synthetic
import tensorflow as tf

task = json.loads(sys.argv[1])
parsed = [[[hashlib.sha256(f).hexdigest() for f in frames], cameras.tolist()]
          for frames, cameras in tf_io.read_scenes(task["parse"], 15)]
try:
    tf_io.read_scenes(task["parse"], 14)
    strict = False
except tf.errors.InvalidArgumentError:
    strict = True
for path, split, indices in task["write"]:
    tf_io.write_scenes(path, [synthetic.render_scene("rooms_ring", 9, split, i) for i in indices])
print(json.dumps({"parsed": parsed, "strict": strict}))
""" % (os.path.dirname(os.path.abspath(__file__)), REPO)

_WRITE = [("train/1-of-2.tfrecord", "train", [0, 1]), ("train/2-of-2.tfrecord", "train", [2]),
          ("test/1-of-1.tfrecord", "test", [0])]


@pytest.fixture(scope="module")
def with_tensorflow(tmp_path_factory):
    """Run _TF_SCRIPT once: TF parses our Shepard-Metzler TFRecords and writes rooms TFRecords."""
    base = tmp_path_factory.mktemp("tf")
    synthetic.write_split(str(base / "ours"), "shepard_metzler", "train", 2, fmt="tfrecord", seed=3)
    root = base / "root" / "rooms_ring-64px-3"  # 3 training scenes (the naming rule of gqn.datasets)
    for split in ("train", "test"):
        os.makedirs(root / split)
    task = {"parse": str(base / "ours" / "train" / "1-of-1.tfrecord"),
            "write": [(str(root / name), split, indices) for name, split, indices in _WRITE]}
    result = subprocess.run([sys.executable, "-c", _TF_SCRIPT, json.dumps(task)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return base, json.loads(result.stdout.splitlines()[-1])


def test_our_tfrecords_parse_with_deepmind_spec(with_tensorflow):
    _, out = with_tensorflow
    assert out["strict"]  # the spec's fixed shapes reject a wrong view count
    assert len(out["parsed"]) == 2
    for index, (hashes, cameras) in enumerate(out["parsed"]):
        frames, want_cameras = synthetic.render_scene("shepard_metzler", 3, "train", index)
        assert hashes == [hashlib.sha256(f).hexdigest() for f in frames]
        np.testing.assert_array_equal(np.float32(cameras).reshape(15, 5), want_cameras)


def test_tensorflow_records_convert_and_load_unchanged(with_tensorflow, tmp_path):
    base, _ = with_tensorflow
    script = os.path.join(REPO, "data", "gqn_data_to_recordio.py")
    result = subprocess.run([sys.executable, script, "--dataset", "rooms_ring", "--train-scenes", "3", "--tfrecord-dir",
                             str(base / "root"), "--data-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for split, count in (("train", 3), ("test", 1)):
        scenes = loader.SceneDataset(str(tmp_path / "rooms_ring-64px-3"), split)
        assert len(scenes) == scenes.manifest["scene_count"] == count
        for index in range(count):
            frames, cameras = scenes[index]
            want_frames, want_cameras = synthetic.render_scene("rooms_ring", 9, split, index)
            assert frames == want_frames
            np.testing.assert_array_equal(cameras, want_cameras)
    batch = next(iter(loader.make_loader(str(tmp_path / "rooms_ring-64px-3"), "train", 3, 9,
                                         shuffle=False)))
    first = loader.transform_cameras(synthetic.render_scene("rooms_ring", 9, "train", 0)[1])
    assert np.isclose(first, batch.query_camera.asnumpy()[0], atol=1e-6).all(1).any()


def test_toolkit_never_imports_tensorflow():
    code = ("import runpy, sys; import gqn.loader, gqn.synthetic, gqn.tfrecord, gqn.render; "
            "runpy.run_path('data/gqn_data_to_recordio.py', run_name='not_main'); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
