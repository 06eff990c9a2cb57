"""Seconds per training step, samples/s, conv GFLOP/s and peak RSS of GQN at the paper config (Tower, L=12, 64x64, K=5).

Example: python bench/bench_step.py --batch 8 36 --repeats 5 --precision fp32 bf16 --loader
         python bench/bench_step.py --preset cpu-demo --batch 16 --canvas-read --ray-depths 12   (train_gqn.py's
         cpu-demo model; without --ray-depths, its network without the ray volume, as the PyTorch reference)
Each (batch, precision) runs in its own process so that peak RSS is that configuration's alone. bf16 is
mx.contrib.amp through gqn/amp.py; a CPU without bf16 kernels gets a row saying why instead of a time.
--loader adds bench/bench_loader.py's scenes/s of the data loader.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cli, cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import argparse
import json
import resource
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(args):
    """Time `args.repeats` training steps of one configuration in this process; print one JSON line."""
    sys.path.insert(0, ROOT)
    import mxnet as mx
    from mxnet import gluon
    import core
    from gqn import amp, training
    from gqn.loader import Batch
    import flops
    B, K, precision = args.batch[0], args.context, args.precision[0]
    row = {"batch": B, "preset": args.preset, "precision": precision, "canvas_read": args.canvas_read,
           "alloc": "dynamic" if args.dynamic_alloc else "static", "micro_batch": args.micro_batch}
    if precision == "bf16":
        try:
            amp.init(mx.cpu())
        except amp.AmpUnsupported as error:
            print(json.dumps(dict(row, error=str(error))))
            return
    config = model_config(args.preset, shared_cores=not args.unshared, canvas_to_inference=bool(args.canvas_read),
                          ray_depths=args.ray_depths)
    S = config.image_size
    mx.random.seed(0)
    model = core.GQN(config, mixed_precision=amp.enabled())
    model.initialize(mx.init.Xavier())
    conv = flops.conv_flops(model, config, args.micro_batch or B, K)
    model.hybridize(static_alloc=not args.dynamic_alloc, static_shape=not args.dynamic_alloc)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 5e-4})
    amp.init_trainer(trainer)
    nd = mx.nd
    batch = Batch(nd.random.uniform(shape=(B, K, 3, S, S)), nd.random.normal(shape=(B, K, 7)), nd.ones((B, K)),
                  nd.random.normal(shape=(B, 7)), nd.random.uniform(shape=(B, 3, S, S)))
    training.accumulate_gradients(model, B, args.micro_batch)
    times = []
    for i in range(args.warmup + args.repeats):
        start = time.perf_counter()
        training.train_step(model, trainer, batch, [mx.cpu()], 2.0, B, args.micro_batch)  # the real step
        nd.waitall()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    conv = {name: value * B // (args.micro_batch or B) for name, value in conv.items()}  # FLOPs of all passes
    step = statistics.median(times)
    print(json.dumps(dict(row, s_per_step=step, samples_per_s=B / step, min=min(times), max=max(times),
                          conv_gflop=(conv["forward"] + conv["backward"]) / 1e9,
                          peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)))


def model_config(preset, **overrides):
    """core.ModelConfig of the paper, or of train_gqn.py's cpu-demo preset, with `overrides` (the network sizes:
    the ray volume only where `ray_depths` is given, as the PyTorch reference has none)."""
    import core
    from gqn.presets import PRESETS
    values = dict({} if preset == "paper" else PRESETS[preset], ray_depths=0)
    return core.ModelConfig(**dict({k: v for k, v in values.items() if k in core.ModelConfig.__annotations__},
                                   **overrides))


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--preset", choices=["paper", "cpu-demo"], default="paper",
                        help="model sizes: the paper's, or train_gqn.py --preset cpu-demo's (default: paper)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 36], help="batch sizes (default: 8 36)")
    parser.add_argument("--context", type=int, default=5, help="context views per scene (default: 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--canvas-read", action=argparse.BooleanOptionalAction, default=False,
                        help="inference core reads the canvas; off (the default) matches the PyTorch reference port")
    parser.add_argument("--unshared", action="store_true", help="one core per step (default: shared)")
    parser.add_argument("--ray-depths", type=cli.bounded(int, 0), default=0,
                        help="the generator's ray volume at D depths (train_gqn.py --ray-depths; default: 0 = off, "
                             "as the PyTorch reference)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="fp32 and/or bf16 (AMP) rows (default: fp32)")
    parser.add_argument("--amp", action="store_true", help="same as --precision bf16")
    parser.add_argument("--loader", action="store_true", help="also print bench/bench_loader.py's scenes/s")
    parser.add_argument("--dynamic-alloc", action="store_true",
                        help="hybridize without static_alloc/static_shape (less memory; default: static)")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="scenes per forward/backward pass, gradients summed (train_gqn.py --micro-batch; "
                             "default: 0 = the whole batch)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args)
    if args.amp:
        args.precision = ["bf16"]
    print("%6s %9s %8s %10s %11s %12s %9s  (%s allocation%s)" % (
        "batch", "precision", "s/step", "samples/s", "range", "conv GFLOP/s", "peak RSS",
        "dynamic" if args.dynamic_alloc else "static",
        ", passes of %d scenes" % args.micro_batch if args.micro_batch else ""))
    for batch in args.batch:
        for precision in args.precision:
            r = run_subprocess(args, batch, precision)
            if "error" in r:
                print("%6d %9s   not run: %s" % (batch, precision, r["error"]))
                continue
            print("%6d %9s %8.2f %10.2f %5.2f-%5.2f %12.0f %6.2f GB"
                  % (batch, precision, r["s_per_step"], r["samples_per_s"], r["min"], r["max"],
                     r["conv_gflop"] / r["s_per_step"], r["peak_rss_gb"]))
    if args.loader:
        loader = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_loader.py")], check=True,
                                capture_output=True, text=True)
        print(loader.stdout.strip())


def run_subprocess(args, batch, precision):
    cmd = [sys.executable, __file__, "--one", "--preset", args.preset, "--batch", str(batch),
           "--context", str(args.context), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--canvas-read" if args.canvas_read else "--no-canvas-read",
           "--precision", precision]
    cmd += ["--unshared"] if args.unshared else []
    cmd += ["--ray-depths", str(args.ray_depths)]
    cmd += ["--dynamic-alloc"] if args.dynamic_alloc else []
    cmd += ["--micro-batch", str(args.micro_batch)] if args.micro_batch else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


if __name__ == "__main__":
    main()
