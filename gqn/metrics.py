"""Per-scene MSE over the pixels of the query view that show an object and over the rest, for a prediction and
both baselines (gqn.baselines), so that a model that renders the room but not the objects is seen to.

Arrays are numpy, shapes as in core.py; a mask (B, H, W) bool is True on object pixels (gqn.masks).
"""
import numpy as np

from gqn.baselines import mean_context, nearest_frames

REGIONS = ("objects", "background")


def region_mse(target, prediction, mask):
    """{'objects': (B,), 'background': (B,)}: each scene's MSE over its object pixels and over the rest.

    target, prediction (B, 3, H, W); mask (B, H, W) bool. A scene without a pixel in a region gets NaN there.
    """
    squared = np.square(np.asarray(target, np.float64) - np.asarray(prediction, np.float64)).mean(axis=1)  # (B, H, W)
    mask = np.asarray(mask, bool)
    result = {}
    for region, inside in zip(REGIONS, (mask, ~mask)):
        with np.errstate(invalid="ignore"):  # 0 / 0 pixels -> NaN
            result[region] = np.where(inside, squared, 0).sum(axis=(1, 2)) / inside.sum(axis=(1, 2))
    return result


def region_metrics(context_frames, context_cameras, context_mask, query_camera, target, prediction, mask,
                   name="prior_sample"):
    """Per-scene (B,) arrays: mse_{region}_{predictor} for the prediction (called `name`) and both baselines,
    and gain_{region}_over_{baseline} = the baseline's MSE minus the prediction's (positive where the prediction
    is better), per scene so that their standard errors are paired ones. NaN where a view has no such pixel."""
    predictions = {name: prediction,
                   "nearest_view": nearest_frames(context_frames, context_cameras, context_mask, query_camera),
                   "mean_context": mean_context(context_frames, context_mask)}
    metrics = {}
    for predictor, image in predictions.items():
        for region, values in region_mse(target, image, mask).items():
            metrics["mse_%s_%s" % (region, predictor)] = values
    for region in REGIONS:
        for baseline in ("nearest_view", "mean_context"):
            metrics["gain_%s_over_%s" % (region, baseline)] = (metrics["mse_%s_%s" % (region, baseline)]
                                                              - metrics["mse_%s_%s" % (region, name)])
    return metrics
