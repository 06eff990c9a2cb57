"""Seconds per cpu-demo training step with denormal floats flushed to zero (gqn/cpu.py) and with them kept.

Example: python bench/denormals.py                       (trains its own 250-step model first, ~1 minute)
         python bench/denormals.py --run runs/demo-X     (any run with a checkpoint)
Denormals appear as a model trains, not at initialisation: the default model is the cpu-demo preset at pixel
sigma 2 (no learning-rate warm-up) after 250 steps, where they slowed training about tenfold. Each mode runs in its
own process (the MXCSR bits must be set before MXNet starts its threads), on the same batch, noise and weights;
it also counts the denormal values among the parameter gradients of its last step.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cli, cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed unless GQN_DENORMALS=keep

cpu.setup()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 1.1754944e-38  # the least normal float32


def train_model(run_dir):
    cmd = [sys.executable, os.path.join(ROOT, "train_gqn.py"), "--preset", "cpu-demo", "--sigma-initial", "2",
           "--sigma-final", "2", "--lr-warmup-steps", "0", "--max-steps", "250", "--minutes", "0",
           "--val-every", "100000", "--run-dir", run_dir]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit("bench/denormals.py: training the model failed:\n" + done.stderr[-2000:])


def time_steps(run_dir, steps):
    """In this process: the run's model and Adam state, `steps` training steps on one batch -> a result dict."""
    import mxnet as mx
    import numpy as np
    from mxnet import gluon

    import core
    from gqn import checkpoint, training
    from gqn.runs import load_model, run_dataset_root
    from gqn.schedules import linear_anneal

    ctxs = [mx.cpu()]
    model, state = load_model(run_dir, ctxs[0], core.GQN.from_config)
    config = state["config"]
    trainer = gluon.Trainer(model.collect_params(), "adam")
    trainer.load_states(os.path.join(state["directory"], checkpoint.TRAINER))  # Adam and its moments, as saved
    batch = next(training.training_batches(run_dataset_root(state), config["batch_size"], state["max_context"],
                                           config["seed"], 0, state["step"]))
    sigma = linear_anneal(config["sigma_initial"], config["sigma_final"], config["sigma_steps"])(state["step"])
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        mx.random.seed(0)
        start = time.time()
        training.train_step(model, trainer, batch, ctxs, sigma, config["batch_size"])
        mx.nd.waitall()
        times.append(time.time() - start)
    grads = [p.grad().asnumpy() for p in model.collect_params().values() if p.grad_req != "null"]
    denormal = sum(int(((np.abs(g) < TINY) & (g != 0)).sum()) for g in grads)
    return {"mode": os.environ.get("GQN_DENORMALS", "flush"), "s_per_step": float(np.median(times[2:])),
            "denormal_gradients": denormal, "gradients": sum(g.size for g in grads), "step": state["step"]}


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--run", help="run directory with a checkpoint (default: train the 250-step model)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode (default: 10)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_steps(args.run, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or os.path.join(tmp, "run")
        if not args.run:
            print("training the cpu-demo preset at sigma 2 for 250 steps ...", flush=True)
            train_model(run_dir)
        for mode in ("flush", "keep"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--run", run_dir, "--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True,
                                 env=dict(os.environ, GQN_DENORMALS=mode)).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print("denormals %-5s  step %d  %.3f s/step  denormal gradient values %d of %d (OMP_NUM_THREADS=%s)"
                  % (r["mode"], r["step"], r["s_per_step"], r["denormal_gradients"], r["gradients"],
                     os.environ["OMP_NUM_THREADS"]), flush=True)


if __name__ == "__main__":
    main()
