"""Faults in training, each injected: kill -9 at seeded random moments then --resume, saves cut at every step,
a full disk, non-finite parameters, resume flags, two trainers on one run directory, signals."""
import errno
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types

import mxnet as mx
import numpy as np
import pytest

import train_gqn
from gqn import checkpoint, events, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, os.path.join(ROOT, "train_gqn.py"), "--dry-run"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train_gqn.prepare_data(train_gqn.parse_args(["--dry-run", "--data-dir", str(root)])[1])
    return root


def run_main(data_dir, *flags):
    """train_gqn.main in this process -> (exit status, its message); signal handlers restored after."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = ["--dry-run", "--data-dir", str(data_dir)] + [str(f) for f in flags]
    try:
        train_gqn.main(argv)
        return 0, ""
    except SystemExit as exit:
        return (exit.code, "") if isinstance(exit.code, int) else (1, exit.code)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.fixture
def main(data_dir):
    return lambda *flags: run_main(data_dir, *flags)


def params_of(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def step_of(run):
    return checkpoint.load_state(checkpoint.find_checkpoint(os.path.join(run, "checkpoint")))["step"]


def leftovers(run):
    return sorted(glob.glob(os.path.join(run, ".checkpoint-*")) + glob.glob(os.path.join(run, "*.old"))
                  + glob.glob(os.path.join(run, "*.tmp")))


# -- a save cut anywhere (point 8) ---------------------------------------------------------------------------------

class Blob:
    """Stands for the model and the trainer: writes `text` in two halves, a cut point between them."""

    def __init__(self, text):
        self.text = text

    def save_parameters(self, path):
        with open(path, "w") as f:
            f.write(self.text[:3])
            f.flush()
            os.fsync(f.fileno())
            f.write(self.text[3:])

    save_states = save_parameters


def save(directory, step):
    checkpoint.save_checkpoint(directory, Blob("params-%d" % step), Blob("states-%d" % step), {"step": step})


def save_cut_at(directory, cut, step):
    """Run save() in a child process that dies (os._exit, no clean-up, like kill -9) at its `cut`-th file operation;
    -> whether it was cut."""
    pid = os.fork()
    if pid == 0:
        calls = [0]

        def cut_here(real):
            def wrapper(*args, **kwargs):
                calls[0] += 1
                if calls[0] > cut:
                    os._exit(9)
                return real(*args, **kwargs)
            return wrapper
        for name in ("replace", "fsync", "unlink", "rmdir", "mkdir"):
            setattr(os, name, cut_here(getattr(os, name)))
        save(directory, step)
        os._exit(0)
    return os.waitpid(pid, 0)[1] >> 8 == 9


def test_a_save_cut_anywhere_leaves_a_whole_checkpoint_and_the_next_save_works(tmp_path):
    directory = str(tmp_path / "run" / "checkpoint")
    cut, outcomes = 0, set()
    while True:
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        os.makedirs(tmp_path / "run")
        save(directory, 1)
        if not save_cut_at(directory, cut, 2):
            break
        found = checkpoint.find_checkpoint(directory)
        assert found is not None, cut
        step = checkpoint.load_state(found)["step"]
        assert step in (1, 2), cut
        for name, text in ((checkpoint.PARAMS, "params-%d"), (checkpoint.TRAINER, "states-%d")):
            with open(os.path.join(found, name)) as f:
                assert f.read() == text % step, (cut, name)
        outcomes.add((step, os.path.isdir(directory), os.path.isdir(directory + ".old")))
        save(directory, 3)
        assert checkpoint.load_state(checkpoint.find_checkpoint(directory))["step"] == 3
        checkpoint.remove_stale(directory)  # what the next trainer does once it holds the lock
        assert leftovers(tmp_path / "run") == [], cut
        cut += 1
    # every kind of cut was met: before the first rename, between the renames, with both folders (issue 8)
    assert {(1, True, False), (1, False, True), (2, True, True)} <= outcomes, outcomes


# -- kill -9 at random moments, then --resume (points 8, 13) -----------------------------------------------------

# TensorBoard's two readers (the legacy one, and the one its server uses), each kept per run directory so that a
# Reload sees what changed, as in a TensorBoard left running. In a process of their own: tensorboard's protos clash
# with mxboard's in one process.
READER = """
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as ServerAccumulator
readers = {}
for path in map(str.strip, sys.stdin):
    legacy, server = readers.setdefault(path, (EventAccumulator(path, size_guidance={"scalars": 0, "images": 0}),
                                                ServerAccumulator(path, size_guidance={"tensors": 0})))
    legacy.Reload()
    server.Reload()
    tags = [t for t in legacy.Tags()["scalars"] if t != "train/samples_per_s"]
    print(json.dumps({"scalars": {t: [(e.step, e.value) for e in legacy.Scalars(t)] for t in tags},
                      "server": {t: [e.step for e in server.Tensors(t)] for t in tags},
                      "images": [e.step for e in legacy.Images("val/grid")]}), flush=True)
"""


@pytest.fixture(scope="module")
def tensorboard():
    """tensorboard(run_dir) -> {"scalars": {tag: [(step, value)]}, "server": {tag: [step]}, "images": [step]}."""
    proc = subprocess.Popen([sys.executable, "-c", READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(run):
        proc.stdin.write("%s\n" % run)
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())
    yield read
    proc.stdin.close()
    proc.wait(timeout=60)


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in f]


def wait_for_step(run, step, proc):
    """Until the run has logged `step` (or ended)."""
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        if os.path.exists(run / "metrics.jsonl") and any(r["step"] >= step for r in records(run)):
            return
        time.sleep(0.02)


def test_kill_9_at_random_moments_then_resume_ends_as_an_uninterrupted_run(data_dir, tmp_path, tensorboard):
    """Each kill comes a random time after a random step (in training, logging, validation or a save); a run killed
    before its first checkpoint is started again with its first command, as a user would."""
    # steps enough that ten kills cannot carry the run to its end on a fast CPU (each kill lands up to ~0.1 s after
    # its step, and the next start goes back to the last checkpoint): a run that finished could not be killed
    flags = ["--data-dir", data_dir, "--max-steps", 120, "--val-every", 3]
    whole = subprocess.Popen([str(c) for c in TRAIN + flags + ["--run-dir", tmp_path / "whole"]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run, rng, kills = tmp_path / "killed", random.Random(16), []
    while len(kills) < 10:
        start = step_of(run) if checkpoint.find_checkpoint(str(run / "checkpoint")) else 0
        cmd = TRAIN + (["--resume", run] if start else flags + ["--run-dir", run])
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdout.readline()  # "run ... (resumed at step N)": its logs are cut back to N, training starts
        wait_for_step(run, start + rng.randint(1, 3), proc)
        time.sleep(rng.uniform(0.0, 0.1))  # a step, its logging, validation or save takes ~0.05-0.1 s here
        proc.kill()
        assert proc.wait() == -signal.SIGKILL, kills  # killed, not finished
        kills.append((start, max(r["step"] for r in records(run))))
    done = subprocess.run([str(c) for c in TRAIN + ["--resume", run]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert whole.wait(timeout=120) == 0, whole.stderr.read()[-2000:]
    for name in (checkpoint.PARAMS, checkpoint.TRAINER):
        with open(tmp_path / "whole" / "checkpoint" / name, "rb") as a, open(run / "checkpoint" / name, "rb") as b:
            assert a.read() == b.read(), (name, kills)
    assert records(run) == records(tmp_path / "whole"), kills
    assert tensorboard(run) == tensorboard(tmp_path / "whole"), kills
    assert leftovers(run) == []


def test_a_tensorboard_left_running_over_a_resume_shows_each_step_once(main, tmp_path, tensorboard, monkeypatch):
    """The new event file's SessionLog START makes a reader that already holds the killed run's later steps drop
    them (the files themselves are cut back too, for readers that start afresh). The event files' clock is
    stopped: both resumes start from step 3 within one second, as when a fast machine won the race."""
    monkeypatch.setattr(events, "time", types.SimpleNamespace(time=lambda: 1.8e9))
    run = tmp_path / "run"
    assert main("--run-dir", run, "--max-steps", 3, "--checkpoint-every", 3) == (0, "")
    shutil.copytree(run / "checkpoint", tmp_path / "at3")
    assert main("--resume", run, "--max-steps", 6) == (0, "")
    shutil.rmtree(run / "checkpoint")  # as if killed after step 6 with the checkpoint of step 3
    shutil.copytree(tmp_path / "at3", run / "checkpoint")
    assert tensorboard(run)["server"]["train/nll"] == [1, 2, 3, 4, 5, 6]
    assert main("--resume", run, "--max-steps", 9) == (0, "")
    live, fresh = tensorboard(run), tensorboard(str(run) + "/")  # the same directory, read again from scratch
    for seen in (live, fresh):
        for tag in ("train/nll", "schedule/lr", "val/elbo"):
            steps = list(range(1, 10)) if tag != "val/elbo" else [2, 4, 6, 8]
            assert [step for step, _ in seen["scalars"][tag]] == steps, tag
            assert seen["server"][tag] == steps, tag
    assert [r["step"] for r in records(run) if r["kind"] == "train"] == list(range(1, 10))


# -- a full disk (point 9) ----------------------------------------------------------------------------------------

def no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


# what MXNet 1.9.1 raises writing parameters to /dev/full
SHORT_WRITE = ('Traceback (most recent call last):\n  File "../3rdparty/dmlc-core/src/io/local_filesys.cc", line 38\n'
               'MXNetError: Check failed: std: :fwrite(ptr, 1, size, fp_) == size: FileStream.Write incomplete')


@pytest.mark.parametrize("failure", ["params", "states"])
def test_a_full_disk_at_a_checkpoint_names_the_last_good_one(main, tmp_path, monkeypatch, failure):
    """MXNet reports a short write as MXNetError, Python as OSError; both end in one line, exit 1."""
    saves = []

    def failing(real):
        def save(self, path, *args, **kwargs):
            saves.append(path)
            if len(saves) > 1:  # the second checkpoint, a file half written
                with open(path, "wb") as f:
                    f.write(b"\0" * 10)
                raise mx.base.MXNetError(SHORT_WRITE) if failure == "params" else no_space(path)
            return real(self, path, *args, **kwargs)
        return save
    cls, name = (mx.gluon.Block, "save_parameters") if failure == "params" else (mx.gluon.Trainer, "save_states")
    monkeypatch.setattr(cls, name, failing(getattr(cls, name)))
    run = tmp_path / "run"
    status, message = main("--run-dir", run, "--max-steps", 8)
    assert status == 1 and "\n" not in message.strip(), message
    assert "cannot write the checkpoint of step 4 to %s" % (run / "checkpoint") in message, message
    assert "The last good checkpoint (step 2) is kept in %s" % (run / "checkpoint") in message, message
    assert ("FileStream.Write incomplete" if failure == "params" else "No space left on device") in message
    assert step_of(run) == 2 and leftovers(run) == []


FULL_DISK = """
import builtins, errno, os, sys
sys.path.insert(0, %(root)r)
real_open, writes = builtins.open, [0]

class Full:
    def __init__(self, f): self.f = f
    def write(self, data):
        writes[0] += 1
        if writes[0] > %(after)d:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)
    def __getattr__(self, name): return getattr(self.f, name)
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()

def open_(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Full(f) if "tfevents" in str(file) and "b" in mode and "r" not in mode else f

builtins.open = open_
import train_gqn
train_gqn.main(sys.argv[1:])
"""


def test_a_full_disk_under_the_tensorboard_events_stops_the_run_with_one_line(data_dir, tmp_path):
    """mxboard's writer thread died on this and the trainer then hung for ever, deaf to SIGINT and SIGTERM."""
    run = tmp_path / "run"
    code = FULL_DISK % {"root": ROOT, "after": 60}
    done = subprocess.run([sys.executable, "-c", code, "--dry-run", "--data-dir", str(data_dir), "--run-dir", str(run),
                           "--max-steps", "1000"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("train_gqn.py: cannot write %s/events.out.tfevents." % run), message
    assert "(No space left on device); stopping. The last good checkpoint (step " in message, message
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert 0 < step_of(run) < 1000


# -- non-finite parameters (point 11) -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad_step", [1, 3])
def test_non_finite_parameters_are_never_the_last_good_checkpoint(main, tmp_path, monkeypatch, bad_step):
    """An update can turn parameters to NaN while the loss before it was finite: the save must see it."""
    real, steps = training.train_step, []

    def train_step(model, *args, **kwargs):
        terms = real(model, *args, **kwargs)
        steps.append(1)
        if len(steps) == bad_step:
            param = next(iter(model.collect_params().values()))
            param.set_data(param.data() * np.nan)
        return terms
    monkeypatch.setattr(training, "train_step", train_step)
    run = tmp_path / "run"
    status, message = main("--run-dir", run, "--max-steps", 8, "--checkpoint-every", 1)
    assert status == 1 and "is not finite after step %d" % bad_step in message, message
    assert "None" not in message
    if bad_step == 1:
        assert "No checkpoint was saved yet; start again" in message, message
        assert checkpoint.find_checkpoint(str(run / "checkpoint")) is None
    else:
        assert "The last good checkpoint (step 2)" in message and "resume (--resume %s)" % run in message, message
        assert step_of(run) == 2
        assert all(np.isfinite(v).all() for v in params_of(run / "checkpoint" / checkpoint.PARAMS).values())


# -- what a resume may change (point 11) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert run_main(data_dir, "--run-dir", run) == (0, "")
    return run


@pytest.mark.parametrize("flags, named", [(["--batch-size", 8], "--batch-size 8 differs from the run's 4"),
                                          (["--seed=1"], "--seed 1 differs from the run's 0"),
                                          (["--hidden", 16], "--hidden 16 differs from the run's 8"),
                                          (["--dataset", "shepard_metzler"], "--dataset shepard_metzler differs"),
                                          (["--max-context", 2], "--max-context 2 differs from the run's 3")])
def test_a_resume_refuses_flags_that_would_make_another_run(main, finished, flags, named):
    before = step_of(finished)
    status, message = main("--resume", finished, "--max-steps", 6, *flags)
    assert status == 1 and named in message and "\n" not in message, message
    assert "a resume may change --sigma-initial --sigma-final" in message and "--micro-batch" in message
    assert step_of(finished) == before


def test_a_resume_applies_the_flags_it_may_change_and_saves_them(main, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main("--resume", run, "--max-steps", 6, "--sigma-final", 1.5, "--sigma-steps", 4, "--batch-size", 4) \
        == (0, "")
    for path in (run / "config.json", run / "checkpoint" / checkpoint.STATE):
        with open(path) as f:
            config = json.load(f)["config"]
        assert (config["sigma_final"], config["sigma_steps"], config["max_steps"]) == (1.5, 4, 6), path
    sigma = {r["step"]: r["sigma"] for r in records(run) if r["kind"] == "schedule"}
    assert sigma[5] == pytest.approx(1.5) and sigma[1] == pytest.approx(2.0)


def test_run_dir_with_resume_is_refused(main, finished):
    status, message = main("--resume", finished, "--run-dir", finished)
    assert status == 1 and "--resume names the run directory" in message


# -- two trainers, signals (points 12, 15) ------------------------------------------------------------------------

def test_a_second_trainer_on_a_running_run_is_refused_then_signals_end_the_first(main, data_dir, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([str(c) for c in TRAIN + ["--data-dir", data_dir, "--run-dir", run, "--max-steps",
                                                       100000, "--val-every", 100000]],
                             stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr", "w"), text=True,
                             start_new_session=True)
    try:
        first.stdout.readline()
        deadline = time.time() + 60
        while checkpoint.find_checkpoint(str(run / "checkpoint")) is None and time.time() < deadline:
            time.sleep(0.1)
        for flags in (["--resume", run], ["--run-dir", run]):
            status, message = main(*flags, "--max-steps", 3)
            assert status == 1 and "%s is in use by pid %d" % (run, first.pid) in message, message
        first.send_signal(signal.SIGTERM)
        out = first.communicate(timeout=60)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 128 + signal.SIGTERM, (tmp_path / "stderr").read_text()[-2000:]
    assert "signal %d" % signal.SIGTERM in out
    stopped = step_of(run)
    assert main("--resume", run, "--max-steps", stopped + 1) == (0, "")  # the lock died with its holder
    assert step_of(run) == stopped + 1
