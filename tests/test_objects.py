"""Object masks of synthetic scenes (rendering, storage, a batch's query views) and the per-region MSE on them."""
import os

import numpy as np
import pytest

from gqn import loader, masks, metrics, render, synthetic
from gqn.loader import transform_cameras


def recoloured(scene, colour):
    """The scene with every object painted one colour (3,)."""
    objects = [group._replace(colors=np.tile(np.float32(colour), (len(group.colors), 1))) for group in scene.objects]
    return scene._replace(objects=objects)


@pytest.mark.parametrize("family", ["rooms_ring", "shepard_metzler"])
def test_masks_are_exactly_the_pixels_an_object_recolouring_changes(family):
    scene, cameras, fov = synthetic.make_scene(family, 5, "test", 1)
    red, red_masks = render.render_with_masks(recoloured(scene, [0.9, 0.1, 0.1]), cameras, 32, fov)
    green, green_masks = render.render_with_masks(recoloured(scene, [0.1, 0.9, 0.1]), cameras, 32, fov)
    np.testing.assert_array_equal(red_masks, green_masks)
    np.testing.assert_array_equal(np.any(red != green, axis=-1), red_masks)  # shadows do not depend on colour
    np.testing.assert_array_equal(render.object_masks(scene, cameras, 32, fov), red_masks)
    covered = red_masks.mean(axis=(1, 2))
    assert covered.min() > 0 and covered.max() < 1


def test_split_masks_match_rendering_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SCENES_PER_SHARD", 3)
    synthetic.write_split(str(tmp_path), "rooms_ring", "test", 7, image_size=16, seed=2)
    split_dir = str(tmp_path / "test")
    assert sorted(n for n in os.listdir(split_dir) if n.endswith(masks.SUFFIX)) == [
        "1-of-3.masks.npz", "2-of-3.masks.npz", "3-of-3.masks.npz"]
    stored = masks.load_masks(split_dir)
    assert stored.shape == (7, 10, 16, 16) and stored.dtype == bool
    for index in (0, 4, 6):
        np.testing.assert_array_equal(stored[index],
                                      synthetic.render_scene_with_masks("rooms_ring", 2, "test", index, 16)[2])


def test_missing_masks_are_rendered_again_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SCENES_PER_SHARD", 2)
    manifests = synthetic.ensure_synthetic(str(tmp_path), "shepard_metzler", 2, 3, image_size=16, seed=1, workers=1)
    split_dir = str(tmp_path / "test")
    path = masks.masks_path(split_dir, manifests["test"]["shards"][1]["name"])
    written = open(path, "rb").read()
    os.remove(path)
    with pytest.raises(ValueError, match=r"masks of 1 of 2 shards are missing \(first: .*2-of-2\.masks\.npz\)"):
        masks.load_masks(split_dir)
    synthetic.ensure_synthetic(str(tmp_path), "shepard_metzler", 2, 3, image_size=16, seed=1, workers=1)
    assert open(path, "rb").read() == written


def test_load_masks_rejects_a_file_that_does_not_fit_its_shard(tmp_path):
    synthetic.write_split(str(tmp_path), "rooms_ring", "test", 2, image_size=16)
    split_dir = str(tmp_path / "test")
    masks.write_masks(split_dir, "1-of-1", np.zeros((2, 10, 8, 8), bool))
    with pytest.raises(ValueError, match=r"1-of-1\.masks\.npz: masks of shape \(2, 10, 8, 8\) bool; its shard "
                                         r"needs \(2, 10, 16, 16\) bool"):
        masks.load_masks(split_dir)
    for name in os.listdir(split_dir):
        if name.endswith(masks.SUFFIX):
            os.remove(os.path.join(split_dir, name))
    assert masks.load_masks(split_dir) is None  # as for converted DeepMind data


def test_query_masks_follow_the_loader_views(tmp_path):
    synthetic.write_split(str(tmp_path), "rooms_ring", "test", 5, image_size=16, seed=3)
    split_dir = str(tmp_path / "test")
    stored, scenes = masks.load_masks(split_dir), loader.SceneDataset(str(tmp_path), "test")
    batches = masks.keyed_batches(loader.make_loader(str(tmp_path), "test", 2, 4, seed=7, last_batch="keep"))
    seen = 0
    for batch, keys in batches:
        query = masks.query_masks(stored, keys)
        assert query.shape == (len(keys), 16, 16)
        for target, mask, (index, k, _) in zip(batch.target.asnumpy(), query, keys):
            frames = loader.decode_frames(scenes[index][0])
            view = [v for v in range(10) if np.array_equal(frames[v].transpose(2, 0, 1) / np.float32(255), target)]
            assert len(view) == 1 and np.array_equal(stored[index, view[0]], mask)
            seen += 1
    assert seen == 5


def test_region_mse_against_hand_computed_values():
    target = np.zeros((2, 3, 2, 2))
    prediction = np.full((2, 3, 2, 2), 0.1)
    prediction[0, :, 0, 0] = [0.1, 0.2, 0.3]
    mask = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], bool)        # scene 1 shows no object
    got = metrics.region_mse(target, prediction, mask)
    np.testing.assert_allclose(got["objects"][0], (0.01 + 0.04 + 0.09) / 3)
    assert np.isnan(got["objects"][1])
    np.testing.assert_allclose(got["background"], [0.01, 0.01])


def test_region_metrics_of_prediction_and_baselines_against_hand_computed_values():
    # query camera at the origin; context views flat 0.1 at distance 2, flat 0.9 at distance 1 (the nearest), and a
    # masked-out slot 0.3; the target has one object pixel 1.0, the rest 0.5
    frames = np.array([0.1, 0.9, 0.3])[:, None, None, None] * np.ones((1, 3, 2, 2))    # (K=3, 3, 2, 2)
    context_cameras = transform_cameras([(2, 0, 0, 0, 0), (1, 0, 0, 0, 0), (0.5, 0, 0, 0, 0)])
    target = np.full((1, 3, 2, 2), 0.5)
    target[0, :, 1, 0] = 1.0
    prediction = np.full((1, 3, 2, 2), 0.6)
    prediction[0, :, 1, 0] = 0.8
    mask = np.array([[[0, 0], [1, 0]]], bool)
    got = metrics.region_metrics(frames[None], context_cameras[None], np.array([[1, 1, 0]]),
                                 transform_cameras([(0, 0, 0, 0, 0)]), target, prediction, mask)
    want = {"mse_objects_prior_sample": 0.04, "mse_background_prior_sample": 0.01,
            "mse_objects_nearest_view": 0.01, "mse_background_nearest_view": 0.16,
            "mse_objects_mean_context": 0.25, "mse_background_mean_context": 0.0,    # (0.1 + 0.9) / 2 = 0.5
            "gain_objects_over_nearest_view": -0.03, "gain_objects_over_mean_context": 0.21,
            "gain_background_over_nearest_view": 0.15, "gain_background_over_mean_context": -0.01}
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == (1,)
        np.testing.assert_allclose(got[name][0], value, rtol=1e-6, atol=1e-12, err_msg=name)
