"""Render one scene with a trained GQN: a fly-around GIF from a ring of cameras, and a grid of its held-out views.

Examples:
  python render_gqn.py                                    (the shipped demo model, assets/demo/, into renders/)
  python render_gqn.py runs/demo --scene 3 --context 3 --views 36 --out-dir runs/demo/render

The first --context views of scene --scene are the context. The ring: --views cameras evenly spaced in angle
(36: 10 degrees apart) on a horizontal circle about the vertical axis through the origin, starting at the first
context camera; its radius, height and pitch are the means over the scene's own cameras, and each ring camera
keeps the scene's mean yaw relative to looking at the axis (the circular mean), so it looks where the scene's
cameras look. For a synthetic family each GIF frame shows the prediction beside the truth, drawn by the
renderer that made the scene; converted DeepMind data has no renderer, so its GIF shows the prediction alone.
The grid has one row per held-out view: context | prediction | ground truth. Every view is
rendered with the same noise, drawn from --seed, so the animation does not flicker and a seed repeats exactly.
A synthetic family's split is rendered on first use, the same scenes train_gqn.py writes.
"""
import os

from gqn import cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import mxnet as mx
import numpy as np

import core
from gqn import cli, images, scene_format, synthetic
from gqn.datasets import SPLITS
from gqn.loader import SceneDataset, decode_frames, transform_cameras
from gqn.runs import ensure_dataset, load_model, run_dataset_root, saved_config

ROOT = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(ROOT, "assets", "demo")
CHUNK = 12          # query views per forward pass


def circular_mean(angles):
    return float(np.arctan2(np.mean(np.sin(angles)), np.mean(np.cos(angles))))


def ring_cameras(cameras, views, start):
    """Raw cameras (views, 5) x, y, z, yaw, pitch on a ring fitted to a scene's raw cameras (S, 5), from angle
    `start` (radians about the vertical axis) on, 360/views degrees apart (see the module docstring)."""
    x, y, z, yaw, pitch = (cameras[:, i].astype(np.float64) for i in range(5))
    inward = np.arctan2(y, x) + np.pi                              # yaw that looks at the axis
    yaw_offset = circular_mean(yaw - inward)
    angles = start + 2 * np.pi * np.arange(views) / views          # (views,)
    radius = np.mean(np.hypot(x, y))
    ring = [radius * np.cos(angles), radius * np.sin(angles), np.full(views, np.mean(z)),
            angles + np.pi + yaw_offset, np.full(views, np.mean(pitch))]
    return np.stack(ring, axis=1).astype(np.float32)


def load_scene(state, args):
    """(frames uint8 (S, H, W, 3), raw cameras (S, 5), where from, the split's manifest source) of scene --scene
    of the chosen split."""
    root = run_dataset_root(state, args.dataset, args.data_dir)
    split_dir = os.path.join(root, args.split)
    config = saved_config(state)
    try:
        ensure_dataset(root, args.dataset or config["dataset"], config["image_size"], config["train_scenes"],
                       [args.split], args.workers)
    except (OSError, ValueError) as error:  # OSError: e.g. no permission to write a synthetic split
        raise SystemExit("render_gqn.py: %s (give --data-dir, --dataset or --split)" % error)
    try:
        scenes = SceneDataset(root, args.split)
        if not 0 <= args.scene < len(scenes):
            raise SystemExit("render_gqn.py: --scene %d: valid 0..%d in %s" % (args.scene, len(scenes) - 1, split_dir))
        jpegs, cameras = scenes[args.scene]
        source = scene_format.read_manifest(split_dir)["source"] or {}
        return decode_frames(jpegs), cameras, "%s scene %d" % (split_dir, args.scene), source
    except scene_format.DataError as error:  # names the shard and record that do not check out
        raise SystemExit("render_gqn.py: %s" % error)


def render_views(renderer, frames, cameras, query_cameras, noise, ctx):
    """Views (Q, 3, H, W) in [0, 1] of raw query cameras (Q, 5), from context frames (N, 3, H, W) and raw
    cameras (N, 5), with the same noise (L, Z, h, w) for every view."""
    out = []
    for start in range(0, len(query_cameras), CHUNK):
        queries = transform_cameras(query_cameras[start:start + CHUNK])           # (Q', 7)
        count = len(queries)
        inputs = [np.broadcast_to(frames, (count,) + frames.shape),              # (Q', N, 3, H, W)
                  np.broadcast_to(transform_cameras(cameras), (count, len(cameras), 7)),  # (Q', N, 7)
                  np.ones((count, len(cameras)), np.float32), queries,
                  np.broadcast_to(noise, (count,) + noise.shape)]                # (Q', L, Z, h, w)
        out.append(renderer(*(mx.nd.array(a, ctx=ctx) for a in inputs)).asnumpy())
    return np.concatenate(out)


def beside_truth(frames, source, split, scene, ring):
    """GIF frames uint8 (V, H, W, 3) -> each with the synthetic scene's true view from its ring camera beside it,
    under a legend (V, HEADER + H + 2 PAD, 2 W + 3 PAD, 3); frames unchanged for data without a renderer."""
    if source.get("kind") != "synthetic":
        return frames
    truth = synthetic.render_from(source["family"], source["seed"], split, scene, ring, source["image_size"])
    pairs = [images.tile_rows(np.stack([frame, true])[None]) for frame, true in zip(frames, truth)]
    return np.stack([images.with_header(pair, [("prediction", 1), ("truth", 1)], frames.shape[2])
                     for pair in pairs])


def parse_args(argv=None):
    parser = cli.Parser(__doc__)
    parser.add_argument("run", metavar="RUN", nargs="?", help="a run directory or a checkpoint folder (default: "
                        "the demo, %s)" % os.path.relpath(DEMO))
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="dataset split the scene comes from (default: test)")
    parser.add_argument("--dataset", help="dataset name (default: the run's, from its state.json)")
    parser.add_argument("--data-dir", help="data root holding DATA_DIR/NAME (default: the run's)")
    parser.add_argument("--scene", type=cli.bounded(int, 0), default=0,
                        help="index of the scene in the split (default: 0)")
    parser.add_argument("--context", type=cli.bounded(int, 1), default=3,
                        help="context views: the scene's first N (default: 3)")
    parser.add_argument("--views", type=cli.bounded(int, 1), default=36,
                        help="cameras on the ring, frames of the GIF (default: 36)")
    parser.add_argument("--seed", type=cli.bounded(int, 0), default=0, help="seed of the noise (default: 0)")
    parser.add_argument("--zoom", type=cli.bounded(int, 1), default=1,
                        help="enlarge the GIF and PNG by this factor, each pixel a block (default: 1)")
    cli.add_devices(parser, several=False)
    cli.add_workers(parser, "processes rendering a synthetic split on first use")
    parser.add_argument("--out-dir", default="renders", help="output directory (default: renders)")
    args = parser.parse_args(argv)
    if len(args.devices) > 1:
        parser.error("--devices %s: rendering runs on one device" % cli.format_devices(args.devices))
    problem = cli.gpu_problem(args.devices)
    if problem:
        parser.error(problem)
    return args


def checkpoint_path(args):
    if args.run:
        return args.run
    if not os.path.isdir(DEMO):
        raise SystemExit("render_gqn.py: no RUN given and the demo model %s is missing; train a model "
                         "(python train_gqn.py --preset cpu-demo --run-dir RUN) and pass RUN" % DEMO)
    return DEMO


def main(argv=None):
    args = parse_args(argv)
    ctx = cli.contexts(args.devices)[0]
    try:
        model, state = load_model(checkpoint_path(args), ctx, core.GQN.from_config)
    except (FileNotFoundError, ValueError) as error:  # ValueError: model settings unknown here
        raise SystemExit("render_gqn.py: %s" % error)
    frames, cameras, where, source = load_scene(state, args)
    if frames.shape[1] != model.config.image_size:
        raise SystemExit("render_gqn.py: %s has %dpx frames; the model renders %dpx"
                         % (where, frames.shape[1], model.config.image_size))
    if not 1 <= args.context <= len(frames) - 1:
        raise SystemExit("render_gqn.py: --context %d: valid 1..%d (%d views per scene)"
                         % (args.context, len(frames) - 1, len(frames)))
    noise = np.random.default_rng(args.seed).standard_normal(model.noise_shape(1)[1:], dtype=np.float32)  # (L, Z, h, w)
    views = frames.transpose(0, 3, 1, 2).astype(np.float32) / 255                   # (S, 3, H, W)
    context, held_out = slice(0, args.context), slice(args.context, None)
    ring = ring_cameras(cameras, args.views, float(np.arctan2(cameras[0, 1], cameras[0, 0])))
    render = lambda queries: render_views(model.generator(), views[context], cameras[context], queries, noise, ctx)
    fly_around, predictions = render(ring), render(cameras[held_out])
    count = len(predictions)
    grid = images.prediction_grid(np.broadcast_to(views[context], (count,) + views[context].shape),
                                  np.ones((count, args.context)), predictions[:, None], views[held_out])
    grid = images.with_header(grid, [("context", args.context), ("prediction", 1), ("truth", 1)], views.shape[-1])
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, "%s-%s-%d" % (args.dataset or state["config"]["dataset"], args.split, args.scene))
    fly_around = beside_truth(images.to_uint8(fly_around), source, args.split, args.scene, ring)
    images.save_gif(images.enlarge(fly_around, args.zoom), stem + "-ring.gif")
    images.save_png(images.enlarge(grid, args.zoom), stem + "-views.png")
    print("%s, %d context views, step %d of %s: wrote %s-ring.gif (%d frames) and %s-views.png (%d held-out views)"
          % (where, args.context, state["step"], state["directory"], stem, args.views, stem, count))


if __name__ == "__main__":
    main()
