"""Where a training step's oneDNN time goes, by primitive, kernel and layout (DNNL_VERBOSE), fp32 or bf16.

Example: python bench/dnnl_profile.py --precision bf16 --batch 2
         python bench/dnnl_profile.py --preset cpu-demo --precision fp32 --batch 16

A subprocess runs two warm-up steps and then one more under oneDNN's verbose log (DNNL_VERBOSE=1, which prints
each primitive with its kernel, layouts and milliseconds); the lines after a marker printed between them are that
step's. Prints the step's wall time against its oneDNN time (the rest is MXNet's own operators, Python and the
engine), the time per (primitive, kernel, propagation), and the slowest (primitive, kernel, layouts, problem)
lines summed over their calls: reorders name their source and destination layouts and types, and a convolution
on `x64:gemm:jit` instead of a blocked `jit` kernel shows its channel counts.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse
import collections
import json
import subprocess

PRESETS = {  # model and batch of the configurations the benchmarks compare
    "paper": dict(image_size=64, steps=12, latent=64, hidden=128, r_channels=256, kernel=5, context=5),
    "cpu-demo": dict(image_size=32, steps=4, latent=16, hidden=48, r_channels=64, kernel=3, context=5),
}

STEP = r"""
import os, sys, time, json
sys.path.insert(0, %(root)r)
from gqn import cpu
cpu.setup()
import mxnet as mx
from mxnet import gluon
import core
from gqn import amp, training
from gqn.loader import Batch
p = json.loads(%(preset)r)
if %(bf16)r:
    amp.init(mx.cpu())
config = core.ModelConfig(image_size=p["image_size"], steps=p["steps"], latent=p["latent"], hidden=p["hidden"],
                          r_channels=p["r_channels"], kernel=p["kernel"], canvas_to_inference=%(canvas)r)
mx.random.seed(0)
model = core.GQN(config)
model.initialize(mx.init.Xavier())
model.hybridize(static_alloc=True, static_shape=True)
trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 5e-4})
B, K, S = %(batch)d, p["context"], p["image_size"]
nd = mx.nd
batch = Batch(nd.random.uniform(shape=(B, K, 3, S, S)), nd.random.normal(shape=(B, K, 7)), nd.ones((B, K)),
              nd.random.normal(shape=(B, 7)), nd.random.uniform(shape=(B, 3, S, S)))
for _ in range(2):
    training.train_step(model, trainer, batch, [mx.cpu()], 2.0, B)
    nd.waitall()
sys.stdout.flush()
print("@@@ START", flush=True)
start = time.perf_counter()
training.train_step(model, trainer, batch, [mx.cpu()], 2.0, B)
nd.waitall()
print("@@@ WALL %%f" %% (time.perf_counter() - start), flush=True)
"""


def run_step(args):
    """-> (verbose lines of the profiled step, its wall seconds)."""
    preset = PRESETS[args.preset]
    code = STEP % dict(root=ROOT, preset=json.dumps(preset), bf16=args.precision == "bf16", batch=args.batch,
                       canvas=bool(args.canvas_read))
    env = dict(os.environ, DNNL_VERBOSE="1", MKLDNN_VERBOSE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    lines = out.splitlines()
    begin = lines.index("@@@ START")
    wall = float([l for l in lines if l.startswith("@@@ WALL")][0].split()[-1])
    return [l for l in lines[begin:] if l.startswith("dnnl_verbose,exec")], wall


def parse(line):
    """A `dnnl_verbose,exec,...` line -> (primitive, kernel, propagation, layouts, problem, milliseconds)."""
    f = line.split(",")
    return f[3], f[4], f[5], " ".join(f[6].split()), f[-2], float(f[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False, epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="model sizes (default: paper)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="(default: bf16)")
    parser.add_argument("--batch", type=int, default=2, help="scenes per step (default: 2)")
    parser.add_argument("--canvas-read", type=int, default=0, choices=[0, 1],
                        help="inference core reads the canvas (default: 0, as the PyTorch reference)")
    parser.add_argument("--top", type=int, default=25, help="individual lines listed (default: 25)")
    args = parser.parse_args()
    lines, wall = run_step(args)
    rows = [parse(l) for l in lines]
    total = sum(r[-1] for r in rows) / 1e3
    print("%s, batch %d, %s: step %.3f s wall, %.3f s in %d oneDNN primitives, %.3f s elsewhere\n"
          % (args.preset, args.batch, args.precision, wall, total, len(rows), wall - total))
    by_kernel = collections.defaultdict(lambda: [0.0, 0])
    for prim, kernel, prop, _, _, ms in rows:
        by_kernel[(prim, kernel, prop)][0] += ms / 1e3
        by_kernel[(prim, kernel, prop)][1] += 1
    print("%-14s %-34s %-18s %8s %6s" % ("primitive", "kernel", "propagation", "s", "calls"))
    for (prim, kernel, prop), (s, n) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0]):
        print("%-14s %-34s %-18s %8.3f %6d" % (prim, kernel, prop, s, n))
    by_line = collections.defaultdict(lambda: [0.0, 0])
    for prim, kernel, prop, layouts, problem, ms in rows:
        by_line[(prim, kernel, prop, layouts, problem)][0] += ms / 1e3
        by_line[(prim, kernel, prop, layouts, problem)][1] += 1
    print("\nslowest (primitive, kernel, layouts, problem), summed over calls:")
    for key, (s, n) in sorted(by_line.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print("%7.3f s %5d x  %s" % (s, n, "  ".join(key)))


if __name__ == "__main__":
    main()
