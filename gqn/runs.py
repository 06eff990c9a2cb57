"""A training run's directory: its log (TensorBoard, metrics.jsonl, grids), its name, and its model read back."""
import glob
import json
import os
import time
from contextlib import contextmanager

from gqn import checkpoint, images
from gqn.datasets import SYNTHETIC_FAMILIES, dataset_root, synthetic_test_scenes
from gqn.files import write_atomically


class WriteFailed(Exception):
    """A file of the run could not be written (a full disk, ...): the run stops, its last checkpoint stays good."""


@contextmanager
def writing(path):
    """-> path; an OSError inside becomes WriteFailed naming `path`."""
    try:
        yield path
    except OSError as error:
        raise WriteFailed("cannot write %s (%s)" % (path, error.strerror or error)) from error


def keep_until(path, step):
    """Rewrite metrics.jsonl without the records of steps after `step` (and a line cut by a kill)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step and line.endswith("\n"):
                kept.append(line)
        except ValueError:  # a line cut by a kill
            pass
    if len(kept) < len(lines):
        write_atomically(path, "".join(kept).encode())


class RunLog:
    """Where a run's numbers go: TensorBoard events, metrics.jsonl and PNG grids; only rank 0 writes.

    A run (re)starting at `step` first drops what a killed run logged after its checkpoint at that step, so that
    each step appears once. Writes reach the kernel at once (a kill loses nothing); sync() makes them durable
    and runs before each checkpoint. A failed write raises WriteFailed naming the file.
    """

    def __init__(self, run_dir, enabled, step=0):
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        if enabled:
            from gqn.events import EventFile, truncate_events  # late: mxboard's protos clash with tensorboard's
            with writing(run_dir):
                for path in glob.glob(os.path.join(run_dir, "*.tmp")):
                    os.remove(path)  # left by a cut write_atomically: the file it was replacing is whole
                keep_until(self.metrics_path, step)
                truncate_events(run_dir, step)
                for path in glob.glob(os.path.join(run_dir, "val-grid-[0-9]*.png")):
                    if int(os.path.basename(path)[len("val-grid-"):-len(".png")]) > step:
                        os.remove(path)
                self.events = EventFile(run_dir, step)
                self.metrics = open(self.metrics_path, "a")

    def scalars(self, prefix, values, step):
        if not self.enabled:
            return
        with writing(self.events.path):
            for name, value in values.items():
                self.events.scalar("%s/%s" % (prefix, name), value, step)
        with writing(self.metrics_path):
            self.metrics.write(json.dumps(dict(values, step=step, kind=prefix)) + "\n")
            self.metrics.flush()

    def grid(self, grid, step):
        if not self.enabled:
            return
        for path in (os.path.join(self.run_dir, "val-grid-%07d.png" % step),
                     os.path.join(self.run_dir, "val-grid-latest.png")):
            with writing(path):
                images.save_png(grid, path)
        with writing(self.events.path):
            self.events.image("val/grid", grid.transpose(2, 0, 1), step)

    def sync(self):
        if self.enabled:
            for path, f in ((self.events.path, self.events.file), (self.metrics_path, self.metrics)):
                with writing(path):
                    os.fsync(f.fileno())

    def close(self):
        """Close the files; every write was flushed when made and a failure raised then, so none is raised here."""
        if self.enabled:
            for f in (self.events.file, self.metrics):
                try:
                    f.close()
                except OSError:
                    pass


def new_run_dir(log_dir, dataset, suffix=""):
    """LOG_DIR/DATASET-YYYYmmdd-HHMMSS[-SUFFIX]."""
    return os.path.join(log_dir, "%s-%s%s" % (dataset, time.strftime("%Y%m%d-%H%M%S"), "-" + suffix if suffix else ""))


def load_model(path, ctx, build):
    """(model with the checkpoint's parameters, hybridized with its prior twin; the checkpoint's state dict plus
    its `directory`) of a run directory or checkpoint folder. `build` makes the model from the state's model dict
    (core.GQN.from_config). FileNotFoundError naming where it looked; ValueError naming the state.json whose model
    settings `build` rejects."""
    directory = checkpoint.resolve_checkpoint(path)
    state = checkpoint.load_state(directory)
    try:
        model = build(state["model"])
    except ValueError as error:
        raise ValueError("%s: %s" % (os.path.join(directory, checkpoint.STATE), error))
    # cast_dtype: a shipped checkpoint may store float16 parameters to halve its size; the model runs in float32
    model.load_parameters(checkpoint.served_parameters(directory), ctx=ctx, cast_dtype=True)
    model.hybridize(static_alloc=True, static_shape=True)
    model.generator().hybridize(static_alloc=True, static_shape=True)
    return model, dict(state, directory=directory)


RENAMED = {"synthetic_scenes": "train_scenes"}  # training-config keys that older runs stored under other names


def saved_config(state):
    """A run's training config as a dict, with older runs' keys renamed (and their --gpus list as --devices)."""
    config = {RENAMED.get(name, name): value for name, value in state["config"].items()}
    if "gpus" in config:
        gpus = config.pop("gpus")
        config["devices"] = ",".join("gpu:%s" % i for i in gpus.split(",")) if gpus else "cpu"
    return config


def run_directory(checkpoint_dir):
    """The run directory of a checkpoint folder: RUN for RUN/checkpoint (or its .old twin), else the folder itself
    (a shipped model such as assets/demo)."""
    path = os.path.abspath(checkpoint_dir)
    return os.path.dirname(path) if os.path.basename(path) in ("checkpoint", "checkpoint.old") else path


def resolve_path(path, run_dir):
    """A path from a run's config: train_gqn.py stores them absolute; a relative one (a shipped model's) is relative
    to the run directory, so a run works from any current directory."""
    return os.path.normpath(os.path.join(run_dir, path))


def run_dataset_root(state, dataset=None, data_dir=None):
    """Where a run's dataset lives (from the training config of its state, as load_model returns it), or the same
    kind of dataset in another DATA_DIR / DATASET."""
    config = saved_config(state)
    data_dir = data_dir or resolve_path(config["data_dir"], run_directory(state["directory"]))
    return dataset_root(data_dir, dataset or config["dataset"], config["image_size"], config["train_scenes"])


def ensure_dataset(root, dataset, image_size, train_scenes, splits, workers):
    """Make sure root/SPLIT holds a dataset for each split: a synthetic family's split is rendered on first use
    (as train_gqn.py does, the same scenes); converted data must be there. ValueError or FileNotFoundError, one line,
    saying what to do."""
    if dataset in SYNTHETIC_FAMILIES:
        from gqn.synthetic import ensure_synthetic  # the renderer loads only when a dataset must be made
        scenes = {"train": train_scenes if "train" in splits else 0,
                  "test": synthetic_test_scenes(train_scenes) if "test" in splits else 0}
        ensure_synthetic(root, dataset, scenes["train"], scenes["test"], image_size, seed=0, workers=workers or 1)
    for split in splits:
        manifest = os.path.join(root, split, "manifest.json")
        if not os.path.exists(manifest):
            raise FileNotFoundError(
                "dataset %r not found: %s is missing. Convert DeepMind's TFRecords with data/gqn_data_to_recordio.py "
                "(data/README.md) into --data-dir, or use a synthetic family: --dataset %s"
                % (dataset, manifest, " | ".join(SYNTHETIC_FAMILIES)))
