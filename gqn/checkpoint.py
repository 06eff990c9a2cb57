"""Checkpoints written atomically and durably: parameters, trainer state and a JSON state (step, config, ...) in one
folder, which a kill or power cut at any moment leaves either the old or the new one, never a mixture."""
import glob
import json
import os
import shutil
import tempfile

from gqn.files import fsync_path

PARAMS, TRAINER, STATE = "model.params", "trainer.states", "state.json"
AVERAGE = "average.params"  # the parameters' moving average (gqn/average.py), when the run keeps one
TEMP_PREFIX = ".checkpoint-"


def save_checkpoint(directory, model, trainer, state, average=None):
    """Write `directory` (e.g. RUN/checkpoint) as a whole or not at all, with `average` (a ParameterAverage) if given.

    The files go to a sibling temporary folder and are synced; then `directory` becomes `directory.old`, the
    temporary folder becomes `directory`, and `.old` is removed. A cut anywhere leaves `directory` (complete, as
    it only ever appears by a rename of a synced folder), or only `.old` (between the two renames); find_checkpoint
    reads both cases. On an error the temporary folder is removed and the error raised: the last checkpoint stays.
    """
    parent = os.path.dirname(os.path.abspath(directory))
    tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
    try:
        model.save_parameters(os.path.join(tmp, PARAMS))
        trainer.save_states(os.path.join(tmp, TRAINER))
        if average is not None:
            average.save(os.path.join(tmp, AVERAGE))
        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        for name in os.listdir(tmp):
            fsync_path(os.path.join(tmp, name))
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = directory + ".old"
    if os.path.exists(os.path.join(directory, STATE)):
        shutil.rmtree(old, ignore_errors=True)  # left by a cut save; `directory` is the newer complete one
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_path(parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(directory):
    """Remove what cut saves of `directory` left: temporary folders, and `.old` when `directory` is complete.
    Only for the run's one writer (it holds the run directory's lock)."""
    parent = os.path.dirname(os.path.abspath(directory))
    for tmp in glob.glob(os.path.join(parent, glob.escape(TEMP_PREFIX) + "*")):
        shutil.rmtree(tmp, ignore_errors=True)
    if os.path.exists(os.path.join(directory, STATE)):
        shutil.rmtree(directory + ".old", ignore_errors=True)


def find_checkpoint(directory):
    """The complete checkpoint folder to resume from: `directory`, or its `.old` twin if a save was cut between
    the two renames; None if neither exists."""
    for candidate in (directory, directory + ".old"):
        if os.path.exists(os.path.join(candidate, STATE)):
            return candidate
    return None


def resolve_checkpoint(path):
    """The checkpoint folder for `path`: a checkpoint folder itself or a run directory holding checkpoint/
    (either may be the `.old` twin of an interrupted save); FileNotFoundError naming where it looked."""
    for candidate in (path, os.path.join(path, "checkpoint")):
        found = find_checkpoint(candidate)
        if found is not None:
            return found
    raise FileNotFoundError("no checkpoint at %s: expected %s in it or in %s"
                            % (path, STATE, os.path.join(path, "checkpoint")))


def load_state(directory):
    with open(os.path.join(directory, STATE)) as f:
        return json.load(f)


def load_checkpoint(directory, model, trainer, ctx):
    """Load parameters and trainer state into existing objects; return the JSON state."""
    model.load_parameters(os.path.join(directory, PARAMS), ctx=ctx)
    if trainer is not None:
        trainer.load_states(os.path.join(directory, TRAINER))
    return load_state(directory)


def load_average(directory, average, ctx):
    """Continue the checkpoint's parameter average in `average`; one it does not hold starts from its parameters."""
    path = os.path.join(directory, AVERAGE)
    if os.path.exists(path):
        average.load(path, ctx)


def served_parameters(directory):
    """The parameter file the tools use: the average when the run kept one, else the weights."""
    average = os.path.join(directory, AVERAGE)
    return average if os.path.exists(average) else os.path.join(directory, PARAMS)
