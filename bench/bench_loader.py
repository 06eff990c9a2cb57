"""Scenes per second of the data loader (64x64, batch 36, max_context 5), and of its JPEG decoders side by side.

Examples:
  python bench/bench_loader.py                          (the loader with 0 and 2 workers, then the decoders)
  python bench/bench_loader.py --batches 0 --rounds 9   (the decoders only)

Makes synthetic rooms_ring shards in a temporary directory first. Training at batch 36 takes about
13 s a step on this CPU, i.e. ~3 scenes/s; the loader should be far above 5x that (15 scenes/s).
The decoders (OpenCV's cv2.imdecode, PIL, MXNet's mx.image.imdecode) decode the same frames in interleaved
rounds; each must give the same pixels as the loader's own decode_frames.
"""
import io
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gqn import cli, loader, synthetic  # noqa: E402  (needs the repository root on sys.path)

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

BATCH, MAX_CONTEXT, SIZE = 36, 5, 64


def scenes_per_second(root, num_workers, batches):
    """Scenes/s over `batches` batches (epochs repeat as needed), after one warm-up batch."""
    data = loader.make_loader(root, "train", BATCH, MAX_CONTEXT, num_workers=num_workers)
    seen, start = -1, None
    while seen < batches:
        for batch in data:
            batch.target.wait_to_read()
            if seen < 0:
                start = time.time()  # the first batch pays for starting the worker threads
            seen += 1
            if seen == batches:
                break
    return batches * BATCH / (time.time() - start)


def decoders():
    """{name: JPEG bytes -> uint8 RGB (H, W, 3)}; cv2 only where OpenCV is installed."""
    found = {"PIL": lambda j: np.asarray(Image.open(io.BytesIO(j)).convert("RGB")),
             "mx.image.imdecode": lambda j: mx.image.imdecode(j).asnumpy()}
    try:
        import cv2
        found["cv2.imdecode"] = lambda j: cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    except ImportError:
        pass
    return found


def compare_decoders(root, rounds):
    jpegs = [frame for index in range(40) for frame in loader.SceneDataset(root, "train")[index][0]]
    want = loader.decode_frames(jpegs)
    times = {name: [] for name in decoders()}
    for name, decode in decoders().items():
        same = np.array_equal(np.stack([decode(j) for j in jpegs]), want)
        print("%-18s same pixels as gqn.loader.decode_frames: %s" % (name, same))
    for _ in range(rounds):
        for name, decode in decoders().items():
            start = time.time()
            for j in jpegs:
                decode(j)
            times[name].append(len(jpegs) / (time.time() - start))
    for name, rates in times.items():
        print("%-18s %6.0f frames/s median, range %.0f-%.0f over %d interleaved rounds of %d %dx%d frames"
              % (name, statistics.median(rates), min(rates), max(rates), rounds, len(jpegs), SIZE, SIZE))


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--scenes", type=cli.bounded(int, 40), default=720, help="synthetic scenes (default: 720)")
    parser.add_argument("--batches", type=cli.bounded(int, 0), default=40,
                        help="timed loader batches; 0 = skip the loader (default: 40)")
    parser.add_argument("--rounds", type=cli.bounded(int, 0), default=7,
                        help="interleaved decoder rounds; 0 = skip the decoders (default: 7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        synthetic.write_split(root, "rooms_ring", "train", args.scenes, SIZE, workers=2)
        for workers in (0, 2) if args.batches else ():
            rate = scenes_per_second(root, workers, args.batches)
            print("loader %dx%d batch %d max_context %d num_workers %d: %.0f scenes/s"
                  % (SIZE, SIZE, BATCH, MAX_CONTEXT, workers, rate))
        if args.rounds:
            compare_decoders(root, args.rounds)


if __name__ == "__main__":
    main()
