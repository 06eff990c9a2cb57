"""Training speed as train_gqn.py logs it (its whole loop: decoding threads, the batch's hand-over, the step,
logging), in interleaved rounds of short runs of one preset; per variant the median samples/s and its range over
rounds, and the training loss at the last step.

Example: python bench/bench_train.py --rounds 3 --steps 300
         python bench/bench_train.py --variant "spin OMP_WAIT_POLICY=ACTIVE" --variant "sleep OMP_WAIT_POLICY=PASSIVE"
         python bench/bench_train.py --variant "w0 --workers 0" --variant "w2 --workers 2"

bench/bench_step.py times the step alone, on one batch made once; this times what a user sees, where the loop
around the step can cost more than the step (a synchronous batch copy once cost 20% here). A variant is a name
and its changes, in one argument: VAR=VALUE sets an environment variable, the rest are train_gqn.py flags. A
round runs every variant once, in an order rotated by one each round, so that load from other processes falls
on all alike. The rate of a run is the median of the samples/s it logs after --skip steps. Variants that do not
change the math must end with the same loss (the same seed, data and noise): the last column shows it.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from gqn import cli  # noqa: E402
from gqn.presets import PRESETS  # noqa: E402


def variant(tokens):
    """[NAME, VAR=VALUE..., flags...] -> (name, {VAR: VALUE}, [flags])."""
    name, env, flags = tokens[0], {}, []
    for token in tokens[1:]:
        if "=" in token and not token.startswith("-"):
            key, value = token.split("=", 1)
            env[key] = value
        else:
            flags.append(token)
    return name, env, flags


def run_once(args, env, flags, run_dir):
    """One short training run -> (median samples/s after --skip steps, loss at the last step), or an error text."""
    cmd = [sys.executable, os.path.join(ROOT, "train_gqn.py"), "--preset", args.preset, "--run-dir", run_dir,
           "--max-steps", str(args.steps), "--minutes", "0", "--val-every", "1000000", "--checkpoint-every",
           "1000000"] + (["--data-dir", args.data_dir] if args.data_dir else []) + flags
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, **env))
    if done.returncode:
        return (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        logged = [m for m in map(json.loads, f) if m["kind"] == "train"]
    rates = [m["samples_per_s"] for m in logged if m["step"] > args.skip]
    if not rates:
        return "no training log after step %d; use more --steps" % args.skip
    return statistics.median(rates), logged[-1]["elbo"]


def main():
    parser = cli.Parser(__doc__)
    parser.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS),
                        help="train_gqn.py preset (default: cpu-demo)")
    parser.add_argument("--steps", type=cli.bounded(int, 1), default=300, help="steps per run (default: 300)")
    parser.add_argument("--skip", type=cli.bounded(int, 0), default=100,
                        help="first steps left out of the rate (default: 100)")
    parser.add_argument("--rounds", type=cli.bounded(int, 1), default=3, help="rounds (default: 3)")
    parser.add_argument("--data-dir", help="train_gqn.py --data-dir (default: its own)")
    parser.add_argument("--variant", type=shlex.split, action="append", metavar="'NAME [VAR=VALUE|FLAG ...]'",
                        help="a variant to compare, quoted (default: one, as configured)")
    args = parser.parse_args()
    if not all(args.variant or [["default"]]):
        parser.error("--variant '': a variant needs a name")
    variants = [variant(tokens) for tokens in args.variant or [["default"]]]
    results = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            shift = round_ % len(variants)
            for name, env, flags in variants[shift:] + variants[:shift]:
                result = run_once(args, env, flags, os.path.join(tmp, "%s-%d" % (name, round_)))
                results[name].append(result)
                print("round %d  %-12s %s" % (round_ + 1, name, "%.1f samples/s, loss %.6f" % result
                                              if isinstance(result, tuple) else "failed: " + result), flush=True)
    print("\n%s, %d steps per run, median samples/s of steps %d-%d over %d rounds (range); the last step's loss"
          % (args.preset, args.steps, args.skip + 1, args.steps, args.rounds))
    for name, env, flags in variants:
        good = [r for r in results[name] if isinstance(r, tuple)]
        if not good:
            print("%-12s failed" % name)
            continue
        rates, losses = [r[0] for r in good], sorted({"%.6f" % r[1] for r in good})
        print("%-12s %6.1f  (%.1f-%.1f)  loss %s  %s" % (name, statistics.median(rates), min(rates), max(rates),
                                                       "/".join(losses), " ".join(
                                                           ["%s=%s" % kv for kv in env.items()] + flags)))


if __name__ == "__main__":
    main()
