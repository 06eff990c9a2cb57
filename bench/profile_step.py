"""Where a training step's time goes, by MXNet's profiler, at the paper config; and conv GFLOP/s against this CPU's peak.

Example: python bench/profile_step.py --batch 8 --steps 3

Operators run unbulked (MXNET_EXEC_BULK_EXEC_TRAIN=0) so the profiler times each one. Prints the top operators,
the shares of convolution (forward + backward), the LSTM gates' elementwise work and everything else, the
host overhead (wall time the CPU spent outside operators: Python, the engine, waiting), and achieved conv
GFLOP/s (analytic FLOPs of the model's convolutions, bench/flops.py) against two micro benchmarks run here:
an fp32 sgemm (numpy) and one of the model's 5x5 gate convolutions forward + backward (MXNet).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cli, cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()
os.environ["MXNET_EXEC_BULK_EXEC_TRAIN"] = "0"

import argparse
import json
import time

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

import core  # noqa: E402
import flops  # noqa: E402

CONV = {"Convolution", "_backward_Convolution"}
# The ConvLSTM cells' elementwise work: gate split, sigmoid/tanh (Activation, core._act; the named ops under
# AMP), products and sums of the cell update, the input concat (with core._concat's expand_dims/reshape), and
# their backward passes (a few of these ops also serve the KL, the loss and the tower: its relu is Activation too).
GATES = {"Activation", "_backward_Activation", "sigmoid", "tanh", "_backward_sigmoid", "_backward_tanh",
         "elemwise_mul", "elemwise_add", "_backward_mul", "_backward_add", "_grad_add", "SliceChannel",
         "_backward_SliceChannel", "Concat", "_backward_Concat", "ElementWiseSum", "add_n", "expand_dims",
         "_backward_expand_dims", "Reshape", "_backward_reshape", "_backward_copy"}


def train_steps(model, trainer, config, batch, context, steps):
    """Run `steps` training steps on random data -> wall seconds."""
    nd, size = mx.nd, config.image_size // 4
    inputs = [nd.random.uniform(shape=(batch, context, 3, 64, 64)), nd.random.normal(shape=(batch, context, 7)),
              nd.ones((batch, context)), nd.random.normal(shape=(batch, 7))]
    target = nd.random.uniform(shape=(batch, 3, 64, 64))
    nd.waitall()
    start = time.perf_counter()
    for _ in range(steps):
        noise = nd.random.normal(shape=(batch, config.steps, config.latent, size, size))
        with autograd.record():
            mean, kl = model(*inputs, noise, target)
            loss = core.gaussian_nll(nd, target, mean, 2.0) + kl
        loss.backward()
        trainer.step(batch)
        nd.waitall()
    return time.perf_counter() - start


def sgemm_gflops(n=2048, repeats=5):
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def gate_conv_gflops(batch, repeats=5):
    """One inference-core gate conv of the model (256 -> 512 channels, 5x5, 16x16), forward + backward."""
    x = mx.nd.random.normal(shape=(batch, 256, 16, 16))
    w = mx.nd.random.normal(shape=(512, 256, 5, 5)) * 0.01
    x.attach_grad()
    w.attach_grad()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with autograd.record():
            y = mx.nd.Convolution(x, w, kernel=(5, 5), pad=(2, 2), num_filter=512, no_bias=True)
        y.backward()
        mx.nd.waitall()
        times.append(time.perf_counter() - start)
    return 3 * 2 * batch * 256 * 512 * 25 * 256 / min(times[1:]) / 1e9


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--batch", type=int, default=8, help="scenes per step (default: 8)")
    parser.add_argument("--context", type=int, default=5, help="context views per scene (default: 5)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps, after 2 warm-up steps (default: 3)")
    parser.add_argument("--canvas-read", action=argparse.BooleanOptionalAction, default=False,
                        help="inference core reads the canvas; off (the default) matches the PyTorch reference port")
    parser.add_argument("--top", type=int, default=15, help="operators listed (default: 15)")
    args = parser.parse_args()

    config = core.ModelConfig(canvas_to_inference=args.canvas_read)
    mx.random.seed(0)
    model = core.GQN(config)
    model.initialize(mx.init.Xavier())
    conv = flops.conv_flops(model, config, args.batch, args.context)
    model.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 5e-4})
    train_steps(model, trainer, config, args.batch, args.context, 2)

    mx.profiler.set_config(profile_symbolic=True, profile_imperative=True, profile_memory=False, profile_api=False,
                           aggregate_stats=True, filename="/dev/null")
    mx.profiler.set_state("run")
    wall = train_steps(model, trainer, config, args.batch, args.context, args.steps)
    mx.profiler.set_state("stop")
    ops = json.loads(mx.profiler.dumps(format="json"))["Time"]["operator"]
    report(ops, wall, conv, args)


def report(ops, wall, conv, args):
    n = args.steps
    total = {name: stat["Total"] / 1e3 / n for name, stat in ops.items()}  # seconds per step
    op_time = sum(total.values())
    step = wall / n
    print("paper config, batch %d, K %d, canvas read %d, fp32, %d OpenMP threads: %.2f s/step over %d steps\n"
          % (args.batch, args.context, args.canvas_read, int(os.environ["OMP_NUM_THREADS"]), step, n))
    print("%-32s %9s %7s %8s" % ("top operators", "s/step", "share", "calls"))
    for name in sorted(total, key=total.get, reverse=True)[:args.top]:
        print("%-32s %9.3f %6.1f%% %8d" % (name, total[name], 100 * total[name] / step, ops[name]["Count"] // n))
    conv_time = sum(t for name, t in total.items() if name in CONV)
    gate_time = sum(t for name, t in total.items() if name in GATES)
    print("\n%-32s %9s %7s" % ("where the step goes", "s/step", "share"))
    for label, seconds in (("convolution (fwd + bwd)", conv_time), ("LSTM gates: elementwise, concat", gate_time),
                           ("other operators", op_time - conv_time - gate_time),
                           ("host overhead (wall - operators)", step - op_time)):
        print("%-32s %9.3f %6.1f%%" % (label, seconds, 100 * seconds / step))
    conv_flop = conv["forward"] + conv["backward"]
    sgemm, gate_conv = sgemm_gflops(), gate_conv_gflops(args.batch)
    print("\nconv FLOPs per step (analytic, %d convolutions): %.3f TFLOP" % (conv["convolutions"], conv_flop / 1e12))
    print("achieved: %.0f GFLOP/s inside convolutions, %.0f GFLOP/s over the whole step"
          % (conv_flop / conv_time / 1e9, conv_flop / step / 1e9))
    print("this CPU: %.0f GFLOP/s fp32 sgemm 2048^3 (numpy), %.0f GFLOP/s one 5x5 256->512 gate conv fwd+bwd (MXNet)"
          % (sgemm, gate_conv))


if __name__ == "__main__":
    main()
