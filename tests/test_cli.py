"""The command lines as a user types them: flags checked before anything is written, one vocabulary, no prefix
matching, GPUs that fail early, runs that work from any directory, the shipped demo on a fresh clone."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ["train_gqn.py", "evaluate_gqn.py", "render_gqn.py", "export_gqn.py", "data/gqn_data_to_recordio.py",
         "-m gqn.synthetic", "bench/bench_loader.py", "bench/bench_step.py", "bench/profile_step.py",
         "bench/leak_check.py", "bench/denormals.py", "bench/bench_progress.py", "bench/compare.py",
         "bench/dnnl_profile.py", "bench/bench_train.py"]


def command(tool, *flags, cwd=ROOT, timeout=180):
    script = tool.split() if tool.startswith("-m") else [os.path.join(ROOT, tool)]
    env = dict(os.environ, PYTHONPATH=ROOT)  # python -m gqn.synthetic from another directory
    return subprocess.run([sys.executable, *script, *map(str, flags)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def one_line_error(done):
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("flags, message", [
    (["--val-every", 0], "argument --val-every: 0: valid 1 or more"),
    (["--log-every", 0], "argument --log-every: 0: valid 1 or more"),
    (["--checkpoint-every", 0], "argument --checkpoint-every: 0: valid 1 or more"),
    (["--workers", -1], "argument --workers: -1: valid 0 or more"),
    (["--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
    (["--minutes", "nan"], "argument --minutes: nan: valid 0 or more"),
    (["--generation-steps", 0], "argument --generation-steps: 0: valid 1 or more"),
    (["--image-size", 30], "--image-size 30: must be a multiple of 4"),
    (["--checkpoint", "runs/x"], "unrecognized arguments: --checkpoint"),   # not --checkpoint-every
    (["--gpu", "0"], "unrecognized arguments: --gpu"),                       # not --gpus/--devices
    (["--amp", "1"], "unrecognized arguments: 1"),                           # booleans are --amp / --no-amp
    (["--devices", "gpu0"], "argument --devices: 'gpu0': valid items are cpu, cpu:N and gpu:N"),
])
def test_bad_training_flags_fail_at_once_on_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    import train_gqn
    with pytest.raises(SystemExit):
        train_gqn.main(["--dry-run", "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run")]
                       + [str(f) for f in flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert os.listdir(tmp_path) == []


def test_a_bad_flag_as_typed_is_one_line(tmp_path):
    line = one_line_error(command("train_gqn.py", "--run-dir", tmp_path / "run", "--val-every", 0, timeout=60))
    assert line == "train_gqn.py: error: argument --val-every: 0: valid 1 or more (--help lists every flag)"
    assert os.listdir(tmp_path) == []


def test_gpus_on_a_build_without_cuda_name_the_package_before_any_data_is_made(tmp_path, capsys):
    import mxnet as mx
    import evaluate_gqn
    import render_gqn
    if mx.context.num_gpus() > 0:
        pytest.skip("this MXNet build has GPUs: the check passes")
    lines = [one_line_error(command("train_gqn.py", "--dry-run", "--data-dir", tmp_path / "data", "--run-dir",
                                    tmp_path / "run", "--devices", "gpu:0", timeout=60))]
    for main, argv in [(evaluate_gqn.main, [os.path.join(ROOT, "assets", "demo"), "--data-dir", str(tmp_path)]),
                       (render_gqn.main, ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])]:
        with pytest.raises(SystemExit):
            main(argv + ["--devices", "gpu:0"])
        lines += capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert "--devices gpu:0 asks for a GPU" in line and "mxnet-cu112" in line and "CUDA 11.2" in line, line
    assert os.listdir(tmp_path) == []


def run_tool(tool, argv, monkeypatch):
    """Run a tool's command line in this process (a subprocess per tool would load MXNet each time) -> exit code."""
    monkeypatch.setattr(sys, "argv", [tool] + argv)
    try:
        if tool.startswith("-m "):
            runpy.run_module(tool[3:], run_name="__main__", alter_sys=True)
        else:
            monkeypatch.syspath_prepend(os.path.dirname(os.path.join(ROOT, tool)))  # as `python SCRIPT` has it
            runpy.run_path(os.path.join(ROOT, tool), run_name="__main__")
    except SystemExit as done:
        return done.code
    return 0


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_refuses_flag_prefixes_and_shows_examples(tool, monkeypatch, capsys):
    assert run_tool(tool, ["--help"], monkeypatch) == 0
    shown = capsys.readouterr().out
    assert "example" in shown.lower(), shown
    flags = [word.rstrip(",") for word in shown.split() if word.startswith("--") and len(word) > 6
             and word.rstrip(",")[2:].replace("-", "").isalpha() and word != "--help"]
    prefix = flags[0][:-2]
    assert run_tool(tool, [prefix, "1"], monkeypatch) == 2
    error = capsys.readouterr().err
    assert "unrecognized arguments: %s" % prefix in error or "required: %s" % flags[0] in error, (prefix, error)


def test_the_last_step_validates_once_and_kl_shows_its_digits(tmp_path):
    """The last step (3) validates in the loop; it used to validate again after the final checkpoint. The bar's kl
    (near 0 at pixel sigma 2) used to read 0.0 throughout."""
    run = tmp_path / "run"
    done = command("train_gqn.py", "--dry-run", "--data-dir", tmp_path / "data", "--run-dir", run, "--max-steps", 3,
                   "--val-every", 3, "--checkpoint-every", 2)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(run / "metrics.jsonl") as f:
        val_steps = [m["step"] for m in map(json.loads, f) if m["kind"] == "val"]
    assert val_steps == [3] and done.stdout.count("validation:") + done.stderr.count("validation:") == 1
    shown = re.findall(r"kl=([^,\]]+)", done.stderr)
    assert any(float(v) != 0 for v in shown), shown
    assert all(float(v) == 0 or len(v.rstrip("0").lstrip("0.")) >= 2 for v in shown), shown


def test_a_run_resumes_evaluates_and_renders_from_another_directory(tmp_path):
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir()
    elsewhere.mkdir()
    done = command("train_gqn.py", "--dry-run", "--data-dir", "datasets", "--run-dir", "run", "--max-steps", 2,
                   cwd=made)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((made / "run" / "config.json").read_text())["config"]
    assert config["data_dir"] == str(made / "datasets") and os.path.isabs(config["log_dir"])
    run = os.path.join("..", "made", "run")
    for tool, flags in [("train_gqn.py", ["--resume", run, "--max-steps", 3]),
                        ("evaluate_gqn.py", [run, "--scenes", 2, "--samples", 1]),
                        ("render_gqn.py", [run, "--views", 2, "--out-dir", "render"])]:
        done = command(tool, *flags, cwd=elsewhere)
        assert done.returncode == 0, (tool, done.stderr[-2000:])
    assert json.loads((made / "run" / "checkpoint" / "state.json").read_text())["step"] == 3
    assert sorted(os.listdir(elsewhere)) == ["render"]  # no data rendered here, the evaluation went into the run
    assert (made / "run" / "eval-test.json").exists()
    assert sorted(os.listdir(made / "datasets")) == ["rooms_ring-16px-40"]


def test_the_shipped_demo_evaluates_on_a_fresh_clone(tmp_path):
    """evaluate_gqn.py assets/demo renders the demo's held-out scenes on first use, beside the clone's assets/."""
    clone = tmp_path / "clone"
    shutil.copytree(os.path.join(ROOT, "assets", "demo"), clone / "assets" / "demo")
    done = command("evaluate_gqn.py", clone / "assets" / "demo", "--scenes", 4, "--samples", 1, "--max-context", 2,
                   "--json", tmp_path / "eval.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    scenes = json.loads((clone / "assets" / "demo" / "state.json").read_text())["config"]["train_scenes"]
    dataset = clone / "datasets" / ("rooms_ring-32px-%d" % scenes)
    manifest = json.loads((dataset / "test" / "manifest.json").read_text())
    assert manifest["scene_count"] == scenes // 10 and manifest["frame_size"] == 32
    assert not (dataset / "train").exists()  # only what evaluation needs
    assert sorted(json.loads((tmp_path / "eval.json").read_text())["metrics"]) == ["1", "2"]


class Loss:
    """Stands for a step's loss NDArray: records when the bar waits for it."""

    def __init__(self, step, waited):
        self.step, self.waited = step, waited

    def wait_to_read(self):
        self.waited.append(self.step)


def test_the_bar_counts_finished_steps_and_aims_at_the_deadline(monkeypatch):
    import train_gqn
    clock, waited = [1000.0], []
    monkeypatch.setattr(train_gqn.time, "time", lambda: clock[0])
    progress = train_gqn.Progress(10, 100000, deadline=1100.0, enabled=True)
    progress.queued([{"elbo": Loss(11, waited)}])
    assert progress.bar.n == 10 and waited == []          # queued, not finished: not counted
    clock[0] += 4.0
    progress.queued([{"elbo": Loss(12, waited)}])
    assert waited == [11] and progress.bar.n == 11        # counted once its loss was ready
    assert progress.bar.total == 11 + 24                  # 1 step per 4 s, 96 s to the deadline
    progress.close()
    assert waited == [11, 12] and progress.bar.n == 12


SMALL_MODEL = ["--max-steps", 1, "--val-every", 1, "--checkpoint-every", 1, "--log-every", 1, "--batch-size", 2,
               "--val-scenes", 2, "--generation-steps", 1, "--hidden", 8, "--latent", 4, "--r-channels", 8]


def readme_commands(section):
    """The shell commands of data/README.md's `section`, as written."""
    with open(os.path.join(ROOT, "data", "README.md")) as f:
        text = f.read().split("## " + section, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [line.split("#")[0].split() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_data_readme_synthetic_examples_make_data_that_training_finds(tmp_path):
    """Each command as data/README.md shows it, with fewer scenes, a tiny model and paths under tmp_path: training
    must read what gqn.synthetic (and the converter) wrote, not render its own."""
    commands = readme_commands("Synthetic scenes")
    assert [c[1] if c[1] != "-m" else c[2] for c in commands].count("train_gqn.py") == 3
    fewer = {"2000": 20, "5000": 30, "500": 20}
    for number, words in enumerate(commands):
        words = [str(tmp_path / "data") if w == "datasets" else str(tmp_path / "tf") if w == "/tmp/gqn-tf" else w
                 for w in words]
        words = [str(fewer[w]) if i and words[i - 1] == "--train-scenes" else w for i, w in enumerate(words)]
        if words[1] == "train_gqn.py":
            scenes = {w: os.stat(os.path.join(tmp_path / "data", w)).st_mtime_ns for w in os.listdir(tmp_path / "data")}
            extra = [] if "--train-scenes" in words else ["--train-scenes", 20]  # the preset's 2000, made smaller
            done = command(*words[1:], *extra, *SMALL_MODEL, "--run-dir", tmp_path / ("run%d" % number))
            assert done.returncode == 0, (words, done.stderr[-2000:])
            assert "scene/s" not in done.stderr, words  # nothing rendered: it found the dataset
            assert scenes == {w: os.stat(os.path.join(tmp_path / "data", w)).st_mtime_ns for w in scenes}
        else:
            tool = " ".join(words[1:3]) if words[1] == "-m" else words[1]
            done = command(tool, *words[3 if words[1] == "-m" else 2:])
            assert done.returncode == 0, (words, done.stderr[-2000:])
    made = ["rooms_ring-32px-20", "rooms_ring-64px-20", "shepard_metzler-64px-30"]
    assert sorted(os.listdir(tmp_path / "data")) == made
