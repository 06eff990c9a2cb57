"""Faults in conversion and converted data: kill -9 and Ctrl-C of a 2-worker conversion, then a rerun equal to an
uninterrupted one; every damaged input named in one line (file and record), with nothing partial left complete."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from gqn import loader, locks, scene_format, tfrecord
from converter import SCRIPT, convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAME, SIZE, VIEWS = "rooms_ring_camera", 64, 10  # a DeepMind table entry: 64x64, 10 views
FILES, SCENES = 8, 10  # train files, scenes per file: enough work that kills land while workers convert
KILLS = 10


def _jpeg(rng, ext=".jpg", grey=False):
    """A smooth random SIZE x SIZE image, encoded."""
    small = rng.integers(0, 256, (8, 8) if grey else (8, 8, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
    assert ok
    return data.tobytes()


def _scene(rng):
    cameras = rng.uniform(-2, 2, (VIEWS, 5)).astype(np.float32)
    return [_jpeg(rng) for _ in range(VIEWS)], cameras


def _write_source(root, split, files, scenes, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, NAME, split), exist_ok=True)
    for number in range(1, files + 1):
        path = os.path.join(root, NAME, split, "%d-of-%d.tfrecord" % (number, files))
        tfrecord.write_records(path, [tfrecord.encode_example(*_scene(rng)) for _ in range(scenes)])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """ROOT/rooms_ring_camera/{train (FILES files of SCENES scenes), test (1 file of 3)} and their uninterrupted
    conversion's files {relative path: bytes}, with how long its worker processes ran."""
    root = str(tmp_path_factory.mktemp("source"))
    _write_source(root, "train", FILES, SCENES, seed=1)
    _write_source(root, "test", 1, 3, seed=2)
    out = str(tmp_path_factory.mktemp("whole"))
    proc = _start(root, out)
    _, started = _workers_of(proc)
    assert proc.wait(120) == 0, _log(out)
    return root, _files(out), time.monotonic() - started


def _default_sigint():
    """In a child before it runs: SIGINT back to its default. A shell's background job (`cmd &`) inherits SIGINT
    ignored, and Python then installs no KeyboardInterrupt: a Ctrl-C test run that way tested nothing, or hung."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(root, out):
    """The converter with 2 workers in its own session, its stderr in OUT.log."""
    with open(out + ".log", "w") as log:
        return subprocess.Popen([sys.executable, SCRIPT, "--dataset", NAME, "--tfrecord-dir", root, "--data-dir", out, "--workers", "2"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                preexec_fn=_default_sigint)


def _log(out):
    with open(out + ".log") as f:
        return f.read()[-2000:]


def _run(capfd, *args):
    """The converter in this process (a rerun needs no fresh interpreter): (exit status, its stderr)."""
    capfd.readouterr()
    code = convert.main(list(args))
    return code, capfd.readouterr().err


def _files(out):
    found = {}
    for directory, _, names in os.walk(out):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, out)] = f.read()
    return found


def _ppid_and_state(pid):
    """(parent pid, state letter) of a live process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), fields[0]


def _children(pid):
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _ppid_and_state(int(name))
            if info and info[0] == pid:
                kids.append(int(name))
    return kids


def _workers_of(proc, count=2, limit=60.0):
    """Wait until `proc` has `count` child processes: (their pids, when they were all there)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        kids = _children(proc.pid)
        if len(kids) >= count:
            return kids, time.monotonic()
        assert proc.poll() is None, "exited with %s before starting %d workers" % (proc.returncode, count)
        time.sleep(0.01)
    raise AssertionError("no %d workers after %.0f s" % (count, limit))


def _wait_gone(pids, limit=10.0):
    """The pids still alive (not zombies) after up to `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        alive = [p for p in pids if (_ppid_and_state(p) or (0, "Z"))[1] != "Z"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_kill_9_at_random_moments_then_rerun_equals_uninterrupted(source, tmp_path, capfd):
    """The converter killed while its 2 workers convert: the workers die with it, and the rerun started at
    once (no waiting for leftovers) ends byte-identical to the uninterrupted conversion."""
    root, want, work_seconds = source
    rng, partial = random.Random(16), 0
    for trial in range(KILLS):
        out = str(tmp_path / str(trial))
        proc = _start(root, out)
        workers, _ = _workers_of(proc)
        time.sleep(rng.uniform(0, work_seconds))
        proc.kill()
        proc.wait()
        assert _wait_gone(workers) == [], "trial %d: workers outlived their parent" % trial
        train = os.path.join(out, NAME, "train")
        finished = [n for n in os.listdir(train) if n.endswith(convert.NOTE_SUFFIX)] if os.path.isdir(train) else []
        partial += 0 < len(finished) < FILES
        code, err = _run(capfd, "--dataset", NAME, "--tfrecord-dir", root, "--data-dir", out)
        assert code == 0, "trial %d: %s" % (trial, err)
        assert _files(out) == want, "trial %d" % trial
    assert partial > 0  # some kill left finished and unfinished shards behind


def test_ctrl_c_stops_the_workers_and_a_rerun_completes(source, tmp_path, capfd):
    root, want, work_seconds = source
    out = str(tmp_path / "out")
    proc = _start(root, out)
    workers, _ = _workers_of(proc)
    time.sleep(work_seconds / 3)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) in (0, 130)  # 0: it had finished
    assert _wait_gone(workers) == []
    assert not os.path.exists(os.path.join(out, NAME, convert.LOCK))
    assert _run(capfd, "--dataset", NAME, "--tfrecord-dir", root, "--data-dir", out)[0] == 0
    assert _files(out) == want


def test_a_ctrl_c_once_the_work_is_over_keeps_the_exit_status(tmp_path):
    """A Ctrl-C in a finished converter's teardown printed a KeyboardInterrupt traceback, or killed it (-2) once
    Python had put back SIGINT's default action: the ctrl-c test above met it when the conversion won the race."""
    script = tmp_path / "late.py"
    script.write_text("import atexit, sys, time\n"
                      "from gqn import processes\n"
                      "atexit.register(time.sleep, 1.0)  # a teardown long enough to be hit\n"
                      "print('done', flush=True)\n"
                      "sys.exit(processes.exit_status(lambda: 0))\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.stdout.readline() == b"done\n"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err.decode()) == (0, "")


def test_second_converter_is_refused_and_a_dead_ones_lock_taken_over(source, tmp_path, capfd):
    root, want, _ = source
    out = tmp_path / "out"
    with locks.directory_lock(str(out / NAME), convert.LOCK):  # flock: another open file conflicts, here too
        code, err = _run(capfd, "--dataset", NAME, "--tfrecord-dir", root, "--data-dir", str(out))
    assert code == 1 and "in use by pid %d" % os.getpid() in err and "another converter" in err
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / NAME / convert.LOCK).write_text("%d\n" % dead.pid)  # left by a killed converter
    assert _run(capfd, "--dataset", NAME, "--tfrecord-dir", root, "--data-dir", str(out))[0] == 0
    assert _files(str(out)) == want  # and the lock file is gone


def _source_copy(root, tmp_path, files=2, scenes=3):
    """A fresh small source of `files` train files, and the path of its first file."""
    copy = str(tmp_path / "src")
    _write_source(copy, "train", files, scenes, seed=3)
    return copy, os.path.join(copy, NAME, "train", "1-of-%d.tfrecord" % files)


def _replace_record(path, number, frames=None, cameras=None):
    """Rewrite record `number` of a TFRecord file with other frames or cameras."""
    records = list(tfrecord.read_records(path))
    old_frames, old_cameras = tfrecord.decode_scene_example(records[number], VIEWS)
    records[number] = tfrecord.encode_example(frames or old_frames, old_cameras if cameras is None else cameras)
    tfrecord.write_records(path, records)


def _bad_frame(kind):
    rng = np.random.default_rng(0)
    frames = [_jpeg(rng) for _ in range(VIEWS)]
    frames[2] = {"empty": b"", "png": _jpeg(rng, ".png"), "grey": _jpeg(rng, grey=True)}[kind]
    return frames


@pytest.mark.parametrize("damage,message", [
    ("empty", "record 1: frame 2 is empty"),
    ("png", "record 1: frame 2 is not a JPEG (it starts with b'\\x89PNG\\r\\n\\x1a\\n')"),
    ("grey", "record 1: frame 2 is a 1-channel JPEG; expected 3 (colour)"),
    ("nan", "record 1: camera of view 4 is not finite: [0.0, 0.0, 0.0, nan, 0.0]"),
])
def test_bad_source_record_is_one_line_and_no_shard(source, tmp_path, capfd, damage, message):
    root, path = _source_copy(source[0], tmp_path)
    if damage == "nan":
        cameras = np.zeros((VIEWS, 5), np.float32)
        cameras[4, 3] = np.nan
        _replace_record(path, 1, cameras=cameras)
    else:
        _replace_record(path, 1, frames=_bad_frame(damage))
    code, err = _run(capfd, "--dataset", NAME, "--tfrecord-dir", root, "--data-dir", str(tmp_path / "out"), "--splits", "train")
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 1 and errors == ["error: %s: %s" % (path, message)]
    left = os.listdir(tmp_path / "out" / NAME / "train")
    assert not [n for n in left if n.startswith("1-of-2") or n.endswith(".tmp")] and "manifest.json" not in left


def _convert(root, out):
    """The in-process converter on the train split: its exit status."""
    return convert.main(["--dataset", NAME, "--tfrecord-dir", root, "--data-dir", out, "--splits", "train"])


@pytest.mark.parametrize("damage,reason", [
    ("truncate idx", "its files do not match what was written"),
    ("truncate rec", "its files do not match what was written"),
    ("source grew", "{path} changed since it was converted"),
])
def test_rerun_redoes_a_damaged_or_outdated_shard(source, tmp_path, capfd, damage, reason):
    root, path = _source_copy(source[0], tmp_path)
    out = str(tmp_path / "out")
    assert _convert(root, out) == 0
    want = _files(out)
    train = os.path.join(out, NAME, "train")
    if damage == "source grew":  # converted while downloading: the file ended after record 1
        whole, stamp = open(path, "rb").read(), os.stat(path).st_mtime_ns
        tfrecord.write_records(path, list(tfrecord.read_records(path))[:2])
        os.remove(os.path.join(train, "1-of-2" + convert.NOTE_SUFFIX))
        assert _convert(root, out) == 0
        assert scene_format.read_manifest(train)["scene_count"] == 5
        with open(path, "wb") as f:  # the whole file arrives
            f.write(whole)
        os.utime(path, ns=(stamp, stamp))
    else:
        target = os.path.join(train, "1-of-2." + damage.split()[1])
        data = open(target, "rb").read()
        with open(target, "wb") as f:
            f.write(data[:len(data) // 2])
    capfd.readouterr()
    assert _convert(root, out) == 0
    err = capfd.readouterr().err
    assert "redoing shard 1-of-2: " + reason.format(path=path) in err and "redoing shard 2-of-2" not in err
    assert _files(out) == want


@pytest.fixture
def converted(source, tmp_path):
    """A converted copy of the small source: (split directory, its manifest)."""
    root, _ = _source_copy(source[0], tmp_path, files=3, scenes=3)
    assert _convert(root, str(tmp_path / "out")) == 0
    split = str(tmp_path / "out" / NAME / "train")
    return split, scene_format.read_manifest(split)


def _edit_manifest(split, change):
    path = os.path.join(split, scene_format.MANIFEST)
    manifest = json.load(open(path))
    change(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def _flip(split, stem, record, where, count=1):
    """Flip `count` bytes of record `record` of shard `stem`: in a camera, or inside frame 0's image data."""
    rec = scene_format.shard_paths(split, stem)[0]
    start = int(scene_format.read_index(scene_format.shard_paths(split, stem)[1])[record]) + 8  # RecordIO header
    data = bytearray(open(rec, "rb").read())
    frame0 = int(np.frombuffer(bytes(data[start + 8:start + 12]), "<u4")[0])
    at = start + 8 + 4 * VIEWS + (7 if where == "camera" else 20 * VIEWS + frame0 - 40)
    for offset in range(count):
        data[at + offset] ^= 0x5A
    open(rec, "wb").write(bytes(data))
    return rec


def _one_line(error, *parts):
    text = str(error.value)
    assert "\n" not in text and all(part in text for part in parts), text


@pytest.mark.parametrize("where", ["camera", "jpeg"])
def test_flipped_byte_in_a_record_is_named_when_read(converted, where):
    split, _ = converted
    rec = _flip(split, "2-of-3", 1, where)
    scenes = loader.SceneDataset(os.path.dirname(split), "train")  # structure intact: opens
    assert scenes[3][0] and scenes[5][0]
    with pytest.raises(scene_format.DataError) as error:
        scenes[4]
    _one_line(error, rec + ": record 1: checksum mismatch")


def test_damaged_jpeg_mid_training_names_shard_and_record(converted):
    split, _ = converted
    rec = _flip(split, "3-of-3", 2, "jpeg", count=8)
    batches = loader.make_loader(os.path.dirname(split), "train", 3, 5, shuffle=False, num_workers=2)
    with pytest.raises(scene_format.DataError) as error:
        for _ in batches:
            pass
    _one_line(error, rec + ": record 2: checksum mismatch")


def _drop_shard(m):
    m["shards"].pop()
    m["scene_count"] -= 3


def _count(delta):
    def change(m):
        m["shards"][1]["scenes"] += delta
        m["scene_count"] += delta
    return change


@pytest.mark.parametrize("damage,message", [
    ("dropped", "3-of-3.rec: not listed in {manifest}"),
    ("count down", "2-of-3.idx: 3 records; {manifest} says 2"),
    ("count up", "2-of-3.idx: 3 records; {manifest} says 4"),
    ("scene_count", "{manifest}: scene_count 10, but its shards hold 9"),
    ("truncated rec", "2-of-3.rec: record 2: the file ends inside the record (truncated)"),
    ("appended rec", "2-of-3.rec: 5 bytes after the last record"),
    ("truncated idx", "2-of-3.idx: line 3 is cut short (truncated)"),
    ("missing rec", "3-of-3.rec: missing"),
    ("missing idx", "1-of-3.idx: missing"),
    ("json", "{manifest}: not valid JSON"),
    ("frame_size", "{manifest}: frame_size 32, but frame 0 of {split}/1-of-3.rec record 0 is 64x64 pixels"),
    ("views", "{manifest}: views_per_scene 11, but {split}/1-of-3.rec record 0 has 10 views"),
    ("version 1", "{manifest}: format version 1; this toolkit reads version 2: convert it again"),
])
def test_inconsistent_data_is_named_at_open_time(converted, damage, message):
    split, _ = converted
    rec, idx = scene_format.shard_paths(split, "2-of-3")
    edits = {
        "dropped": lambda: _edit_manifest(split, _drop_shard),
        "count down": lambda: _edit_manifest(split, _count(-1)),
        "count up": lambda: _edit_manifest(split, _count(1)),
        "scene_count": lambda: _edit_manifest(split, lambda m: m.update(scene_count=10)),
        "truncated rec": lambda: os.truncate(rec, os.path.getsize(rec) - 3),
        "appended rec": lambda: open(rec, "ab").write(b"extra"),
        "truncated idx": lambda: os.truncate(idx, os.path.getsize(idx) - 2),
        "missing rec": lambda: os.remove(scene_format.shard_paths(split, "3-of-3")[0]),
        "missing idx": lambda: os.remove(scene_format.shard_paths(split, "1-of-3")[1]),
        "json": lambda: open(os.path.join(split, scene_format.MANIFEST), "a").write("}"),
        "frame_size": lambda: _edit_manifest(split, lambda m: m.update(frame_size=32)),
        "views": lambda: _edit_manifest(split, lambda m: m.update(views_per_scene=11)),
        "version 1": lambda: _edit_manifest(split, lambda m: m.update(format_version=1)),
    }
    edits[damage]()
    with pytest.raises(scene_format.DataError) as error:
        loader.make_loader(os.path.dirname(split), "train", 2, 5)
    expected = message.format(manifest=os.path.join(split, scene_format.MANIFEST), split=split)
    _one_line(error, expected if expected.startswith("/") else os.path.join(split, expected))


def test_verify_names_each_bad_shard_and_record(converted, capfd):
    split, _ = converted
    out = os.path.dirname(os.path.dirname(split))
    assert convert.main(["--dataset", NAME, "--data-dir", out, "--verify"]) == 1  # test split never converted
    assert convert.main(["--dataset", NAME, "--data-dir", out, "--verify", "--splits", "train"]) == 0
    capfd.readouterr()
    bad = [_flip(split, "1-of-3", 0, "camera"), _flip(split, "3-of-3", 2, "jpeg")]
    os.truncate(scene_format.shard_paths(split, "2-of-3")[0], 100)
    assert convert.main(["--dataset", NAME, "--data-dir", out, "--verify", "--splits", "train"]) == 1
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    two = scene_format.shard_paths(split, "2-of-3")[0]
    assert errors == ["error: %s: record 0: checksum mismatch: the record is damaged" % bad[0]] + [
        "error: %s: record %d: the file ends inside the record (truncated)" % (two, r) for r in range(3)] + [
        "error: %s: record 2: checksum mismatch: the record is damaged" % bad[1]]
    assert "%s/train: 5 problems" % NAME in err and "verify %s/train" % NAME in err  # the progress bar


def _render(out):
    """`python -m gqn.synthetic` with 2 render processes, in its own session."""
    return subprocess.Popen([sys.executable, "-m", "gqn.synthetic", "--dataset", "rooms_ring", "--data-dir", out,
                             "--train-scenes", "2000", "--workers", "2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_default_sigint)


def _ignores(pid, signum):
    with open("/proc/%d/status" % pid) as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask >> (signum - 1) & 1)


def test_render_workers_leave_ctrl_c_to_their_parent_and_die_with_it(tmp_path):
    """A render worker stopped by Ctrl-C in the middle of reading the task queue can leave Pool.terminate
    waiting for the queue's lock for ever; so only the parent takes Ctrl-C, and a killed parent takes its
    workers with it."""
    proc = _render(str(tmp_path / "scenes"))
    try:
        workers, _ = _workers_of(proc)
        deadline = time.monotonic() + 10  # each worker sets it in its initializer, just after the fork
        while not all(_ignores(pid, signal.SIGINT) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(_ignores(pid, signal.SIGINT) for pid in workers)
        proc.kill()
        proc.wait()
        assert _wait_gone(workers) == []
    finally:
        proc.kill()


def test_ctrl_c_while_rendering_ends_the_run(tmp_path):
    rng = random.Random(10)
    for trial in range(3):
        out = str(tmp_path / str(trial))
        proc = _render(out)
        try:
            workers, _ = _workers_of(proc)
            time.sleep(rng.uniform(0, 1.0))
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(60) != 0, "trial %d" % trial
            assert _wait_gone(workers) == [], "trial %d" % trial
            assert not os.path.exists(os.path.join(out, "train", scene_format.MANIFEST))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
