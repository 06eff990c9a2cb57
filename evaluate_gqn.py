"""Score a trained GQN on held-out scenes for each context size k, beside a nearest-view and a mean-image baseline.

Examples:
  python evaluate_gqn.py assets/demo                       (the shipped demo model; renders its test scenes once)
  python evaluate_gqn.py runs/demo --scenes 200 --samples 8 --json runs/demo/evaluation.json

For each k = 1..K the same scenes are scored, with the same query view and nested context views (the
loader draws views from --seed alone), and the same noise per scene (seeded by --seed and the scene's
index), so the numbers of different k differ only through the context, and none depends on --batch-size.
Per scene:
  elbo             -ELBO = NLL + KL in nats (train_gqn.py's `elbo`), posterior pass at pixel sigma --sigma
  nll, kl          its two terms: Gaussian NLL of the target under the posterior reconstruction; KL(q || p)
                   summed over latents and steps
  bits_per_dim     -ELBO in bits per 8-bit sub-pixel (core.bits_per_dim)
  mse_prior_sample MSE of one prior sample (what the model renders without seeing the target)
  mse_prior_mean   MSE of the mean of --samples prior samples
  mse_posterior    MSE of the posterior reconstruction (the model sees the target: a reference, not a prediction)
  mse_nearest_view baseline: the real context view nearest the query camera, nearest meaning the least
                   Euclidean distance between camera positions (x, y, z); ties (within 1e-6) go to the
                   least angle between viewing directions, then to the lower slot
  mse_mean_context baseline: the mean image of the real context views
  gain_over_nearest_view, gain_over_mean_context
                   the baseline's MSE minus the prior sample's, per scene: positive where the model is better;
                   their standard errors are those of paired differences
and, where the split has object masks (synthetic scenes; gqn/masks.py), the same over the pixels of the query
view that show an object and over the rest:
  mse_objects_X, mse_background_X   for X = prior_sample, nearest_view, mean_context
  gain_objects_over_Y, gain_background_over_Y   for Y = nearest_view, mean_context, per scene as above
                   a view without object pixels has none of the objects figures (the count is in the JSON)
Means (and standard errors) over scenes are printed as tables and written as JSON.
"""
import os

from gqn import cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import json
import sys
import time
from collections import defaultdict

import mxnet as mx
import numpy as np
from tqdm import tqdm

import core
from gqn import cli, masks, scene_format, synthetic
from gqn.baselines import baseline_mse
from gqn.datasets import SPLITS
from gqn.loader import Batch, make_loader
from gqn.metrics import region_metrics
from gqn.runs import ensure_dataset, load_model, run_dataset_root, saved_config

METRICS = [("elbo", "-ELBO"), ("nll", "NLL"), ("kl", "KL"), ("bits_per_dim", "bits/dim"),
           ("mse_prior_sample", "MSE sample"), ("mse_prior_mean", "MSE mean-S"), ("mse_posterior", "MSE post"),
           ("mse_nearest_view", "MSE nearest"), ("mse_mean_context", "MSE ctx-mean")]
REGION_METRICS = [("mse_%s_%s" % (region, name), "%s %s" % (region[:3], title))
                  for region in ("objects", "background")
                  for name, title in (("prior_sample", "sample"), ("nearest_view", "nearest"),
                                      ("mean_context", "ctx-mean"))]
GAINS = [("gain_over_", "whole image"), ("gain_objects_over_", "objects"), ("gain_background_over_", "background")]


def scene_metrics(batch, posterior_mean, kl, prior_samples, sigma, object_masks=None):
    """Per-scene metrics {name: (B,)} of one numpy Batch (see the module docstring).

    posterior_mean (B, 3, H, W), kl (B,), prior_samples (B, S, 3, H, W), sigma the pixel standard deviation;
    object_masks (B, H, W) bool of the query views, or None for data without masks.
    """
    target = np.asarray(batch.target, dtype=np.float64)
    metrics = core.elbo_terms(np, target, np.asarray(posterior_mean, dtype=np.float64),
                              np.asarray(kl, dtype=np.float64), sigma)
    metrics["mse_posterior"] = metrics.pop("mse")
    samples = np.asarray(prior_samples, dtype=np.float64)
    metrics["mse_prior_sample"] = core.mse(np, target, samples[:, 0])
    metrics["mse_prior_mean"] = core.mse(np, target, samples.mean(axis=1))
    metrics.update(baseline_mse(batch.context_frames, batch.context_cameras, batch.context_mask, batch.query_camera,
                                target))
    for baseline in ("nearest_view", "mean_context"):  # per scene, so their standard errors are paired ones
        metrics["gain_over_" + baseline] = metrics["mse_" + baseline] - metrics["mse_prior_sample"]
    if object_masks is not None:
        metrics.update(region_metrics(*batch, samples[:, 0], object_masks))
    return metrics


def summarise(per_scene):
    """{name: list of (B,) arrays} -> ({name: mean}, {name: standard error of the mean}) over all scenes.

    NaN marks a scene without the figure (a view without object pixels): it is left out of that figure.
    """
    means, sems = {}, {}
    for name, parts in per_scene.items():
        values = np.concatenate(parts)
        values = values[~np.isnan(values)]
        means[name] = float(values.mean())
        sems[name] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return means, sems


def noise_draws(seed, scenes, shape):
    """A function giving the next standard-normal noise (B, *shape) of these scenes, each from its own stream."""
    streams = [np.random.default_rng([seed, int(scene)]) for scene in scenes]
    return lambda: np.stack([s.standard_normal(shape, dtype=np.float32) for s in streams])


def predict(model, batch, draw, samples, ctx):
    """(posterior mean (B, 3, H, W), kl (B,), prior samples (B, S, 3, H, W)) as numpy, for one numpy Batch."""
    inputs = batch.as_in_context(ctx)
    posterior_mean, kl = model(*inputs[:4], mx.nd.array(draw(), ctx=ctx), inputs.target)
    renderer = model.generator()
    prior = [renderer(*inputs[:4], mx.nd.array(draw(), ctx=ctx)).asnumpy() for _ in range(samples)]
    return posterior_mean.asnumpy(), kl.asnumpy(), np.stack(prior, axis=1)


def evaluate_k(model, root, k, args, ctx, bar, split_masks=None):
    """Per-scene metrics {name: [(B,) arrays]} of the first args.scenes scenes with exactly k context views;
    split_masks (scenes, S, H, W) bool: the split's object masks (gqn/masks.py), or None."""
    loader = make_loader(root, args.split, args.batch_size, args.max_context, shuffle=False, seed=args.seed,
                         fixed_k=k, last_batch="keep")
    config, per_scene, start = model.config, defaultdict(list), 0
    shape = (config.steps, config.latent, config.image_size // core.SCALE, config.image_size // core.SCALE)
    for batch, keys in masks.keyed_batches(loader):
        count = min(len(batch.target), args.scenes - start)
        if count <= 0:
            break
        batch = Batch(*(a.asnumpy()[:count] for a in batch))
        query_masks = None if split_masks is None else masks.query_masks(split_masks, keys[:count])
        draw = noise_draws(args.seed, range(start, start + count), shape)  # (L, Z, h, w) per scene
        posterior_mean, kl, prior = predict(model, batch, draw, args.samples, ctx)
        for name, values in scene_metrics(batch, posterior_mean, kl, prior, args.sigma, query_masks).items():
            per_scene[name].append(values)
        start += count
        bar.update(1)
    return per_scene


def format_table(results, columns=METRICS):
    """The per-k means of the columns [(name, title)] as a fixed-width text table, one row per context size."""
    lines = ["%3s" % "k" + "".join("%13s" % title for _, title in columns)]
    for k, means in results.items():
        lines.append("%3s" % k + "".join("%13.5g" % means[name] for name, _ in columns))
    return "\n".join(lines)


def format_gains(means, sems, k):
    """Lines of the paired gains (baseline MSE minus the prior sample's, mean +- standard error) at context size k."""
    lines = []
    for baseline in ("nearest_view", "mean_context"):
        parts = ["%s %.5f +- %.5f" % (title, means[prefix + baseline], sems[prefix + baseline])
                 for prefix, title in GAINS if prefix + baseline in means]
        lines.append("k=%d gain over %s: %s" % (k, baseline.replace("_", " "), ", ".join(parts)))
    return lines


def load_split_masks(root, split):
    """The object masks of root/split (rendered first for a synthetic split written without them), or None."""
    split_dir = os.path.join(root, split)
    manifest = scene_format.read_manifest(split_dir)
    try:
        if manifest["source"].get("kind") == "synthetic" and masks.missing_masks(split_dir, manifest):
            print("evaluate_gqn.py: rendering the object masks of %s" % split_dir, file=sys.stderr)
            synthetic.add_missing_masks(split_dir)
        return masks.load_masks(split_dir)
    except ValueError as error:
        raise SystemExit("evaluate_gqn.py: %s" % error)


def parse_args(argv=None):
    parser = cli.Parser(__doc__)
    parser.add_argument("run", metavar="RUN", help="a run directory (holding RUN/checkpoint) or a checkpoint folder")
    parser.add_argument("--split", default="test", choices=SPLITS, help="dataset split to score (default: test)")
    parser.add_argument("--dataset", help="dataset name (default: the run's, from its state.json)")
    parser.add_argument("--data-dir", help="data root holding DATA_DIR/NAME (default: the run's)")
    parser.add_argument("--scenes", type=cli.bounded(int, 1), default=200,
                        help="scenes scored per k; fewer if the split has fewer (default: 200)")
    parser.add_argument("--samples", type=cli.bounded(int, 1), default=8,
                        help="prior samples per scene for mse_prior_mean (default: 8)")
    parser.add_argument("--sigma", type=cli.bounded(float, above=0),
                        help="pixel sigma of the NLL (default: the run's --sigma-final)")
    parser.add_argument("--max-context", type=cli.bounded(int, 1),
                        help="K, the largest context size scored (default: the run's)")
    parser.add_argument("--batch-size", type=cli.bounded(int, 1), default=16,
                        help="scenes per forward pass (default: 16)")
    parser.add_argument("--seed", type=cli.bounded(int, 0), default=0, help="seed of the views and the noise "
                        "(default: 0)")
    cli.add_devices(parser, several=False)
    cli.add_workers(parser, "processes rendering a synthetic split on first use")
    parser.add_argument("--json", metavar="FILE", help="JSON file to write (default: RUN/eval-SPLIT.json for a "
                        "run, else ./eval-SPLIT.json)")
    args = parser.parse_args(argv)
    if len(args.devices) > 1:
        parser.error("--devices %s: evaluation runs on one device" % cli.format_devices(args.devices))
    problem = cli.gpu_problem(args.devices)
    if problem:
        parser.error(problem)
    return args


def resolve_settings(args, state):
    """Fill the defaults that come from the checkpoint and the data; -> the dataset root. SystemExit on bad input."""
    root = run_dataset_root(state, args.dataset, args.data_dir)
    config = saved_config(state)
    try:
        ensure_dataset(root, args.dataset or config["dataset"], config["image_size"], config["train_scenes"],
                       [args.split], args.workers)
        manifest = scene_format.read_manifest(os.path.join(root, args.split))
    except (OSError, ValueError) as error:  # OSError: e.g. no permission to write a synthetic split
        raise SystemExit("evaluate_gqn.py: %s (give --data-dir, --dataset or --split)" % error)
    if manifest["frame_size"] != state["model"]["image_size"]:
        raise SystemExit("evaluate_gqn.py: %s has %dpx frames; the model renders %dpx"
                         % (root, manifest["frame_size"], state["model"]["image_size"]))
    views = manifest["views_per_scene"]
    if args.max_context is None:
        args.max_context = min(state["max_context"], views - 1)
    if not 1 <= args.max_context <= views - 1:
        raise SystemExit("evaluate_gqn.py: --max-context %d: valid 1..%d (%d views per scene)"
                         % (args.max_context, views - 1, views))
    args.scenes = min(args.scenes, manifest["scene_count"])
    args.batch_size = min(args.batch_size, args.scenes)
    args.sigma = args.sigma or config["sigma_final"]
    if args.json is None:
        parent, name = os.path.split(os.path.normpath(state["directory"]))
        args.json = os.path.join(parent if name == "checkpoint" else ".", "eval-%s.json" % args.split)
    return root


def main(argv=None):
    args = parse_args(argv)
    ctx = cli.contexts(args.devices)[0]
    try:
        model, state = load_model(args.run, ctx, core.GQN.from_config)
    except (FileNotFoundError, ValueError) as error:  # ValueError: model settings unknown here
        raise SystemExit("evaluate_gqn.py: %s" % error)
    root = resolve_settings(args, state)
    split_masks = load_split_masks(root, args.split)
    started, results, sems, with_objects = time.time(), {}, {}, {}
    batches = -(-args.scenes // args.batch_size)
    with tqdm(total=args.max_context * batches, unit="batch", file=sys.stderr, dynamic_ncols=True) as bar:
        for k in range(1, args.max_context + 1):
            try:
                per_scene = evaluate_k(model, root, k, args, ctx, bar, split_masks)
            except scene_format.DataError as error:  # names the shard and record that do not check out
                raise SystemExit("evaluate_gqn.py: %s" % error)
            results[k], sems[k] = summarise(per_scene)
            if split_masks is not None:
                with_objects[k] = int(np.sum(~np.isnan(np.concatenate(per_scene["mse_objects_prior_sample"]))))
    report = {"checkpoint": state["directory"], "step": state["step"], "data": os.path.join(root, args.split),
              "scenes": args.scenes, "max_context": args.max_context, "samples": args.samples,
              "sigma": args.sigma, "seed": args.seed, "metrics": results, "sem": sems}
    if split_masks is not None:
        report["scenes_with_objects"] = with_objects  # the views with object pixels: the objects figures' count
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(results))
    if split_masks is not None:
        print(format_table(results, REGION_METRICS))
    print("\n".join(format_gains(results[args.max_context], sems[args.max_context], args.max_context)))
    print("%d scenes of %s, k = 1..%d, step %d, sigma %g, %d prior samples; %.1f s; wrote %s"
          % (args.scenes, report["data"], args.max_context, state["step"], args.sigma, args.samples,
             time.time() - started, args.json))


if __name__ == "__main__":
    main()
