"""Scenes per second of the data loader (64x64, batch 36, max_context 5) with 0 and 2 workers.

    python bench/bench_loader.py [--scenes 720] [--batches 40]

Makes synthetic rooms_ring shards in a temporary directory first. Training at batch 36 takes about
13 s a step on this CPU, i.e. ~3 scenes/s; the loader should be far above 5x that (15 scenes/s).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gqn import loader, synthetic  # noqa: E402  (needs the repository root on sys.path)

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=720, help="synthetic scenes (default: 720)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches (default: 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        synthetic.write_split(root, "rooms_ring", "train", args.scenes, SIZE, workers=2)
        for workers in (0, 2):
            rate = scenes_per_second(root, workers, args.batches)
            print("loader %dx%d batch %d max_context %d num_workers %d: %.0f scenes/s"
                  % (SIZE, SIZE, BATCH, MAX_CONTEXT, workers, rate))


if __name__ == "__main__":
    main()
