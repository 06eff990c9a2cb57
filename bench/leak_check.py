"""Resident memory over many training steps of a small GQN, to show it stays flat (no leak).

Example: python bench/leak_check.py --steps 1000 --every 100

Each step draws a new context size (the mask changes, shapes do not), new noise and a new batch, then runs
forward, backward and Adam on the hybridized, statically allocated model, with a host sync on log steps only,
as train_gqn.py does. Prints RSS every --every steps and the growth after the first report (warm-up).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cli, cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import time

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

import core  # noqa: E402

SMALL = dict(image_size=32, steps=4, hidden=32, latent=16, r_channels=32)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def batch_of(rng, config, batch, context):
    size = config.image_size
    mask = np.zeros((batch, context), np.float32)
    mask[:, :rng.randint(1, context + 1)] = 1  # a new context size each step, as the loader draws
    arrays = (rng.uniform(size=(batch, context, 3, size, size)), rng.normal(size=(batch, context, 7)), mask,
              rng.normal(size=(batch, 7)), rng.uniform(size=(batch, 3, size, size)))
    return [mx.nd.array(a, dtype="float32") for a in arrays]


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    parser.add_argument("--every", type=int, default=100, help="report RSS every this many steps (default: 100)")
    parser.add_argument("--batch", type=int, default=8, help="scenes per step (default: 8)")
    parser.add_argument("--context", type=int, default=5, help="context views per scene (default: 5)")
    args = parser.parse_args()
    config = core.ModelConfig(**SMALL)
    mx.random.seed(0)
    rng = np.random.RandomState(0)
    model = core.GQN(config)
    model.initialize(mx.init.Xavier())
    model.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 5e-4})
    state = config.image_size // 4
    print("small config %s, batch %d, K %d" % (SMALL, args.batch, args.context))
    first, start = None, time.time()
    for step in range(1, args.steps + 1):
        *inputs, target = batch_of(rng, config, args.batch, args.context)
        noise = mx.nd.random.normal(shape=(args.batch, config.steps, config.latent, state, state))
        with autograd.record():
            mean, kl = model(*inputs, noise, target)
            loss = core.gaussian_nll(mx.nd, target, mean, 1.0) + kl
        loss.backward()
        trainer.step(args.batch)
        if step % args.every == 0:
            elbo = loss.mean().asscalar()  # the one host sync, on log steps only
            rss = rss_mb()
            first = rss if first is None else first
            print("step %5d  RSS %7.1f MB  (%+6.1f MB since step %d)  elbo %.1f  %.1f s"
                  % (step, rss, rss - first, args.every, elbo, time.time() - start), flush=True)


if __name__ == "__main__":
    main()
