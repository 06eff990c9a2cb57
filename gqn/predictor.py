"""Render query views from a GQN renderer exported by export_gqn.py, with Gluon's SymbolBlock and without core.py.

    predictor = Predictor("exported/rooms_ring")
    views = predictor.render(context_frames, context_cameras, context_mask, query_camera, predictor.noise(1, seed=0))
"""
import json
import os
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon

from gqn.loader import transform_cameras

SPEC = "gqn-renderer.json"  # export_gqn.py writes this beside the symbol and the parameters
INPUTS = ("context_frames", "context_cameras", "context_mask", "query_camera", "noise")


def model_cameras(cameras):
    """Cameras (..., 5) as DeepMind stores them (x, y, z, yaw, pitch), or (..., 7) as the model reads them,
    -> (..., 7)."""
    cameras = np.asarray(cameras, np.float32)
    if cameras.shape[-1] == 5:
        return transform_cameras(cameras)
    if cameras.shape[-1] != 7:
        raise ValueError("cameras of shape %s: the last axis must be 5 (x, y, z, yaw, pitch) or 7 (x, y, z, "
                         "sin yaw, cos yaw, sin pitch, cos pitch)" % (cameras.shape,))
    return cameras


class Predictor:
    """An exported renderer: (context_frames (B, K, 3, H, W) in [0, 1], context_cameras (B, K, 5 or 7),
    context_mask (B, K), query_camera (B, 5 or 7), noise (B, L, Z, h, w)) -> views (B, 3, H, W). Any B and K."""

    def __init__(self, directory, ctx=None):
        with open(os.path.join(directory, SPEC)) as f:
            self.spec = json.load(f)
        self.ctx = ctx or mx.cpu()
        with warnings.catch_warnings():  # the inputs' types are only known at the first call: float32, as render gives
            warnings.filterwarnings("ignore", message="Cannot decide type")
            self.block = gluon.SymbolBlock.imports(os.path.join(directory, self.spec["symbol"]),
                                                   [self.spec["inputs"][name] for name in INPUTS],
                                                   os.path.join(directory, self.spec["params"]), ctx=self.ctx)

    def noise(self, batch_size, seed=0):
        """Standard-normal noise (B, L, Z, h, w) of this model, drawn from `seed`."""
        return np.random.default_rng(seed).standard_normal([batch_size] + self.spec["noise_shape"], dtype=np.float32)

    def render(self, context_frames, context_cameras, context_mask, query_camera, noise):
        """Views (B, 3, H, W) as numpy float32 in [0, 1] (see the class docstring for the inputs)."""
        size = self.spec["model"]["image_size"]
        if np.shape(context_frames)[-3:] != (3, size, size):
            raise ValueError("context_frames of shape %s: expected (B, K, 3, %d, %d)"
                             % (np.shape(context_frames), size, size))
        if list(np.shape(noise)[1:]) != self.spec["noise_shape"]:
            raise ValueError("noise of shape %s: expected (B, %s)"
                             % (np.shape(noise), ", ".join(map(str, self.spec["noise_shape"]))))
        arrays = (context_frames, model_cameras(context_cameras), context_mask,
                  model_cameras(query_camera), noise)
        return self.block(*(mx.nd.array(a, ctx=self.ctx, dtype="float32") for a in arrays)).asnumpy()
