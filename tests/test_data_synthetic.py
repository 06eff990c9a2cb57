"""Synthetic scenes: deterministic, disjoint splits, shaded RGB images, same bytes for any worker count."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from gqn import loader, render, scene_format, synthetic, tfrecord


def _files(directory):
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))}


@pytest.mark.parametrize("family,views", [("rooms_ring", 10), ("shepard_metzler", 15)])
def test_scenes_are_deterministic_shaded_and_split_disjoint(family, views):
    frames, cameras = synthetic.render_scene(family, 3, "train", 0)
    again, _ = synthetic.render_scene(family, 3, "train", 0)
    assert frames == again and len(frames) == views and cameras.shape == (views, 5)
    images = loader.decode_frames(frames)
    assert images.shape == (views, 64, 64, 3)
    # shading: many distinct colours per view, not a few flat patches
    assert min(len(np.unique(im.reshape(-1, 3) // 8, axis=0)) for im in images) > 20
    train = {f for i in range(3) for f in synthetic.render_scene(family, 3, "train", i)[0]}
    test = {f for i in range(3) for f in synthetic.render_scene(family, 3, "test", i)[0]}
    assert len(train) == 3 * views and not train & test


def test_rooms_ring_cameras_lie_on_a_ring_and_look_inwards():
    _, cameras = synthetic.render_scene("rooms_ring", 0, "train", 5)
    np.testing.assert_allclose(np.hypot(cameras[:, 0], cameras[:, 1]), 2.2, rtol=1e-5)
    inward = np.arctan2(-cameras[:, 1], -cameras[:, 0])
    assert np.all(np.abs(np.angle(np.exp(1j * (cameras[:, 3] - inward)))) <= 0.3 + 1e-5)
    assert np.all((cameras[:, 4] < 0) & (cameras[:, 4] > -0.5))


def test_the_scene_redrawn_from_its_own_cameras_is_the_split_s_frames(tmp_path):
    """render_from draws render_gqn.py's truth beside the fly-around: from the scene's cameras, the stored views."""
    synthetic.write_split(str(tmp_path), "rooms_ring", "test", 3, image_size=16, seed=5)
    scenes = loader.SceneDataset(str(tmp_path), "test")
    stored = [loader.decode_frames(scenes[i][0]) for i in range(3)]                     # 3 x (S, H, W, 3)
    for index in range(3):
        drawn = synthetic.render_from("rooms_ring", 5, "test", index, scenes[index][1], 16)
        as_stored = loader.decode_frames([synthetic.encode_jpeg(image) for image in drawn])
        np.testing.assert_array_equal(as_stored, stored[index])
        assert not np.array_equal(as_stored, stored[(index + 1) % 3])


def test_jpeg_colours_are_rgb():
    rng = np.random.default_rng(0)
    scene, cameras = synthetic.rooms_ring_scene(rng, 2)
    images = render.render(scene, cameras, 64, 50.0)
    jpeg = synthetic.encode_jpeg(images[0])
    by_pil = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(float)
    assert np.abs(by_pil - images[0]).mean() < 3
    assert np.abs(loader.decode_frames([jpeg])[0] - images[0].astype(float)).mean() < 3


def test_output_is_identical_for_any_worker_count(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SCENES_PER_SHARD", 3)
    for workers in (1, 2):
        synthetic.write_split(str(tmp_path / str(workers)), "shepard_metzler", "train", 7, workers=workers)
    one, two = _files(tmp_path / "1" / "train"), _files(tmp_path / "2" / "train")
    assert list(one) == ["1-of-3.idx", "1-of-3.masks.npz", "1-of-3.rec", "2-of-3.idx", "2-of-3.masks.npz",
                         "2-of-3.rec", "3-of-3.idx", "3-of-3.masks.npz", "3-of-3.rec", "manifest.json"]
    assert one == two
    manifest = scene_format.read_manifest(str(tmp_path / "1" / "train"))
    assert [s["scenes"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["scene_count"] == 7 and manifest["views_per_scene"] == 15


def test_ensure_synthetic_generates_only_when_missing(tmp_path):
    root = str(tmp_path / "rooms")
    manifests = synthetic.ensure_synthetic(root, "rooms_ring", 3, 2, image_size=32, seed=1, workers=1)
    assert manifests["train"]["scene_count"] == 3 and manifests["test"]["frame_size"] == 32
    rec = os.path.join(root, "train", "1-of-1.rec")
    stamp = os.stat(rec).st_mtime_ns
    synthetic.ensure_synthetic(root, "rooms_ring", 3, 2, image_size=32, seed=1, workers=1)
    assert os.stat(rec).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="not the requested"):
        synthetic.ensure_synthetic(root, "rooms_ring", 3, 2, image_size=32, seed=2, workers=1)


def test_cli_writes_deepmind_tfrecord_layout_under_the_dataset_name(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SCENES_PER_SHARD", 2)
    synthetic.main(["--dataset", "rooms_ring", "--tfrecord-dir", str(tmp_path), "--train-scenes", "3",
                    "--image-size", "64", "--workers", "1"])
    root = tmp_path / "rooms_ring-64px-3"
    assert sorted(os.listdir(root / "train")) == ["1-of-2.tfrecord", "2-of-2.tfrecord"]
    assert os.listdir(root / "test") == ["1-of-1.tfrecord"]  # a tenth, at least one
    records = list(tfrecord.read_records(str(root / "train" / "2-of-2.tfrecord")))
    frames, cameras = tfrecord.decode_scene_example(records[0], 10)
    expected = synthetic.render_scene("rooms_ring", 0, "train", 2)
    assert frames == expected[0]
    np.testing.assert_array_equal(cameras, expected[1])
