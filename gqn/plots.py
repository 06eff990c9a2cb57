"""Training curves of a run (from its metrics.jsonl) as one PNG, with matplotlib's file-only backend."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PANELS = (("-ELBO (nats)", "elbo"), ("NLL (nats)", "nll"), ("KL (nats)", "kl"), ("MSE", "mse"))


def read_metrics(path):
    """metrics.jsonl -> {kind: [record, ...]} in step order."""
    runs = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            runs.setdefault(record["kind"], []).append(record)
    return runs


def plot_curves(metrics_path, out_path, title=""):
    """Four panels: -ELBO, NLL, KL and MSE against the step, training and validation."""
    runs = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (label, key) in zip(axes, PANELS):
        for kind, val_key, style in (("train", key, "-"), ("val", key if key != "mse" else "mse_prior_sample", "o-")):
            points = [(r["step"], r[val_key]) for r in runs.get(kind, []) if val_key in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, markersize=3, label=kind if kind == "train" else "validation")
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[-1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
