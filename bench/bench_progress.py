"""How honest train_gqn.py's progress bar is, and what counting finished steps costs, on the cpu-demo preset.

Examples:
  python bench/bench_progress.py --minutes 4                 (both parts; renders the demo's scenes on first use)
  python bench/bench_progress.py --minutes 0 --rounds 6      (only the cost of waiting for each step's loss)

Part 1, cost: seconds per training step of the cpu-demo model when the host waits for the previous step's loss
before queuing the next (what the bar does) and when it syncs only every 25th step (log steps), in interleaved
rounds; medians and ranges. Part 2, honesty: runs `train_gqn.py --preset cpu-demo --minutes M`, reads the bar as
a user sees it (elapsed, remaining, rate at every refresh) and compares its rate with the run's true mean rate
and its predicted end with the true end, at each refresh with at least 30 s left.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cli, cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import mxnet as mx  # noqa: E402
from mxnet import gluon  # noqa: E402

import core  # noqa: E402
from gqn import training  # noqa: E402
from gqn.datasets import dataset_root  # noqa: E402
from gqn.presets import PRESETS  # noqa: E402
from gqn.runs import ensure_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = PRESETS["cpu-demo"]
BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<(?:(?:(\d+):)?(\d+):(\d+)|\?), *([\d.]+|\?)(s/step|step/s)")


def seconds_per_step(model, trainer, batches, ctx, steps, wait):
    """Mean s/step over `steps` steps; wait: sync on the previous step's loss each step, else every 25th."""
    previous = None
    mx.nd.waitall()
    start = time.time()
    for step in range(1, steps + 1):
        terms = training.train_step(model, trainer, next(batches), [ctx], DEMO["sigma_initial"], DEMO["batch_size"])
        if wait and previous is not None:
            previous[0]["elbo"].wait_to_read()
        if step % DEMO["log_every"] == 0:
            training.mean_terms(terms)
        previous = terms
    mx.nd.waitall()
    return (time.time() - start) / steps


def cost(data_dir, rounds, steps):
    root = dataset_root(data_dir, DEMO["dataset"], DEMO["image_size"], DEMO["train_scenes"])
    ensure_dataset(root, DEMO["dataset"], DEMO["image_size"], DEMO["train_scenes"], ["train", "test"], 2)
    model_config = core.ModelConfig(**{k: v for k, v in DEMO.items() if k in core.ModelConfig.__annotations__})
    ctx = mx.cpu()
    mx.random.seed(0)
    model = core.GQN(model_config)  # as train_gqn.py builds it: Xavier, hybridized, Adam
    model.initialize(mx.init.Xavier(), ctx=ctx)
    model.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": DEMO["lr_initial"]})
    batches = training.training_batches(root, DEMO["batch_size"], DEMO["max_context"], 0, 2, 0)
    seconds_per_step(model, trainer, batches, ctx, steps, False)  # warm-up: graph building, allocation
    times = {True: [], False: []}
    for _ in range(rounds):
        for wait in (False, True):
            times[wait].append(seconds_per_step(model, trainer, batches, ctx, steps, wait))
    for wait in (False, True):
        print("%-40s median %.4f s/step, range %.4f-%.4f over %d rounds of %d steps"
              % ("wait for each step's loss" if wait else "sync on log steps only", statistics.median(times[wait]),
                 min(times[wait]), max(times[wait]), rounds, steps))


def bar_readings(stderr):
    """[(elapsed s, remaining s or None, n, rate steps/s or None)] at every refresh of the bar."""
    readings = []
    for piece in re.split(r"[\r\n]", stderr):
        found = BAR.search(piece)
        if not found or "scene" in piece:
            continue
        n, _, eh, em, es, rh, rm, rs, rate, unit = found.groups()
        elapsed = int(eh or 0) * 3600 + int(em) * 60 + int(es)
        remaining = None if rm is None else int(rh or 0) * 3600 + int(rm) * 60 + int(rs)
        speed = None if rate == "?" else (float(rate) if unit == "step/s" else 1 / float(rate))
        readings.append((elapsed, remaining, int(n), speed))
    return readings


def honesty(data_dir, minutes):
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, os.path.join(ROOT, "train_gqn.py"), "--preset", "cpu-demo", "--data-dir", data_dir,
               "--run-dir", os.path.join(run, "run"), "--minutes", str(minutes)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    readings = bar_readings(done.stderr)
    end, steps = readings[-1][0], readings[-1][2]
    true_rate = steps / end
    print("run: %d steps in %d s of bar time: true mean rate %.2f steps/s" % (steps, end, true_rate))
    worst_rate = worst_end = 0.0
    for elapsed, remaining, n, rate in readings:
        if remaining is None or rate is None or end - elapsed < 30 or elapsed < 30:
            continue
        worst_rate = max(worst_rate, abs(rate / true_rate - 1))
        worst_end = max(worst_end, abs(remaining - (end - elapsed)) / (end - elapsed))
        if elapsed % 30 == 0:
            print("  at %4d s: step %5d, bar rate %.2f steps/s, bar says %4d s left, truly %4d s left"
                  % (elapsed, n, rate, remaining, end - elapsed))
    print("worst over every refresh from 30 s in to 30 s before the end: rate off by %.0f%%, time left off by %.0f%%"
          % (100 * worst_rate, 100 * worst_end))


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "datasets"),
                        help="data root of the cpu-demo scenes (default: the repository's datasets/)")
    parser.add_argument("--rounds", type=cli.bounded(int, 0), default=4,
                        help="interleaved cost rounds; 0 = skip the cost (default: 4)")
    parser.add_argument("--steps", type=cli.bounded(int, 1), default=50, help="steps per round (default: 50)")
    parser.add_argument("--minutes", type=cli.bounded(float, 0), default=4.0,
                        help="length of the honesty run; 0 = skip it (default: 4)")
    args = parser.parse_args()
    if args.rounds:
        cost(args.data_dir, args.rounds, args.steps)
    if args.minutes:
        honesty(args.data_dir, args.minutes)


if __name__ == "__main__":
    main()
