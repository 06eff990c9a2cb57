"""One training step of a GQN over devices and micro-batches, its batches, validation, and the kvstore helpers.

The model is used through its interface (model(...), model.elbo, model.noise_shape, model.generator(); core.GQN),
so this module, like the rest of gqn/, does not import core.
"""
import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gqn import amp, images, masks
from gqn.baselines import baseline_mse
from gqn.loader import make_loader, trim_context
from gqn.metrics import region_metrics


def noise_seed(seed, rank, step):
    """Each step's noise has its own seed, so a resumed run draws what an uninterrupted one would."""
    return (seed * 1000003 + rank * 100003 + step) % (2 ** 31)


def training_batches(root, batch_size, k, seed, workers, start_step, min_k=1):
    """Endless training batches from step `start_step` on, the same ones an uninterrupted run would see; each
    batch has min_k..k context views."""
    per_epoch = len(make_loader(root, "train", batch_size, k, seed=seed))
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        loader = make_loader(root, "train", batch_size, k, num_workers=workers, seed=seed, epoch=epoch,
                             skip_batches=skip, min_context=min_k)
        for batch in loader:
            yield batch
        epoch, skip = epoch + 1, 0


def validation_batches(root, scenes, k, per_device, ctx):
    """(the fixed held-out batches scored at every validation (same scenes, views and context sizes), the object
    masks (B, H, W) bool of their query views, or None for data without masks (converted DeepMind data)).

    ValueError, naming the file, when the split's masks are incomplete or do not fit it (gqn.masks).
    """
    loader = make_loader(root, "test", per_device, k, shuffle=False, seed=12345, last_batch="keep")
    split_masks = masks.load_masks(os.path.join(root, "test"))
    batches, query_masks = [], []
    for batch, keys in masks.keyed_batches(loader):
        batches.append(batch.as_in_context(ctx))
        if split_masks is not None:
            query_masks.append(masks.query_masks(split_masks, keys))
        if len(batches) * per_device >= scenes:
            break
    return batches, query_masks if split_masks is not None else None


def split_batch(batch, ctxs):
    """A Batch -> one Batch per device (the batch size must divide evenly)."""
    fields = [gluon.utils.split_and_load(a, ctxs, even_split=True) for a in batch]
    return [type(batch)(*parts) for parts in zip(*fields)]


def check_micro_batch(per_device, micro_batch):
    """ValueError unless `micro_batch` (0 = off) divides the scenes each device gets per step."""
    if micro_batch and per_device % micro_batch:
        raise ValueError("--micro-batch %d does not divide the %d scenes each device gets per step; choose a "
                         "divisor of %d" % (micro_batch, per_device, per_device))


def accumulate_gradients(model, per_device, micro_batch):
    """grad_req 'add' when a device's share runs in several passes (train_step); they must divide it evenly."""
    check_micro_batch(per_device, micro_batch)
    if micro_batch and micro_batch < per_device:
        model.collect_params().setattr("grad_req", "add")


def train_step(model, trainer, batch, ctxs, sigma, batch_size, micro_batch=0):
    """Forward, backward and one Adam step -> a list of per-scene ELBO-term dicts of NDArrays (no host sync).

    With micro_batch, each device's share runs in passes of micro_batch scenes whose gradients add up
    (grad_req 'add', set by accumulate_gradients) to those of one pass: the same update, with the activation
    memory of one pass. The noise is drawn for the whole share first, so it does not depend on micro_batch.
    """
    parts = split_batch(trim_context(batch), ctxs)  # the Tower skips the slots no scene uses
    # The whole batch's noise, split like the batch, so the update does not depend on the number of devices.
    noise = mx.nd.random.normal(shape=model.noise_shape(batch.target.shape[0]), ctx=ctxs[0])
    noises = gluon.utils.split_and_load(noise, ctxs, even_split=True)
    per_device = parts[0].target.shape[0]
    size = micro_batch or per_device
    terms = []
    for begin in range(0, per_device, size):
        chunks = [(type(part)(*(a[begin:begin + size] for a in part)), noise[begin:begin + size])
                  for part, noise in zip(parts, noises)]
        with autograd.record():
            chunk_terms = [model.elbo(chunk, noise, sigma)[0] for chunk, noise in chunks]
        amp.backward([t["elbo"] for t in chunk_terms], trainer)  # through the fp16 loss scaler if any
        terms += chunk_terms
    trainer.step(batch_size)
    if size < per_device:
        model.collect_params().zero_grad()
    return terms


def mean_terms(terms):
    """Per-device per-scene term dicts -> {name: mean over all scenes} as floats (a host sync)."""
    return {name: float(np.concatenate([t[name].asnumpy() for t in terms]).mean()) for name in terms[0]}


def region_means(batches, samples, query_masks):
    """{mse_REGION_PREDICTOR: mean over scenes} over object pixels and the rest (gqn.metrics), for the prior
    samples [(B, 3, H, W)] and both baselines; views without pixels in a region are left out of its mean."""
    per_batch = [region_metrics(*(a.asnumpy() for a in batch), sample, mask)
                 for batch, sample, mask in zip(batches, samples, query_masks)]
    return {name: float(np.nanmean(np.concatenate([p[name] for p in per_batch])))
            for name in per_batch[0] if name.startswith("mse_")}  # the gains are differences of these means


def validate(model, batches, sigma, seed, query_masks=None):
    """Posterior ELBO terms, the MSE of a prior sample and of the two baselines on the fixed held-out batches, and
    over object pixels and the rest where the query views' masks [(B, H, W)] are given;
    -> (metrics {name: float}, prediction grid (rows, cols, 3) uint8)."""
    renderer = model.generator()
    mx.random.seed(seed)  # the same noise at every validation, so curves compare like with like
    terms, baselines, samples, grid_rows = [], [], [], None
    for batch in batches:
        baselines.append(baseline_mse(*(a.asnumpy() for a in batch)))
        noise = mx.nd.random.normal(shape=model.noise_shape(batch.target.shape[0]), ctx=batch.target.context)
        # Training mode (this model has no dropout or batch norm: the same numbers). In inference mode MXNet's
        # oneDNN convolutions reorder their weights in place to a blocked layout; each later read of a parameter
        # from Python (checkpoints) reorders it back with an OpenMP team of the main thread, which stops the
        # engine's threads spinning for the rest of the run (gqn/cpu.py, docs/mxnet-notes.md).
        with autograd.train_mode():
            batch_terms, recon = model.elbo(batch, noise, sigma)
            sample = renderer(*batch[:4], noise)
        samples.append(sample.asnumpy())
        batch_terms["mse_prior_sample"] = mx.nd.mean(mx.nd.square(batch.target - sample), axis=(1, 2, 3))  # (B,)
        terms.append(batch_terms)
        if grid_rows is None:
            grid_rows = (batch, mx.nd.stack(sample, recon, axis=1))  # (B, 2, 3, H, W): prior sample, reconstruction
    metrics = mean_terms(terms)
    metrics["mse_posterior"] = metrics.pop("mse")
    metrics["sample_spread"] = float(np.concatenate(samples).std(axis=0).mean())  # ~0: one image for every scene
    metrics["colour_corr"] = images.colour_correlation(np.concatenate(samples),  # ~0: grey renderings
                                                       np.concatenate([b.target.asnumpy() for b in batches]))
    for name in baselines[0]:  # what the model must beat: nearest context view, mean context image
        metrics[name] = float(np.concatenate([b[name] for b in baselines]).mean())
    if query_masks is not None:
        metrics.update(region_means(batches, samples, query_masks))
    batch, predictions = grid_rows
    n = min(8, batch.target.shape[0])
    grid = images.prediction_grid(batch.context_frames[:n].asnumpy(), batch.context_mask[:n].asnumpy(),
                                  predictions[:n].asnumpy(), batch.target[:n].asnumpy())
    # the legend: a prior sample, the posterior reconstruction
    columns = [("context", batch.context_frames.shape[1]), ("sample", 1), ("recon", 1), ("truth", 1)]
    return metrics, images.with_header(grid, columns, batch.target.shape[-1])


class NonFiniteLoss(RuntimeError):
    """A loss or a parameter went NaN or infinite; the message says where the run can go on from."""


def where_to_go_on(run_dir, last_good):
    """'The last good checkpoint (step N) is kept in RUN/checkpoint; resume (--resume RUN)', or how to start again."""
    if last_good is None:
        return "No checkpoint was saved yet; start again"
    return "The last good checkpoint (step %d) is kept in %s; resume (--resume %s)" % (
        last_good, os.path.join(run_dir, "checkpoint"), run_dir)


def check_finite(values, step, run_dir, last_good):
    """NonFiniteLoss unless every logged loss term {name: float} is finite."""
    if not all(np.isfinite(v) for v in values.values()):
        raise NonFiniteLoss("loss is not finite at step %d (%s); stopping. %s with a lower --lr-initial or a larger "
                            "--sigma-final" % (step, ", ".join("%s=%g" % kv for kv in values.items()),
                                               where_to_go_on(run_dir, last_good)))


def check_parameters(model, step, run_dir, last_good):
    """Non-finite parameters (an update from a huge gradient) must not become the last good checkpoint."""
    for name, param in model.collect_params().items():
        if not np.isfinite(param.data().asnumpy()).all():
            raise NonFiniteLoss("parameter %s is not finite after step %d; stopping. %s with a lower --lr-initial"
                                % (name, step, where_to_go_on(run_dir, last_good)))


def make_kvstore(name):
    """-> (kvstore or its name, rank, number of workers)."""
    if name.startswith("dist"):
        kv = mx.kv.create(name)
        return kv, kv.rank, kv.num_workers
    return name, 0, 1


def start_kvstore(trainer, kv):
    """Give every dist_* worker the server's initial parameters now, before any gradient is pushed.

    MXNet 1.9.1's Trainer does this inside its first step(), unordered with the other workers' gradient pushes,
    so a worker could start from summed gradients in place of weights (docs/mxnet-notes.md; tests/test_train.py).
    """
    trainer._init_kvstore()   # private in MXNet 1.9.1 (pinned): step() would call both on first use
    trainer._init_params()
    mx.nd.waitall()
    kv._barrier()
