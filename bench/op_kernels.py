"""Small operators of a cpu-demo step, each way MXNet can run it: forward + backward milliseconds, medians.

Example: python bench/op_kernels.py --repeats 50

Two choices in core.py rest on these figures. Nonlinearities: F.relu, F.sigmoid and F.tanh are MXNet's own
elementwise loops, F.Activation is oneDNN's vectorised eltwise kernel (core._act). Concatenated convolutions:
oneDNN runs a convolution whose input channels are a multiple of its block (8 on AVX2, 16 on AVX-512) on a blocked
JIT kernel, and concat(r, camera)'s 71 channels on an im2col + gemm one (`x64:gemm:jit`); CatConv pads the concat
with zero channels to a multiple of core.BLOCK. Shapes are the cpu-demo preset's at batch 16 with k = 3 views.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cli, cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import statistics  # noqa: E402

import mxnet as mx  # noqa: E402
from mxnet import autograd, nd  # noqa: E402

CELL = (16, 48, 8, 8)  # a ConvLSTM cell's gate map: batch, hidden, h, w
CONVS = [  # (name, batch, channels in: as concatenated, padded to 8, padded to 16; channels out)
    ("Tower skip2: concat(r, camera)", 48, (71, 72, 80), 64),
    ("Tower conv4: concat(r, camera)", 48, (71, 72, 80), 32),
    ("generator gates: concat(camera, r)", 16, (71, 72, 80), 192),
    ("inference gates: concat(x_q, camera, r)", 16, (119, 120, 128), 192),
]


def timed(function, inputs, repeats):
    """Median milliseconds of forward + backward of function(*inputs), after 3 untimed runs."""
    for x in inputs:
        x.attach_grad()
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        with autograd.record():
            y = function(*inputs)
        y.backward()
        nd.waitall()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[3:])


def nonlinearities(repeats):
    x = nd.random.normal(shape=CELL)
    print("nonlinearity on %s, ms fwd+bwd     MXNet op   Activation" % (CELL,))
    for kind in ("relu", "sigmoid", "tanh"):
        own = timed(getattr(nd, kind), [x], repeats)
        onednn = timed(lambda a, kind=kind: nd.Activation(a, act_type=kind), [x], repeats)
        print("  %-38s %9.3f %12.3f" % (kind, own, onednn))


def convolutions(repeats):
    print("\n3x3 conv at 8x8, ms fwd+bwd, by input channels: as concatenated / padded to 8 / padded to 16")
    for name, batch, channels, out in CONVS:
        row = []
        for c in channels:
            x = nd.random.normal(shape=(batch, c, 8, 8))
            w = nd.random.normal(shape=(out, c, 3, 3)) * 0.01
            conv = lambda a, b, out=out: nd.Convolution(a, b, kernel=(3, 3), pad=(1, 1), num_filter=out, no_bias=True)
            row.append("%3d: %6.3f" % (c, timed(conv, [x, w], repeats)))
        print("  %-38s %s" % (name, "   ".join(row)))


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per figure; the median (default: 30)")
    args = parser.parse_args()
    print("%d OpenMP threads, MXNet %s\n" % (int(os.environ["OMP_NUM_THREADS"]), mx.__version__))
    nonlinearities(args.repeats)
    convolutions(args.repeats)


if __name__ == "__main__":
    main()
