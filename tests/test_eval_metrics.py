"""Evaluation and rendering maths on tiny hand-made cases: metrics, both baselines, the camera ring, per-scene noise."""
import math

import numpy as np
import pytest

from evaluate_gqn import noise_draws, scene_metrics, summarise
from gqn.baselines import mean_context, nearest_view
from gqn.loader import Batch, transform_cameras
from gqn.predictor import model_cameras
from render_gqn import ring_cameras


def cameras(*raw):
    """Model cameras (N, 7) from raw (x, y, z, yaw, pitch) tuples."""
    return transform_cameras(np.array(raw, np.float32))


def flat_images(*values):
    """(N, 3, 1, 1) images, image i filled with values[i]."""
    return np.array(values, np.float32)[:, None, None, None] * np.ones((1, 3, 1, 1), np.float32)


def tiny_batch():
    """One scene: target grey 0.5, query camera at the origin; context views 0.1 at distance 2, 0.9 at
    distance 1, and a masked-out slot 0.3 at distance 0.5 (nearest of all, but not a real view)."""
    context = cameras((2, 0, 0, 0, 0), (1, 0, 0, 0, 0), (0.5, 0, 0, 0, 0))
    return Batch(context_frames=flat_images(0.1, 0.9, 0.3)[None], context_cameras=context[None],
                 context_mask=np.array([[1, 1, 0]], np.float32), query_camera=cameras((0, 0, 0, 0, 0)),
                 target=flat_images(0.5))


def test_scene_metrics_against_hand_computed_values():
    posterior = flat_images(0.25)
    prior = flat_images(0.0, 1.0)[None]                            # (B=1, S=2, 3, 1, 1)
    got = scene_metrics(tiny_batch(), posterior, np.array([1.0]), prior, sigma=0.5)
    # per sub-pixel NLL: (0.5 - 0.25)^2 / (2 * 0.5^2) + log 0.5 + log(2 pi) / 2, over 3 sub-pixels
    nll = 3 * (0.0625 / 0.5 + math.log(0.5) + 0.5 * math.log(2 * math.pi))
    want = {"nll": nll, "kl": 1.0, "elbo": nll + 1.0, "bits_per_dim": (nll + 1.0) / (3 * math.log(2)) + 8,
            "mse_prior_sample": 0.25,       # (0.5 - 0)^2
            "mse_prior_mean": 0.0,          # mean of 0 and 1 is the target
            "mse_posterior": 0.0625,        # (0.5 - 0.25)^2
            "mse_nearest_view": 0.16,       # the 0.9 view at distance 1: the masked 0.3 view is nearer but unreal
            "mse_mean_context": 0.0,        # (0.1 + 0.9) / 2; with the masked view it would be 0.4333
            "gain_over_nearest_view": 0.16 - 0.25, "gain_over_mean_context": 0.0 - 0.25}
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == (1,)
        np.testing.assert_allclose(got[name][0], value, rtol=1e-6, atol=1e-12, err_msg=name)


def test_scene_metrics_with_masks_add_the_region_figures_of_the_first_prior_sample():
    prior = flat_images(0.0, 1.0)[None]                            # (B=1, S=2, 3, 1, 1)
    got = scene_metrics(tiny_batch(), flat_images(0.25), np.array([1.0]), prior, 0.5, np.ones((1, 1, 1), bool))
    np.testing.assert_allclose(got["mse_objects_prior_sample"], [0.25])       # the sample 0, not the mean of 0 and 1
    np.testing.assert_allclose(got["gain_objects_over_nearest_view"], [0.16 - 0.25], rtol=1e-6)
    assert np.isnan(got["mse_background_prior_sample"][0])                    # the one pixel shows an object


def test_summarise_leaves_out_scenes_without_the_figure():
    means, sems = summarise({"mse_objects": [np.array([1.0, np.nan]), np.array([3.0])]})
    assert means == {"mse_objects": 2.0}
    np.testing.assert_allclose(sems["mse_objects"], 1.0)               # sample std 2**0.5, n = 2


def test_nearest_view_prefers_distance_then_angle_then_slot():
    query = cameras((0, 0, 0, 0, 0), (0, 0, 0, 0, 0), (0, 0, 0, 0, 0))        # at the origin, looking along +x
    context = np.stack([
        cameras((0, 3, 0, 0, 0), (0, 1, 0, math.pi, 0), (0, -1, 0, 0, 0)),     # tie at 1: the one looking along +x
        cameras((0, 1, 0, math.pi, 0), (0, 2, 0, 0, 0), (0, 0, 3, 0, 0)),      # distance beats angle
        cameras((1, 0, 0, 0.5, 0), (0, 1, 0, 0.5, 0), (0, 0, 0, 0, 0))])       # full tie: the lower slot
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], np.float32)             # the exact match in slot 2 is masked
    np.testing.assert_array_equal(nearest_view(context, mask, query), [2, 0, 0])


def test_nearest_view_rejects_a_scene_without_context():
    with pytest.raises(ValueError, match=r"scenes \[1\] have no real context view"):
        nearest_view(np.zeros((2, 2, 7)), np.array([[1, 0], [0, 0]]), np.zeros((2, 7)))


def test_mean_context_ignores_masked_views():
    frames = np.stack([flat_images(0.2, 0.4, 1.0), flat_images(0.3, 1.0, 1.0)])   # (B=2, K=3, 3, 1, 1)
    mean = mean_context(frames, np.array([[1, 1, 0], [1, 0, 0]], np.float32))
    np.testing.assert_allclose(mean[:, 0, 0, 0], [0.3, 0.3], rtol=1e-6)


def test_summarise_gives_mean_and_standard_error_over_all_batches():
    means, sems = summarise({"mse": [np.array([1.0, 2.0]), np.array([3.0, 6.0])]})
    assert means == {"mse": 3.0}
    np.testing.assert_allclose(sems["mse"], math.sqrt(14 / 3) / 2)    # sample variance (4+1+0+9)/3, n = 4


def test_noise_of_a_scene_does_not_depend_on_its_batch():
    together = noise_draws(0, [0, 1, 2], (2, 3))
    first, second = together(), together()
    alone = noise_draws(0, [2], (2, 3))
    np.testing.assert_array_equal(alone(), first[2:])
    np.testing.assert_array_equal(alone(), second[2:])
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first, second)
    assert not np.array_equal(noise_draws(1, [0], (2, 3))(), first[:1])


@pytest.mark.parametrize("yaw_offset", [0.0, math.pi / 2, math.pi])  # looking at the axis, sideways, outwards
def test_ring_is_fitted_to_the_scene_cameras(yaw_offset):
    angles = np.array([0.3, 1.0, 2.5, 4.0])
    scene = np.stack([2 * np.cos(angles), 2 * np.sin(angles), np.full(4, 1.2),
                      angles + np.pi + yaw_offset, np.array([-0.2, -0.4, -0.3, -0.3])], 1)
    ring = ring_cameras(scene, 36, start=0.3)
    assert ring.shape == (36, 5) and ring.dtype == np.float32
    around = np.unwrap(np.arctan2(ring[:, 1], ring[:, 0]))
    np.testing.assert_allclose(np.diff(around), np.radians(10), rtol=1e-5)     # 10 degrees apart
    np.testing.assert_allclose(np.hypot(ring[:, 0], ring[:, 1]), 2, rtol=1e-6)
    np.testing.assert_allclose(ring[:, 2], 1.2, rtol=1e-6)
    np.testing.assert_allclose(ring[:, 4], -0.3, rtol=1e-6)
    np.testing.assert_allclose(ring[0, :3], scene[0, :3], atol=1e-5)  # starts on the first scene camera ...
    np.testing.assert_allclose(np.cos(ring[0, 3] - scene[0, 3]), 1, atol=1e-6)  # ... looking as it does
    np.testing.assert_allclose(np.cos(ring[:, 3] - around), math.cos(math.pi + yaw_offset), atol=1e-6)


def test_predictor_cameras_accept_raw_or_model_layout():
    raw = np.array([[1, 2, 3, math.pi / 2, 0]], np.float32)
    np.testing.assert_allclose(model_cameras(raw), [[1, 2, 3, 1, 0, 0, 1]], atol=1e-6)
    np.testing.assert_array_equal(model_cameras(model_cameras(raw)), model_cameras(raw))
    with pytest.raises(ValueError, match=r"shape \(1, 6\).*must be 5 .* or 7"):
        model_cameras(np.zeros((1, 6)))
