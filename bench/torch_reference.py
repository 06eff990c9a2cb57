"""The GQN paper model as the public PyTorch port builds it, timed like bench/bench_step.py, for a like-with-like baseline.

Run it with PyTorch from its own virtual environment; torch is not a dependency of this project:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python bench/torch_reference.py --batch 8 36 --repeats 3

The model (own code, no project imports): Tower representation (r 256) summed over 5 context views; one shared
generator ConvLSTM and one shared inference ConvLSTM (5x5, hidden 128) run for L = 12 steps on a 16x16 state;
latent 64; each core convolves concat(inputs, h) with four 5x5 convs (one per gate) every step, constant inputs
included; the canvas u (128 x 64 x 64) gets a 4x4 stride-4 ConvTranspose2d of h_g each step; the inference core
sees h_g, the query image through a 4x4 stride-4 conv, v_q and r (not the canvas); 5x5 prior and posterior
heads; a 1x1 conv on u and a sigmoid give the mean image; loss = Gaussian NLL (sigma 2.0) + KL; Adam.
--preset cpu-demo builds the same model at train_gqn.py's cpu-demo sizes (32x32, r 64, hidden 48, latent 16,
L 4, 3x3 kernels). --precision bf16 runs the forward pass and the loss under torch.autocast("cpu",
dtype=torch.bfloat16), as a PyTorch user would; parameters, gradients and Adam stay fp32.
Each batch size runs in its own process so that its peak RSS is its own. --flops prints the analytic count.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

VIEWS, CAMERA = 5, 7
PRESETS = {  # image size, r channels, hidden, latent, L, core kernel
    "paper": dict(SIZE=64, R=256, HIDDEN=128, LATENT=64, STEPS=12, KERNEL=5),
    "cpu-demo": dict(SIZE=32, R=64, HIDDEN=48, LATENT=16, STEPS=4, KERNEL=3),
}


def use_preset(name):
    """Set the module's sizes (read by build() and step_flops()) to those of `name`."""
    global SIZE, R, HIDDEN, LATENT, STEPS, KERNEL, STATE
    p = PRESETS[name]
    SIZE, R, HIDDEN, LATENT, STEPS, KERNEL = p["SIZE"], p["R"], p["HIDDEN"], p["LATENT"], p["STEPS"], p["KERNEL"]
    STATE = SIZE // 4  # h = w


use_preset("paper")


def build(torch, x_channels):
    """-> the model class, built lazily so that --flops needs no torch."""
    nn, F = torch.nn, torch.nn.functional

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.skip1 = nn.Conv2d(3, R, 2, 2), nn.Conv2d(R, R, 2, 2)
            self.conv2, self.conv3 = nn.Conv2d(R, R // 2, 3, padding=1), nn.Conv2d(R // 2, R, 2, 2)
            self.skip2 = nn.Conv2d(R + CAMERA, R, 3, padding=1)
            self.conv4 = nn.Conv2d(R + CAMERA, R // 2, 3, padding=1)
            self.conv5, self.conv6 = nn.Conv2d(R // 2, R, 3, padding=1), nn.Conv2d(R, R, 1)

        def forward(self, x, v):                                   # (N, 3, 64, 64), (N, 7)
            x = F.relu(self.conv1(x))                              # (N, R, 32, 32)
            x = F.relu(self.conv3(F.relu(self.conv2(x)))) + F.relu(self.skip1(x))  # (N, R, 16, 16)
            x = torch.cat([x, v[:, :, None, None].expand(-1, -1, STATE, STATE)], 1)
            x = F.relu(self.conv5(F.relu(self.conv4(x)))) + F.relu(self.skip2(x))
            return F.relu(self.conv6(x))                           # (N, R, 16, 16)

    class ConvLSTMCell(nn.Module):
        def __init__(self, in_channels):
            super().__init__()
            gate = lambda: nn.Conv2d(in_channels + HIDDEN, HIDDEN, KERNEL, padding=KERNEL // 2)
            self.forget, self.input, self.output, self.state = gate(), gate(), gate(), gate()

        def forward(self, x, h, c):
            x = torch.cat([h, x], 1)
            c = torch.sigmoid(self.forget(x)) * c + torch.sigmoid(self.input(x)) * torch.tanh(self.state(x))
            return torch.sigmoid(self.output(x)) * torch.tanh(c), c

    class GQN(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = Tower()
            self.downsample = nn.Conv2d(3, x_channels, 4, 4, bias=False)
            self.upsample = nn.ConvTranspose2d(HIDDEN, HIDDEN, 4, 4, bias=False)
            self.inference = ConvLSTMCell(HIDDEN + x_channels + CAMERA + R)
            self.generator = ConvLSTMCell(LATENT + CAMERA + R)
            self.prior = nn.Conv2d(HIDDEN, 2 * LATENT, KERNEL, padding=KERNEL // 2)
            self.posterior = nn.Conv2d(HIDDEN, 2 * LATENT, KERNEL, padding=KERNEL // 2)
            self.eta = nn.Conv2d(HIDDEN, 3, 1)

        def forward(self, frames, cameras, query_camera, target):  # (B, K, 3, H, W), (B, K, 7), (B, 7), (B, 3, H, W)
            B, K = cameras.shape[:2]
            r = self.tower(frames.flatten(0, 1), cameras.flatten(0, 1)).view(B, K, R, STATE, STATE).sum(1)
            v = query_camera[:, :, None, None].expand(-1, -1, STATE, STATE)
            x = self.downsample(target)
            h_g, c_g, h_e, c_e = (target.new_zeros(B, HIDDEN, STATE, STATE) for _ in range(4))
            u = target.new_zeros(B, HIDDEN, SIZE, SIZE)
            kl = 0
            for _ in range(STEPS):
                p_mu, p_raw = self.prior(h_g).chunk(2, 1)
                h_e, c_e = self.inference(torch.cat([h_g, x, v, r], 1), h_e, c_e)
                q_mu, q_raw = self.posterior(h_e).chunk(2, 1)
                p_sd, q_sd = F.softplus(p_raw) + 1e-4, F.softplus(q_raw) + 1e-4
                z = q_mu + q_sd * torch.randn_like(q_sd)
                h_g, c_g = self.generator(torch.cat([z, v, r], 1), h_g, c_g)
                u = u + self.upsample(h_g)
                kl = kl + (torch.log(p_sd / q_sd) + (q_sd ** 2 + (q_mu - p_mu) ** 2) / (2 * p_sd ** 2) - 0.5).sum((1, 2, 3))
            return torch.sigmoid(self.eta(u)), kl

    return GQN


def gaussian_nll(target, mean, sigma):
    return ((target - mean) ** 2 / (2 * sigma ** 2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))


def conv_flops(n, cin, cout, k, out_hw):
    """Multiply-adds x 2 of one convolution's forward pass."""
    return 2 * n * cin * cout * k * k * out_hw


def step_flops(batch, x_channels):
    """Analytic FLOPs of one training step: each conv's forward, plus twice that for its backward (data and
    weight gradients; conv1's data gradient, which nothing needs, is left out). Elementwise work is not counted."""
    n, hw = batch * VIEWS, STATE * STATE
    half = (SIZE // 2) ** 2
    tower = [(3, R, 2, half), (R, R, 2, hw), (R, R // 2, 3, half), (R // 2, R, 2, hw), (R + CAMERA, R, 3, hw),
             (R + CAMERA, R // 2, 3, hw), (R // 2, R, 3, hw), (R, R, 1, hw)]
    fwd = sum(conv_flops(n, *c) for c in tower)
    first = conv_flops(n, *tower[0])
    fwd += conv_flops(batch, 3, x_channels, 4, hw)
    per_step = (conv_flops(batch, HIDDEN + x_channels + CAMERA + R + HIDDEN, 4 * HIDDEN, KERNEL, hw)
                + conv_flops(batch, LATENT + CAMERA + R + HIDDEN, 4 * HIDDEN, KERNEL, hw)
                + 2 * conv_flops(batch, HIDDEN, 2 * LATENT, KERNEL, hw)
                + conv_flops(batch, HIDDEN, HIDDEN, 4, hw))               # the transposed conv: same work as a conv
    fwd += STEPS * per_step + conv_flops(batch, HIDDEN, 3, 1, SIZE * SIZE)
    return 3 * fwd - first


def run_one(args):
    import contextlib
    import torch
    use_preset(args.preset)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext
    torch.manual_seed(0)
    model = build(torch, args.x_channels)()
    adam = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.999), eps=1e-8)
    B = args.batch[0]
    frames, cameras = torch.rand(B, VIEWS, 3, SIZE, SIZE), torch.randn(B, VIEWS, CAMERA)
    query_camera, target = torch.randn(B, CAMERA), torch.rand(B, 3, SIZE, SIZE)
    times = []
    for i in range(args.warmup + args.repeats):
        start = time.perf_counter()
        with autocast():
            mean, kl = model(frames, cameras, query_camera, target)
            loss = (gaussian_nll(target, mean, 2.0) + kl).mean()
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        loss.item()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    print(json.dumps({"batch": B, "preset": args.preset, "precision": args.precision, "s_per_step": step,
                      "samples_per_s": B / step, "min": min(times),
                      "max": max(times), "gflop": step_flops(B, args.x_channels) / 1e9,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 36], help="batch sizes (default: 8 36)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--x-channels", type=int, default=3,
                        help="channels of the 4x4 stride-4 view of the query image (the port: 3; default: 3)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="model sizes (default: paper)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: forward and loss under torch.autocast (default: fp32)")
    parser.add_argument("--flops", action="store_true", help="print the analytic FLOPs per step and exit")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_preset(args.preset)
    if args.flops:
        for batch in args.batch:
            print("batch %d: %.3f TFLOP per training step" % (batch, step_flops(batch, args.x_channels) / 1e12))
        return
    if args.one:
        return run_one(args)
    print("%6s %8s %10s %11s %9s %10s" % ("batch", "s/step", "samples/s", "range", "GFLOP/s", "peak RSS"))
    for batch in args.batch:
        cmd = [sys.executable, __file__, "--one", "--batch", str(batch), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--x-channels", str(args.x_channels), "--preset", args.preset,
               "--precision", args.precision]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print("%6d %8.2f %10.2f %5.2f-%5.2f %9.0f %7.2f GB   (torch %s, %d threads)"
              % (r["batch"], r["s_per_step"], r["samples_per_s"], r["min"], r["max"], r["gflop"] / r["s_per_step"],
                 r["peak_rss_gb"], r["torch"], r["threads"]))


if __name__ == "__main__":
    main()
