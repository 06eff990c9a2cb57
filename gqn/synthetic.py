"""Synthetic GQN scenes (ring-camera rooms, Shepard-Metzler cube chains) written as our RecordIO or DeepMind's TFRecords.

Examples:
  python -m gqn.synthetic --dataset rooms_ring --data-dir datasets --train-scenes 2000   (rooms_ring-64px-2000)
  python -m gqn.synthetic --dataset rooms_ring --tfrecord-dir /tmp/gqn-tf --train-scenes 500  (DeepMind's layout)

The dataset is DATA_DIR/NAME-SIZEpx-SCENES with a test split of SCENES/10, the one train_gqn.py, evaluate_gqn.py
and render_gqn.py look for (and render on first use) with the same --dataset, --image-size and --train-scenes.

Scene i of a split is drawn from its own random stream, seeded by (seed, split, i): the output is
the same for any number of workers, and train and test never share a stream. The training CLI
calls `ensure_synthetic`, which generates a split only when its manifest is missing. RecordIO splits
carry each view's object mask beside their shards (gqn.masks).
"""
import contextlib
import multiprocessing
import os
import re
import sys
import time

import cv2
import numpy as np
from tqdm import tqdm

from gqn import cli, masks, render, scene_format, tfrecord
from gqn.datasets import SYNTHETIC_FAMILIES, SPLITS, dataset_root, file_stem, get_dataset, synthetic_test_scenes
from gqn.processes import init_worker

FORMATS = ("recordio", "tfrecord")
SCENES_PER_SHARD = 500  # shards per split = ceil(scenes / this); 500 scenes of 64x64 are ~10 MB
JPEG_QUALITY = 95
_SPLIT_STREAM = {"train": 0, "test": 1}  # part of every scene's seed: the splits never overlap


def _colour(rng, saturation=(0.45, 0.9), value=(0.55, 0.95)):
    """A random RGB colour (3,) float32 from a uniform hue and the given saturation/value ranges."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255,
                      rng.uniform(*value) * 255]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255


def _look_at(positions, target):
    """DeepMind cameras (V, 5): x, y, z, yaw, pitch looking from positions (V, 3) at target (3,)."""
    d = target - positions
    yaw = np.arctan2(d[:, 1], d[:, 0])
    pitch = np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1]))
    return np.concatenate([positions, yaw[:, None], pitch[:, None]], 1).astype(np.float32)


def _room_objects(rng, count, spread=1.4):
    """1-3 non-overlapping objects on the floor: (kind, xy position, footprint radius, colour)."""
    placed = []
    while len(placed) < count:
        kind = rng.choice(["sphere", "box", "cylinder"])
        radius = rng.uniform(0.3, 0.55)
        xy = rng.uniform(-spread, spread, 2)
        if np.linalg.norm(xy) <= spread and all(
                np.linalg.norm(xy - p) > radius + r + 0.1 for _, p, r, _ in placed):
            placed.append((kind, xy, radius, _colour(rng)))
    return placed


def _room_groups(rng, placed):
    """render primitive groups of the placed objects."""
    spheres, boxes, cylinders = [], [], []
    for kind, (x, y), radius, colour in placed:
        if kind == "sphere":
            spheres.append(([x, y, radius], radius, colour))
        elif kind == "box":
            half = radius / np.sqrt(2) * rng.uniform(0.8, 1.2, 3)
            half[2] = rng.uniform(0.25, 0.6)
            boxes.append(([x, y, half[2]], half, rng.uniform(0, np.pi), colour))
        else:
            cylinders.append(([x, y, 0], radius * 0.9, rng.uniform(0.4, 1.2), colour))
    groups = [(render.Spheres, spheres), (render.Boxes, boxes), (render.Cylinders, cylinders)]
    return [kind(*(np.array(field, np.float32) for field in zip(*items)))
            for kind, items in groups if items]


def rooms_ring_scene(rng, views):
    """(render.Scene, cameras (V, 5)): a coloured room with 1-3 objects, cameras on a ring inside."""
    walls = [_colour(rng, (0.2, 0.6), (0.5, 0.9)) for _ in range(4)]
    faces = np.stack(walls + [_colour(rng, (0.1, 0.5), (0.4, 0.8)),
                              np.full(3, 0.85, np.float32)])
    room = render.Room(3.0, 2.6, faces)
    objects = _room_groups(rng, _room_objects(rng, rng.integers(1, 4)))
    light = np.array([[*rng.uniform(-1.5, 1.5, 2), 2.4]], np.float32)
    angles = rng.uniform(0, 2 * np.pi, views)
    ring = np.stack([2.2 * np.cos(angles), 2.2 * np.sin(angles), np.full(views, 1.2)], 1)
    cameras = _look_at(ring, np.zeros(3, np.float32))
    cameras[:, 3] += rng.uniform(-0.3, 0.3, views)  # yaw jitter: the centre drifts in the frame
    cameras[:, 4] = rng.uniform(-0.45, -0.15, views)  # look slightly down at the objects
    return render.Scene(objects, room, light, [0.7], 0.35, np.zeros(3, np.float32)), cameras


def _cube_chain(rng, count):
    """Grid positions (count, 3) of a self-avoiding chain of unit cubes, centred on the origin."""
    steps = np.concatenate([np.eye(3), -np.eye(3)]).astype(np.int64)
    cells = [np.zeros(3, np.int64)]
    while len(cells) < count:
        step = steps[rng.integers(6)]
        cell = cells[-1] + step
        if not any((cell == c).all() for c in cells):
            cells.append(cell)
    cells = np.array(cells, np.float32)
    return cells - cells.mean(0)


def shepard_metzler_scene(rng, views):
    """(render.Scene, cameras (V, 5)): a chain of 5-7 coloured unit cubes, cameras around it."""
    centers = _cube_chain(rng, rng.integers(5, 8))
    colours = np.stack([_colour(rng, (0.5, 0.95), (0.6, 1.0)) for _ in centers])
    cubes = render.Boxes(centers, np.full_like(centers, 0.5), np.zeros(len(centers), np.float32),
                         colours)
    lights = np.array([[20, 12, 30], [-25, -10, 5]], np.float32)
    yaw = rng.uniform(0, 2 * np.pi, views)
    elevation = rng.uniform(-0.5, 1.0, views)
    positions = 6.0 * np.stack([np.cos(elevation) * np.cos(yaw), np.cos(elevation) * np.sin(yaw),
                                np.sin(elevation)], 1)
    cameras = _look_at(positions, np.zeros(3, np.float32))
    return render.Scene([cubes], None, lights, [0.75, 0.3], 0.25, np.full(3, 0.2, np.float32)), cameras


FAMILIES = {"rooms_ring": (rooms_ring_scene, 50.0), "shepard_metzler": (shepard_metzler_scene, 50.0)}


def make_scene(family, seed, split, index):
    """(render.Scene, cameras (S, 5) float32, field of view in degrees) of scene `index` of a split."""
    info = get_dataset(family, SYNTHETIC_FAMILIES)
    make, fov = FAMILIES[info.name]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_STREAM[split], index)))
    return (*make(rng, info.views_per_scene), fov)


def render_scene_with_masks(family, seed, split, index, image_size=64):
    """(frames: list of JPEG bytes, cameras (S, 5) float32, object masks (S, H, W) bool) of scene `index`."""
    scene, cameras, fov = make_scene(family, seed, split, index)
    images, on_object = render.render_with_masks(scene, cameras, image_size, fov)
    return [encode_jpeg(image) for image in images], cameras, on_object


def render_from(family, seed, split, index, cameras, image_size):
    """Images (V, size, size, 3) uint8 of scene `index` of a split from other raw cameras (V, 5): what a model
    asked for those cameras should draw (the ground truth beside render_gqn.py's fly-around)."""
    scene, _, fov = make_scene(family, seed, split, index)
    return render.render(scene, np.asarray(cameras, np.float32), image_size, fov)


def render_scene(family, seed, split, index, image_size=64):
    """(frames: list of JPEG bytes, cameras (S, 5) float32) of scene `index` of a split."""
    return render_scene_with_masks(family, seed, split, index, image_size)[:2]


def encode_jpeg(image):
    """JPEG bytes of an RGB uint8 image (H, W, 3)."""
    bgr = image[:, :, ::-1]  # cv2 encodes BGR
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cv2 could not encode an image of shape %s as JPEG" % (image.shape,))
    return data.tobytes()


def _render_task(task):
    return render_scene_with_masks(*task)


def _clear_split(split_dir):
    """Remove the shards, TFRecords and manifest an earlier run wrote here (and nothing else)."""
    pattern = re.compile(r"^\d+-of-\d+\.(rec|idx|tfrecord|masks\.npz)(\.tmp)?$|^manifest\.json(\.tmp)?$")
    for name in os.listdir(split_dir):
        if pattern.match(name):
            os.remove(os.path.join(split_dir, name))


def _write_shards(split_dir, scenes, counts, fmt):
    """Write the stream of (frames, cameras, masks) into len(counts) shards; [(stem, count, None)] written.

    RecordIO shards get their object masks beside them (gqn.masks); DeepMind's layout has no place for them.
    """
    shards = []
    for number, count in enumerate(counts, 1):
        stem = file_stem(number, len(counts))
        batch = (next(scenes) for _ in range(count))
        if fmt == "tfrecord":
            tfrecord.write_records(os.path.join(split_dir, stem + ".tfrecord"),
                                   (tfrecord.encode_example(frames, cameras) for frames, cameras, _ in batch))
        else:
            shard_masks = []
            with scene_format.shard_writer(split_dir, stem) as writer:
                for frames, cameras, scene_masks in batch:
                    writer.write(scene_format.encode_scene(frames, cameras))
                    shard_masks.append(scene_masks)
            masks.write_masks(split_dir, stem, np.stack(shard_masks))
        shards.append((stem, count, None))
    return shards


def add_missing_masks(split_dir):
    """Render the object masks of a synthetic RecordIO split whose shards lack them (a split written without
    masks); the scenes are drawn again from the manifest's seed, so the masks fit the stored frames."""
    manifest = scene_format.read_manifest(split_dir)
    source = manifest["source"]
    if source.get("kind") != "synthetic":
        raise ValueError("%s holds %s data; only synthetic splits have object masks" % (split_dir, source.get("kind")))
    first = 0
    for shard in manifest["shards"]:
        indices = range(first, first + shard["scenes"])
        first += shard["scenes"]
        if os.path.exists(masks.masks_path(split_dir, shard["name"])):
            continue
        views = [make_scene(source["family"], source["seed"], manifest["split"], i) for i in indices]
        masks.write_masks(split_dir, shard["name"], np.stack([
            render.object_masks(scene, cameras, source["image_size"], fov) for scene, cameras, fov in views]))


def write_split(out_dir, family, split, scenes, image_size=64, seed=0, fmt="recordio",
                workers=1):
    """Render `scenes` scenes into out_dir/split (our RecordIO + manifest, or DeepMind TFRecords)."""
    if fmt not in FORMATS:
        raise ValueError("unknown format %r; valid formats: %s" % (fmt, ", ".join(FORMATS)))
    info = get_dataset(family, SYNTHETIC_FAMILIES)._replace(frame_size=image_size)
    split_dir = os.path.join(out_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    _clear_split(split_dir)
    counts = [min(SCENES_PER_SHARD, scenes - start) for start in range(0, scenes, SCENES_PER_SHARD)]
    tasks = [(family, seed, split, index, image_size) for index in range(scenes)]
    pool = multiprocessing.Pool(workers, init_worker, (os.getpid(),)) if workers > 1 else None
    with pool or contextlib.nullcontext():
        rendered = pool.imap(_render_task, tasks, chunksize=4) if pool else map(_render_task, tasks)
        with tqdm(rendered, total=scenes, unit="scene", desc="%s/%s" % (family, split)) as bar:
            shards = _write_shards(split_dir, iter(bar), counts, fmt)
    if fmt == "recordio":
        source = {"kind": "synthetic", "family": family, "seed": seed, "image_size": image_size}
        scene_format.write_manifest(split_dir, scene_format.make_manifest(info, split, shards, source))


def _check_existing(manifest, family, scenes, image_size, seed, split_dir):
    """Raise ValueError when an existing split was made with other settings than asked for."""
    have = (manifest["dataset"], manifest["scene_count"], manifest["frame_size"],
            manifest["source"].get("seed", seed))  # converted TFRecords carry no seed
    want = (family, scenes, image_size, seed)
    if have != want:
        raise ValueError("%s holds (family, scenes, image size, seed) = %s, not the requested %s; "
                         "delete it or choose another root" % (split_dir, have, want))


def ensure_synthetic(root, family="rooms_ring", train_scenes=2000, test_scenes=200, image_size=64,
                     seed=0, workers=None):
    """Make root/{train,test} of synthetic scenes unless their manifests exist; {split: manifest}.

    A split whose manifest is present is checked against the arguments (ValueError on a mismatch)
    and left as it is; a split asked for 0 scenes is skipped. `workers` defaults to all CPUs.
    Use the result with gqn.loader.make_loader(root, split, ...).
    """
    manifests = {}
    for split, scenes in zip(SPLITS, (train_scenes, test_scenes)):
        split_dir = os.path.join(root, split)
        if scenes <= 0:
            continue
        if not os.path.exists(os.path.join(split_dir, scene_format.MANIFEST)):
            write_split(root, family, split, scenes, image_size, seed, "recordio",
                        workers or os.cpu_count())
        manifests[split] = scene_format.read_manifest(split_dir)
        _check_existing(manifests[split], family, scenes, image_size, seed, split_dir)
        if split == "test" and manifests[split]["source"].get("kind") == "synthetic":  # the held-out scenes'
            add_missing_masks(split_dir)  # object figures need them; converted TFRecords have none
    return manifests


def main(argv=None):
    parser = cli.Parser(__doc__)
    parser.add_argument("--dataset", required=True, choices=sorted(SYNTHETIC_FAMILIES), help="synthetic family")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--data-dir", help="data root to write our RecordIO into, as DATA_DIR/NAME-SIZEpx-SCENES")
    out.add_argument("--tfrecord-dir", help="root to write DeepMind's TFRecord layout into, as "
                     "TFRECORD_DIR/NAME-SIZEpx-SCENES (for data/gqn_data_to_recordio.py)")
    parser.add_argument("--train-scenes", type=cli.bounded(int, 1), default=2000,
                        help="training scenes; the test split gets a tenth (default: 2000)")
    parser.add_argument("--image-size", type=cli.bounded(int, 4), default=64, help="frame size (default: 64)")
    cli.add_workers(parser, "render processes")
    args = parser.parse_args(argv)
    fmt = "recordio" if args.data_dir else "tfrecord"
    root = dataset_root(args.data_dir or args.tfrecord_dir, args.dataset, args.image_size, args.train_scenes)
    for split, scenes in zip(SPLITS, (args.train_scenes, synthetic_test_scenes(args.train_scenes))):
        start = time.time()
        write_split(root, args.dataset, split, scenes, args.image_size, 0, fmt, args.workers)
        seconds = time.time() - start
        print("%s %s: %d scenes in %.1f s (%.1f scenes/s) -> %s" % (
            args.dataset, split, scenes, seconds, scenes / seconds, os.path.join(root, split)), file=sys.stderr)


if __name__ == "__main__":
    main()
