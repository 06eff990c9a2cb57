"""Baseline predictions of a query view that use no model: the nearest context view and the mean context image.

A model that does not beat both has not yet learned to use its context (train_gqn.py logs them beside the
validation MSE; evaluate_gqn.py reports them per context size). Arrays are numpy, shapes as in core.py.
"""
import numpy as np

TIE = 1e-6  # camera distances closer than this count as equal


def view_directions(cameras):
    """Unit viewing directions (..., 3) of cameras (..., 7): x, y, z, sin yaw, cos yaw, sin pitch, cos pitch."""
    sin_yaw, cos_yaw, sin_pitch, cos_pitch = (cameras[..., i] for i in range(3, 7))
    return np.stack([cos_pitch * cos_yaw, cos_pitch * sin_yaw, sin_pitch], axis=-1)


def nearest_view(context_cameras, context_mask, query_camera):
    """Slot (B,) of the real context view nearest the query camera.

    Nearest: the least Euclidean distance between camera positions (x, y, z); ties (within TIE) go to the least
    angle between viewing directions, then to the lower slot. context_cameras (B, K, 7), context_mask (B, K),
    query_camera (B, 7).
    """
    real = np.asarray(context_mask) > 0
    if not real.any(axis=1).all():
        raise ValueError("scenes %s have no real context view" % np.flatnonzero(~real.any(axis=1)).tolist())
    distance = np.linalg.norm(context_cameras[..., :3] - query_camera[:, None, :3], axis=-1)  # (B, K)
    distance = np.where(real, distance, np.inf)
    tied = distance <= distance.min(axis=1, keepdims=True) + TIE
    cosine = np.sum(view_directions(context_cameras) * view_directions(query_camera)[:, None], axis=-1)  # (B, K)
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    return np.argmin(np.where(tied, angle, np.inf), axis=1)


def nearest_frames(context_frames, context_cameras, context_mask, query_camera):
    """The nearest real context view of each scene: (B, K, 3, H, W), ... -> (B, 3, H, W)."""
    slots = nearest_view(context_cameras, context_mask, query_camera)
    return context_frames[np.arange(len(slots)), slots]


def mean_context(context_frames, context_mask):
    """Mean image of the real context views: (B, K, 3, H, W), (B, K) -> (B, 3, H, W); masked slots are ignored."""
    mask = np.asarray(context_mask, dtype=np.float64)
    weights = mask / mask.sum(axis=1, keepdims=True)                  # (B, K), each row sums to 1
    return np.einsum("bk,bkchw->bchw", weights, context_frames)


def baseline_mse(context_frames, context_cameras, context_mask, query_camera, target):
    """Per-scene MSE {'mse_nearest_view', 'mse_mean_context'} of (B,) arrays against target (B, 3, H, W)."""
    target = np.asarray(target, dtype=np.float64)
    nearest = nearest_frames(context_frames, context_cameras, context_mask, query_camera)
    return {"mse_nearest_view": np.mean(np.square(target - nearest), axis=(1, 2, 3)),
            "mse_mean_context": np.mean(np.square(target - mean_context(context_frames, context_mask)), axis=(1, 2, 3))}
