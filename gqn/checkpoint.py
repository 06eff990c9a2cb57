"""Checkpoints written atomically: parameters, trainer state and a JSON state (step, config, ...) in one folder."""
import json
import os
import shutil
import tempfile

PARAMS, TRAINER, STATE = "model.params", "trainer.states", "state.json"


def save_checkpoint(directory, model, trainer, state):
    """Write `directory` (e.g. RUN/checkpoint) as a whole or not at all: files go to a sibling temporary folder,
    which then replaces the old checkpoint by renames."""
    parent = os.path.dirname(os.path.abspath(directory))
    tmp = tempfile.mkdtemp(prefix=".checkpoint-", dir=parent)
    model.save_parameters(os.path.join(tmp, PARAMS))
    trainer.save_states(os.path.join(tmp, TRAINER))
    with open(os.path.join(tmp, STATE), "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    old = directory + ".old"
    if os.path.exists(directory):
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


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
