"""This project against the PyTorch reference port, fp32 and bf16, in one interleaved sitting: s/step, samples/s, RSS.

Example: python bench/compare.py --torch-python /work/torchvenv/bin/python --rounds 3 --repeats 3
         python bench/compare.py --torch-python ... --cases paper:8 cpu-demo:16 --baseline /tmp/gqn-main

Each measurement (one side, one precision, one model size and batch) is a process of its own: bench/bench_step.py
for this project, bench/torch_reference.py for PyTorch (run by --torch-python, a virtual environment with torch;
torch is no dependency of this project). A round runs every measurement once, in an order rotated by one each
round, so that load from other processes on a shared machine falls on all sides alike; the table gives the
median over rounds of each process's median step, with the range over rounds. Both sides build the same model
(inference core without canvas read, as the port). --baseline DIR adds rows for the project checked out in DIR
(with this bench_step.py and flops.py copied into DIR/bench), for before/after figures in the same sitting.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
PRECISIONS = ("fp32", "bf16")


def parse_case(text):
    preset, _, batch = text.partition(":")
    if preset not in ("paper", "cpu-demo") or not batch.isdigit():
        raise argparse.ArgumentTypeError("%r: a case is PRESET:BATCH, PRESET paper or cpu-demo, e.g. paper:8" % text)
    return preset, int(batch)


def command(side, precision, preset, batch, args):
    """-> argv of one measurement."""
    common = ["--one", "--preset", preset, "--batch", str(batch), "--precision", precision,
              "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if side == "torch":
        return [args.torch_python, os.path.join(BENCH, "torch_reference.py")] + common
    bench = BENCH if side == "gqn" else os.path.join(args.baseline, "bench")
    # no canvas read, as the PyTorch port: bench_step.py's default (a flag older trees spell otherwise)
    return [sys.executable, os.path.join(bench, "bench_step.py")] + common


def measure(argv, timeout):
    """Run one measurement -> its JSON row, or {'error': ...}."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after %d s" % timeout}
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--torch-python", required=True, help="python of a virtual environment with torch")
    parser.add_argument("--cases", type=parse_case, nargs="+",
                        default=[("paper", 8), ("paper", 36), ("cpu-demo", 16)],
                        help="PRESET:BATCH measured (default: paper:8 paper:36 cpu-demo:16)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="(default: fp32 bf16)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per process first (default: 1)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one process may take (default: 900)")
    parser.add_argument("--baseline", help="another checkout of this project, measured too (see above)")
    parser.add_argument("--json", help="also write every measurement to this JSONL file")
    args = parser.parse_args()
    sides = ["gqn", "torch"] + (["baseline"] if args.baseline else [])
    jobs = [(side, p, preset, batch) for preset, batch in args.cases for side in sides for p in args.precision]
    results = {job: [] for job in jobs}
    start = time.time()
    for r in range(args.rounds):
        shift = r % len(jobs)
        for job in jobs[shift:] + jobs[:shift]:
            row = measure(command(*job, args), args.timeout)
            row.update(round=r, side=job[0], load=os.getloadavg()[0])
            results[job].append(row)
            print("round %d %-8s %4s %8s:%-3d %s" % (r, job[0], job[1], job[2], job[3],
                                                    row.get("error") or "%.3f s/step" % row["s_per_step"]),
                  file=sys.stderr, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(dict(row, job=job)) + "\n")
    report(results, args.rounds, time.time() - start)


def report(results, rounds, seconds):
    print("%d rounds, rotated order, %.0f s; medians over rounds (range); load = 1-min load average at each end"
          % (rounds, seconds))
    print("%-9s %6s %-9s %5s %8s %13s %10s %8s %10s" % ("case", "batch", "side", "prec", "s/step", "range",
                                                        "samples/s", "RSS GB", "load"))
    for (side, precision, preset, batch), rows in results.items():
        good = [r for r in rows if "error" not in r]
        if not good:
            print("%-9s %6d %-9s %5s   not run: %s" % (preset, batch, side, precision, rows[-1]["error"]))
            continue
        steps = [r["s_per_step"] for r in good]
        step = statistics.median(steps)
        print("%-9s %6d %-9s %5s %8.3f %6.3f-%6.3f %10.2f %8.2f %4.1f-%4.1f"
              % (preset, batch, side, precision, step, min(steps), max(steps), batch / step,
                 statistics.median(r["peak_rss_gb"] for r in good), min(r["load"] for r in good),
                 max(r["load"] for r in good)))


if __name__ == "__main__":
    main()
