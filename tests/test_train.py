"""train_gqn.py end to end on tiny synthetic data: outputs, TensorBoard events, learning, resume, errors, dist_sync."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest
from reference_gqn import randomize_latent_heads

from gqn.images import HEADER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(*flags, timeout=120):
    cmd = [sys.executable, os.path.join(ROOT, "train_gqn.py"), "--dry-run"] + [str(f) for f in flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    done = train("--data-dir", root, "--run-dir", root / "warmup", "--max-steps", 1)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def params_of(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def metrics_of(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [m for m in map(json.loads, f) if m["kind"] == kind]


def test_dry_run_writes_checkpoint_logs_and_grid(data_dir, tmp_path):
    run = tmp_path / "run"
    done = train("--data-dir", data_dir, "--run-dir", run)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and state["model"]["steps"] == 2 and state["model"]["image_size"] == 16
    assert (run / "checkpoint" / "model.params").stat().st_size > 0
    assert (run / "checkpoint" / "trainer.states").stat().st_size > 0
    from PIL import Image
    grid = np.asarray(Image.open(run / "val-grid-latest.png"))
    assert grid.shape == (HEADER + 4 * 18 + 2, (3 + 2 + 1) * 18 + 2, 3)  # 4 scenes; 3 context | sample, recon | truth
    assert (grid[:HEADER] < 128).any() and (grid[:HEADER] == 255).mean() > 0.5  # a legend: dark text on white
    assert len(metrics_of(run, "val")) == 2 and len(metrics_of(run, "train")) == 4
    assert np.asarray(Image.open(run / "curves.png")).shape[2] in (3, 4)


def test_tensorboard_reads_scalars_and_image(data_dir, tmp_path):
    run = tmp_path / "run"
    assert train("--data-dir", data_dir, "--run-dir", run).returncode == 0
    code = ("import mxnet\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
            "ea = EventAccumulator(%r, size_guidance={'images': 0, 'scalars': 0}); ea.Reload()\n"
            "from tensorboard.plugins.custom_scalar import layout_pb2\n"
            "config = ea.Tensors('custom_scalars__config__')[0].tensor_proto.string_val[0]\n"
            "layout = layout_pb2.Layout.FromString(config)\n"
            "charts = [[t for t in c.multiline.tag] for g in layout.category for c in g.chart]\n"
            "import json; print(json.dumps({'tags': ea.Tags(), 'elbo': [e.value for e in ea.Scalars('train/elbo')],"
            " 'image': ea.Images('val/grid')[-1].width, 'charts': charts}))" % str(run))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    for tag in ("train/elbo", "train/nll", "train/kl", "train/mse", "schedule/lr", "schedule/sigma",
                "train/samples_per_s", "val/elbo", "val/nll", "val/kl", "val/mse_prior_sample", "val/sample_spread", "val/colour_corr",
                "val/mse_nearest_view", "val/mse_mean_context", "val/mse_objects_prior_sample",
                "val/mse_objects_nearest_view", "val/mse_objects_mean_context", "val/mse_background_prior_sample",
                "val/mse_background_nearest_view", "val/mse_background_mean_context"):
        assert tag in found["tags"]["scalars"], tag
    assert "val/grid" in found["tags"]["images"] and found["image"] == (3 + 2 + 1) * 18 + 2
    assert len(found["elbo"]) == 4 and all(np.isfinite(found["elbo"]))
    beside = [chart for chart in found["charts"] if any(re.match(t, "val/mse_prior_sample") for t in chart)]
    assert len(beside) == 1  # the model in one chart with both baselines
    for tag in ("val/mse_nearest_view", "val/mse_mean_context"):
        assert any(re.match(t, tag) for t in beside[0]), tag


def test_resume_continues_the_same_run(data_dir, tmp_path):
    """A run stopped at step 3 and resumed ends as one uninterrupted run; the resume adds a learning-rate cool-down
    over the last 4 steps, which the whole run had from its start (a resume may change the schedules)."""
    common = ["--data-dir", data_dir, "--checkpoint-every", 3, "--val-every", 100]
    cooldown = ["--lr-cooldown-steps", 4, "--lr-cooldown-final", 1e-5]
    whole = train(*common, *cooldown, "--run-dir", tmp_path / "whole", "--max-steps", 7)  # crosses an epoch (4 batches)
    assert whole.returncode == 0, whole.stderr[-2000:]
    half = train(*common, "--run-dir", tmp_path / "half", "--max-steps", 3)
    assert half.returncode == 0, half.stderr[-2000:]
    resumed = train("--resume", tmp_path / "half", "--max-steps", 7, *cooldown)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step 3" in resumed.stdout
    a, b = params_of(tmp_path / "whole/checkpoint/model.params"), params_of(tmp_path / "half/checkpoint/model.params")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    curve = lambda run: [m["elbo"] for m in metrics_of(run, "train") if m["step"] > 3]
    np.testing.assert_allclose(curve(tmp_path / "half"), curve(tmp_path / "whole"), rtol=1e-5)
    base = lambda step: 5e-4 - (5e-4 - 5e-5) * step / 1600000  # the dry run's schedule; the cool-down starts at 3
    lrs = [m["lr"] for m in metrics_of(tmp_path / "half", "schedule")]  # logged at step s: the rate of step s - 1
    np.testing.assert_allclose(lrs, [base(0), base(1), base(2)] + [base(3) + (1e-5 - base(3)) * i / 4
                                                                   for i in range(4)], rtol=1e-6)


def sgd_update(micro_batch, seed=3, hybridize=True, ctxs=(mx.cpu(),)):
    """Parameters minus their values after one plain SGD step (lr 1) of gqn.training.train_step on devices `ctxs`:
    the mean gradient."""
    import core
    from gqn import training
    from gqn.loader import Batch
    config = core.ModelConfig(image_size=16, steps=2, latent=4, hidden=8, r_channels=8, kernel=3)
    mx.random.seed(seed)
    model = core.GQN(config, prefix="gqn_")  # the same parameter names in both calls
    model.initialize(mx.init.Xavier(), ctx=list(ctxs))
    randomize_latent_heads(model, mx.init.Xavier())  # so that every parameter gets a gradient in one step
    if hybridize:
        model.hybridize(static_alloc=True, static_shape=True)
    trainer = mx.gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 1.0})
    training.accumulate_gradients(model, 4 // len(ctxs), micro_batch)
    rng = np.random.default_rng(seed)
    batch = Batch(*(mx.nd.array(a) for a in (rng.uniform(size=(4, 3, 3, 16, 16)), rng.normal(size=(4, 3, 7)),
                                             [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], rng.normal(size=(4, 7)),
                                             rng.uniform(size=(4, 3, 16, 16)))))
    before = {k: v.data(ctxs[0]).asnumpy() for k, v in model.collect_params().items()}
    mx.random.seed(seed)  # the same noise
    training.train_step(model, trainer, batch, list(ctxs), 0.5, 4, micro_batch)
    for ctx in ctxs[1:]:  # every device holds the same updated parameters
        for name, param in model.collect_params().items():
            np.testing.assert_array_equal(param.data(ctx).asnumpy(), param.data(ctxs[0]).asnumpy(), err_msg=name)
    return {k: before[k] - v.data(ctxs[0]).asnumpy() for k, v in model.collect_params().items()}


@pytest.mark.parametrize("hybridize", [True, False])
def test_micro_batches_give_the_same_gradient(hybridize):
    """Two passes of 2 scenes, grad_req 'add' == one pass of 4 (hybridized it was wrong before core's identity ops)."""
    whole, micro = sgd_update(0, hybridize=hybridize), sgd_update(2, hybridize=hybridize)
    for name in whole:
        scale = np.linalg.norm(whole[name])
        assert scale > 0, name
        assert np.linalg.norm(micro[name] - whole[name]) <= 1e-4 * scale, name


@pytest.mark.parametrize("micro_batch", [0, 1])
def test_two_devices_give_the_same_update_as_one(micro_batch):
    """Two CPU contexts run the code path of two GPUs: the batch and its noise split, gradients summed over devices."""
    one, two = sgd_update(micro_batch), sgd_update(micro_batch, ctxs=(mx.cpu(0), mx.cpu(1)))
    for name in one:
        scale = np.linalg.norm(one[name])
        assert scale > 0, name
        assert np.linalg.norm(two[name] - one[name]) <= 1e-4 * scale, name


def test_training_on_two_devices_checkpoints_and_resumes(data_dir, tmp_path):
    """train_gqn.py --devices cpu:0,cpu:1 (the data-parallel path), interrupted and resumed, ends where one
    uninterrupted two-device run ends."""
    common = ["--data-dir", data_dir, "--devices", "cpu:0,cpu:1", "--checkpoint-every", 2, "--val-every", 100]
    whole = train(*common, "--run-dir", tmp_path / "whole", "--max-steps", 4)
    assert whole.returncode == 0, whole.stderr[-2000:]
    half = train(*common, "--run-dir", tmp_path / "half", "--max-steps", 2)
    assert half.returncode == 0, half.stderr[-2000:]
    resumed = train("--resume", tmp_path / "half", "--max-steps", 4)
    assert resumed.returncode == 0 and "resumed at step 2" in resumed.stdout, resumed.stderr[-2000:]
    a, b = params_of(tmp_path / "whole/checkpoint/model.params"), params_of(tmp_path / "half/checkpoint/model.params")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert json.loads((tmp_path / "half/config.json").read_text())["config"]["devices"] == "cpu:0,cpu:1"


def test_an_averaged_run_resumes_to_the_same_average_and_the_tools_load_it(data_dir, tmp_path):
    """--average-steps: the checkpoint holds the average beside the weights; a run stopped at step 10 and resumed
    ends with the average an uninterrupted run has; evaluate/render/export (runs.load_model) load the average."""
    import core
    from gqn import runs
    common = ["--data-dir", data_dir, "--checkpoint-every", 10, "--val-every", 100, "--average-steps", 4]
    whole = train(*common, "--run-dir", tmp_path / "whole", "--max-steps", 30)
    assert whole.returncode == 0, whole.stderr[-2000:]
    half = train(*common, "--run-dir", tmp_path / "half", "--max-steps", 10)
    assert half.returncode == 0, half.stderr[-2000:]
    resumed = train("--resume", tmp_path / "half", "--max-steps", 30)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (params_of(tmp_path / run / "checkpoint/average.params") for run in ("whole", "half"))
    weights = params_of(tmp_path / "whole/checkpoint/model.params")
    assert a.keys() == b.keys() == weights.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert any(np.abs(a[name] - weights[name]).max() > 1e-6 for name in a)  # the average is not the weights
    model, _ = runs.load_model(str(tmp_path / "whole"), mx.cpu(), core.GQN.from_config)
    loaded = model._collect_params_with_prefix()
    for name in a:
        np.testing.assert_array_equal(loaded[name].data().asnumpy(), a[name], err_msg=name)


def test_the_parameter_average_is_the_exponential_average_of_the_weights_every_ten_steps():
    from gqn.average import EVERY, ParameterAverage
    model, _ = tiny_model_and_batch()
    params = model.collect_params()
    average = ParameterAverage(model, steps=20)
    decay = (1 - 1 / 20) ** EVERY
    expected = {name: p.data().asnumpy() for name, p in params.items()}
    rng = np.random.default_rng(1)
    for step in range(1, 31):
        for param in params.values():
            param.set_data(mx.nd.array(rng.normal(size=param.shape)))
        average.update(step)
        if step % EVERY == 0:
            expected = {name: decay * value + (1 - decay) * params[name].data().asnumpy()
                        for name, value in expected.items()}
    own = {name: p.data().asnumpy() for name, p in params.items()}
    with average.swapped_in():
        for name, param in params.items():
            np.testing.assert_allclose(param.data().asnumpy(), expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name, param in params.items():
        np.testing.assert_array_equal(param.data().asnumpy(), own[name], err_msg=name)


def tiny_model_and_batch():
    """A small random GQN at 16px and a batch of 6 random scenes with 2 context views."""
    import core
    from gqn.loader import Batch
    config = core.ModelConfig(image_size=16, steps=2, latent=4, hidden=8, r_channels=8, kernel=3)
    model = core.GQN(config)
    model.initialize(mx.init.Xavier())
    rng = np.random.default_rng(0)
    batch = Batch(*(mx.nd.array(a) for a in (rng.uniform(size=(6, 2, 3, 16, 16)), rng.normal(size=(6, 2, 7)),
                                             np.ones((6, 2)), rng.normal(size=(6, 7)), rng.uniform(size=(6, 3, 16, 16)))))
    return model, batch


def test_validation_region_figures_split_the_whole_image_ones():
    from gqn import training
    model, batch = tiny_model_and_batch()
    top = np.zeros((6, 16, 16), bool)
    top[:, :8] = True                                                   # as many object pixels as background ones
    metrics = training.validate(model, [batch], 1.0, seed=0, query_masks=[top])[0]
    for predictor in ("prior_sample", "nearest_view", "mean_context"):
        halves = metrics["mse_objects_" + predictor] + metrics["mse_background_" + predictor]
        np.testing.assert_allclose(halves / 2, metrics["mse_" + predictor], rtol=1e-5, err_msg=predictor)
    assert metrics["mse_objects_prior_sample"] != metrics["mse_background_prior_sample"]


def test_sample_spread_is_zero_only_for_a_model_that_ignores_its_inputs():
    from gqn import training
    model, batch = tiny_model_and_batch()
    assert training.validate(model, [batch], 1.0, seed=0)[0]["sample_spread"] > 1e-3
    for param in model.collect_params().values():  # every weight 0: sigmoid(0) = 0.5 wherever, whatever the scene
        param.set_data(mx.nd.zeros(param.shape))
    assert training.validate(model, [batch], 1.0, seed=0)[0]["sample_spread"] < 1e-6


def test_colour_correlation_tells_coloured_from_grey_renderings():
    from gqn.images import colour_correlation
    rng = np.random.default_rng(0)
    targets = rng.uniform(0.2, 0.8, (256, 3, 1, 1)) + rng.uniform(-0.1, 0.1, (256, 3, 8, 8))  # a colour cast per scene
    assert colour_correlation(targets, targets) > 0.999
    assert colour_correlation(0.5 * targets + 0.2, targets) > 0.999  # a duller copy keeps the casts
    grey = np.repeat(targets.mean(axis=1, keepdims=True), 3, axis=1)  # the right brightness, no colour
    assert abs(colour_correlation(grey, targets)) < 1e-6
    assert abs(colour_correlation(targets[::-1], targets)) < 0.2  # the colours of other scenes


def test_loader_workers_across_epochs(data_dir, tmp_path):
    """The loader is rebuilt every epoch (4 batches here); with forked workers that shutdown could hang for ever."""
    done = train("--data-dir", data_dir, "--run-dir", tmp_path / "run", "--max-steps", 24, "--workers", 2,
                 "--val-every", 100, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


def test_loss_falls_when_overfitting_a_few_scenes(data_dir, tmp_path):
    run = tmp_path / "run"
    done = train("--data-dir", data_dir, "--run-dir", run, "--max-steps", 60, "--sigma-initial", 0.1,
                 "--sigma-final", 0.1, "--lr-initial", 3e-3, "--lr-final", 3e-3, "--log-every", 5, "--val-every", 60)
    assert done.returncode == 0, done.stderr[-2000:]
    elbo = [m["elbo"] for m in metrics_of(run, "train")]
    assert np.mean(elbo[-3:]) < 0.7 * np.mean(elbo[:2]), elbo


@pytest.mark.parametrize("signum, workers, group", [(signal.SIGINT, 0, False), (signal.SIGINT, 2, True),
                                                    (signal.SIGTERM, 2, True)])
def test_a_signal_saves_a_checkpoint_and_exits_with_its_status(data_dir, tmp_path, signum, workers, group):
    """To the trainer alone, or to its whole process group with loader workers (Ctrl-C; pkill -f): a checkpoint,
    then 128 + the signal's number (130, 143), so a script tells an interrupted run from a finished one."""
    run = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "train_gqn.py"), "--dry-run", "--data-dir", str(data_dir),
           "--run-dir", str(run), "--max-steps", 100000, "--checkpoint-every", 100000, "--val-every", 100000,
           "--workers", workers]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err[-2000:]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] > 0 and "signal %d" % signum in out


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    done = train("--data-dir", data_dir, "--run-dir", run, "--max-steps", 50, "--checkpoint-every", 1,
                 "--lr-initial", 1e30, "--lr-final", 1e30)
    assert done.returncode != 0
    assert "not finite" in done.stderr and "last good checkpoint" in done.stderr
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert 0 < state["step"] < 50


@pytest.mark.parametrize("flags, message", [
    (["--representation", "cube"], "invalid choice: 'cube' (choose from 'pool', 'pyramid', 'tower')"),
    (["--dataset", "roomz"], "invalid choice: 'roomz'"),
    (["--shared-cores", "maybe"], "unrecognized arguments: maybe"),
    (["--dataset", "rooms_ring_camera"], "dataset 'rooms_ring_camera' not found"),
    (["--max-context", 12], "--max-context 12: valid 1..9"),
    (["--min-context", 4], "--min-context 4: valid 1..3 (the most context views, --max-context)"),
    (["--resume", "/nonexistent/run"], "no checkpoint there"),
    (["--sigma-final", 0], "argument --sigma-final: 0: valid above 0"),
    (["--lr-warmup-steps", 5, "--lr-steps", 5], "--lr-warmup-steps 5: valid 0..4"),
    (["--lr-cooldown-steps", 5], "--lr-cooldown-steps 5: valid 0..4 (the run's --max-steps)"),
    (["--micro-batch", 3], "--micro-batch 3 does not divide the 4 scenes"),
])
def test_bad_flags_and_missing_data_give_clear_errors(data_dir, tmp_path, flags, message):
    done = train("--data-dir", data_dir if "rooms_ring_camera" not in flags else tmp_path,
                 "--run-dir", tmp_path / "run", *flags)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-1500:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # nothing left behind: a failed new run used to leave its empty directory


def run_dist_sync(data_dir, run_dir):
    """Scheduler, server and two workers on 127.0.0.1 through launch.py -> each worker's final parameters."""
    env = {k: v for k, v in os.environ.items() if k != "PORT"}  # a PORT variable breaks ps-lite's binding
    env.update(DMLC_INTERFACE="lo", DMLC_PS_ROOT_URI="127.0.0.1", DMLC_NODE_HOST="127.0.0.1")
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "-n", "2", "-s", "1", "--launcher", "local",
           sys.executable, os.path.join(ROOT, "train_gqn.py"), "--dry-run", "--data-dir", str(data_dir),
           "--run-dir", str(run_dir), "--kvstore", "dist_sync", "--max-steps", "3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["step"] == 3
    return [params_of(run_dir / ("rank%d.params" % r)) for r in (0, 1)]


def differing(ranks):
    return sorted(name for name in ranks[0] if not np.array_equal(ranks[0][name], ranks[1][name]))


def test_dist_sync_workers_end_with_identical_parameters(data_dir, tmp_path):
    # Without gqn.training.start_kvstore, MXNet's Trainer pulled the initial weights inside the first step, unordered
    # with the gradient pushes: in about 1 run in 3 a worker started from summed gradients (write_weight, key 0).
    ranks = run_dist_sync(data_dir, tmp_path / "run")
    assert ranks[0].keys() == ranks[1].keys()
    assert differing(ranks) == []
    for name in ranks[0]:
        assert np.isfinite(ranks[0][name]).all(), name
