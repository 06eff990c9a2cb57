"""A training run's directory: its log (TensorBoard, metrics.jsonl, grids), its name, and its model read back."""
import json
import os
import time

from gqn import checkpoint, images
from gqn.datasets import dataset_root


class RunLog:
    """Where a run's numbers go: mxboard (TensorBoard), metrics.jsonl and PNG grids; only rank 0 writes."""

    def __init__(self, run_dir, enabled):
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = None
        if enabled:
            from mxboard import SummaryWriter
            self.writer = SummaryWriter(logdir=run_dir, flush_secs=10)

    def scalars(self, prefix, values, step):
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar("%s/%s" % (prefix, name), value, global_step=step)
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(dict(values, step=step, kind=prefix)) + "\n")

    def grid(self, grid, step):
        if not self.enabled:
            return
        images.save_png(grid, os.path.join(self.run_dir, "val-grid-%07d.png" % step))
        images.save_png(grid, os.path.join(self.run_dir, "val-grid-latest.png"))
        self.writer.add_image("val/grid", grid.transpose(2, 0, 1), global_step=step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def new_run_dir(log_dir, dataset, suffix=""):
    """LOG_DIR/DATASET-YYYYmmdd-HHMMSS[-SUFFIX]."""
    return os.path.join(log_dir, "%s-%s%s" % (dataset, time.strftime("%Y%m%d-%H%M%S"), "-" + suffix if suffix else ""))


def load_model(path, ctx, build):
    """(model with the checkpoint's parameters, hybridized with its prior twin; the checkpoint's state dict plus
    its `directory`) of a run directory or checkpoint folder. `build` makes the model from the state's model dict
    (core.GQN.from_config). FileNotFoundError naming where it looked."""
    directory = checkpoint.resolve_checkpoint(path)
    state = checkpoint.load_state(directory)
    model = build(state["model"])
    # cast_dtype: a shipped checkpoint may store float16 parameters to halve its size; the model runs in float32
    model.load_parameters(os.path.join(directory, checkpoint.PARAMS), ctx=ctx, cast_dtype=True)
    model.hybridize(static_alloc=True, static_shape=True)
    model.generator().hybridize(static_alloc=True, static_shape=True)
    return model, dict(state, directory=directory)


def run_dataset_root(state, dataset=None, data_dir=None):
    """Where a run's dataset lives (from its state's training config), or another DATA_DIR / DATASET."""
    config = state["config"]
    return dataset_root(data_dir or config["data_dir"], dataset or config["dataset"], config["image_size"],
                        config["synthetic_scenes"])
