"""evaluate_gqn.py, render_gqn.py and export_gqn.py on a dry-run checkpoint: JSON, determinism, GIF, grid, export."""
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

import core
import evaluate_gqn
import export_gqn
import render_gqn
from gqn import synthetic
from gqn.images import HEADER, PAD
from gqn.loader import SceneDataset, make_loader
from gqn.predictor import Predictor
from gqn.runs import load_model, run_dataset_root
from gqn.scene_format import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, VIEWS, K = 16, 10, 3  # the dry-run preset: 16px frames, 10 views per scene, max_context 3
METRICS = {"elbo", "nll", "kl", "bits_per_dim", "mse_prior_sample", "mse_prior_mean", "mse_posterior",
           "mse_nearest_view", "mse_mean_context", "gain_over_nearest_view", "gain_over_mean_context"}
METRICS |= {"mse_%s_%s" % (region, predictor) for region in ("objects", "background")
            for predictor in ("prior_sample", "nearest_view", "mean_context")}
METRICS |= {"gain_%s_over_%s" % (region, baseline) for region in ("objects", "background")
            for baseline in ("nearest_view", "mean_context")}


def dry_run(root, *flags):
    cmd = [sys.executable, os.path.join(ROOT, "train_gqn.py"), "--dry-run", "--data-dir", str(root / "data"),
           "--run-dir", str(root / "run")] + list(flags)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp("eval"))


def evaluate(run, out, *flags):
    evaluate_gqn.main([str(run), "--json", str(out), "--samples", "2"] + [str(f) for f in flags])
    with open(out) as f:
        return json.load(f)


def test_evaluation_json_has_every_k_and_metric_and_repeats_for_a_seed(run, tmp_path, capsys):
    first = evaluate(run, tmp_path / "a.json", "--seed", 5)
    table = capsys.readouterr().out
    again = evaluate(run, tmp_path / "b.json", "--seed", 5, "--batch-size", 3)  # batches of 3 + 1: same scenes
    other = evaluate(run, tmp_path / "c.json", "--seed", 6)
    assert first["scenes"] == 4 and first["max_context"] == K and first["sigma"] == 0.7  # the run's sigma_final
    assert sorted(first["metrics"]) == sorted(first["sem"]) == ["1", "2", "3"]
    for k in "123":
        assert set(first["metrics"][k]) == METRICS and all(np.isfinite(list(first["metrics"][k].values())))
        for name in METRICS:
            # atol: another batch size sums in another order (oneDNN's blocking differs by CPU), and the KL here is
            # ~1e-3, a difference of far larger terms; other scenes would move every metric by far more
            np.testing.assert_allclose(again["metrics"][k][name], first["metrics"][k][name], rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        assert other["metrics"][k]["mse_prior_sample"] != first["metrics"][k]["mse_prior_sample"]
    assert evaluate(run, tmp_path / "d.json", "--seed", 5)["metrics"] == first["metrics"]  # bit for bit
    one = first["metrics"]["1"]
    assert one["mse_nearest_view"] == one["mse_mean_context"]  # one context view: both baselines are that view
    assert all(name in table for name in ("-ELBO", "bits/dim", "MSE nearest", "obj sample", "bac ctx-mean",
                                          "k=3 gain over mean context: whole image")) and len(table.splitlines()) >= 10
    assert set(first["scenes_with_objects"]) == {"1", "2", "3"}


def test_evaluation_renders_missing_masks_of_a_synthetic_split(run, tmp_path):
    first = evaluate(run, tmp_path / "a.json", "--max-context", 1)
    split_dir = first["data"]
    for name in os.listdir(split_dir):
        if name.endswith(".masks.npz"):
            os.remove(os.path.join(split_dir, name))
    again = evaluate(run, tmp_path / "b.json", "--max-context", 1)
    assert again["metrics"] == first["metrics"] and any(n.endswith(".masks.npz") for n in os.listdir(split_dir))


def test_every_k_scores_the_same_targets_with_nested_contexts(run):
    root = run_dataset_root(load_model(str(run), mx.cpu(), core.GQN.from_config)[1])
    batches = {k: next(iter(make_loader(root, "test", 4, K, shuffle=False, seed=0, fixed_k=k))) for k in (1, 3)}
    np.testing.assert_array_equal(batches[1].target.asnumpy(), batches[3].target.asnumpy())
    first_view = [batches[k].context_frames[:, 0].asnumpy() for k in (1, 3)]
    np.testing.assert_array_equal(first_view[0], first_view[1])


def test_evaluation_default_output_goes_into_the_run(run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    evaluate_gqn.main([str(run / "checkpoint"), "--scenes", "2", "--samples", "1", "--max-context", "1"])
    report = json.loads((run / "eval-test.json").read_text())
    assert report["scenes"] == 2 and list(report["metrics"]) == ["1"]


@pytest.mark.parametrize("flags, message", [
    (["--max-context", 12], "--max-context 12: valid 1..9"),
    (["--split", "train", "--dataset", "jaco"], "dataset 'jaco' not found: .*jaco/train/manifest.json is missing"),
])
def test_evaluation_errors_name_the_bad_value(run, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        evaluate(run, tmp_path / "x.json", *flags)


def test_evaluation_rejects_an_unknown_split(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate(run, tmp_path / "x.json", "--split", "validation")
    assert "invalid choice: 'validation' (choose from 'train', 'test')" in capsys.readouterr().err


def test_evaluation_of_a_missing_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*state.json"):
        evaluate(tmp_path, tmp_path / "x.json")


def test_a_checkpoint_from_a_newer_version_stops_each_tool_in_one_line_naming_the_setting(run, tmp_path):
    import train_gqn
    newer = tmp_path / "newer"
    shutil.copytree(run, newer)
    state = json.loads((newer / "checkpoint" / "state.json").read_text())
    state["model"]["eta_kernel"] = 3  # a setting this version of core.py does not have
    (newer / "checkpoint" / "state.json").write_text(json.dumps(state))
    for main, flags in ((evaluate_gqn.main, ["--json", tmp_path / "x.json"]),
                        (render_gqn.main, ["--out-dir", tmp_path / "render"]),
                        (export_gqn.main, ["--out-dir", tmp_path / "export"])):
        with pytest.raises(SystemExit, match=r"state.json: model settings eta_kernel are unknown to this version"):
            main([str(newer)] + [str(f) for f in flags])
    with pytest.raises(SystemExit, match=r"state.json has model settings eta_kernel that this version does not know"):
        train_gqn.main(["--resume", str(newer)])
    assert sorted(os.listdir(tmp_path)) == ["newer"]


def test_a_checkpoint_with_float16_parameters_loads_as_float32(run, tmp_path):
    params = mx.nd.load(str(run / "checkpoint" / "model.params"))
    mx.nd.save(str(tmp_path / "model.params"), {name: p.astype("float16") for name, p in params.items()})
    (tmp_path / "state.json").write_text((run / "checkpoint" / "state.json").read_text())
    half, _ = load_model(str(tmp_path), mx.cpu(), core.GQN.from_config)
    full, _ = load_model(str(run), mx.cpu(), core.GQN.from_config)
    for (name, a), b in zip(half.collect_params().items(), full.collect_params().values()):
        assert a.data().dtype == np.float32, name
        np.testing.assert_allclose(a.data().asnumpy(), b.data().asnumpy(), rtol=1e-3, atol=1e-4, err_msg=name)


def render(run, out, *flags):
    render_gqn.main([str(run), "--out-dir", str(out)] + [str(f) for f in flags])
    stem = os.path.join(out, "rooms_ring-test-%s" % (flags[flags.index("--scene") + 1] if "--scene" in flags else 0))
    return Image.open(stem + "-ring.gif"), np.asarray(Image.open(stem + "-views.png"))


def test_render_writes_a_ring_gif_and_a_grid_of_held_out_views(run, tmp_path):
    gif, grid = render(run, tmp_path, "--scene", 1)
    assert gif.n_frames == 36 and gif.size == (2 * SIZE + 3 * PAD, HEADER + SIZE + 2 * PAD)  # prediction | truth
    durations = []
    for frame in range(gif.n_frames):
        gif.seek(frame)
        durations.append(gif.info["duration"])
    assert sum(durations) == 36 * 100  # Pillow would merge identical frames, keeping the time: none were
    held_out = VIEWS - 3  # default --context 3; columns: 3 context | 1 prediction | truth
    assert grid.shape == (HEADER + held_out * (SIZE + 2) + 2, (3 + 1 + 1) * (SIZE + 2) + 2, 3)
    gif, grid = render(run, tmp_path, "--scene", 1, "--views", 8, "--context", 5)
    assert gif.n_frames == 8 and grid.shape == (HEADER + (VIEWS - 5) * (SIZE + 2) + 2, (5 + 2) * (SIZE + 2) + 2, 3)


def test_render_zoom_enlarges_every_pixel_into_a_block(run, tmp_path):
    gif, grid = render(run, tmp_path / "1", "--scene", 1, "--views", 4)
    big_gif, big_grid = render(run, tmp_path / "3", "--scene", 1, "--views", 4, "--zoom", 3)
    assert big_gif.size == (3 * gif.size[0], 3 * gif.size[1]) and big_gif.n_frames == gif.n_frames == 4
    np.testing.assert_array_equal(big_grid, grid.repeat(3, axis=0).repeat(3, axis=1))
    for frame in range(4):
        gif.seek(frame)
        big_gif.seek(frame)
        small = np.asarray(gif.convert("RGB"))
        np.testing.assert_array_equal(np.asarray(big_gif.convert("RGB")), small.repeat(3, axis=0).repeat(3, axis=1))


def test_render_puts_the_true_view_from_each_ring_camera_beside_the_prediction(run, tmp_path):
    gif, _ = render(run, tmp_path, "--scene", 1, "--views", 4)
    root = run_dataset_root(load_model(str(run), mx.cpu(), core.GQN.from_config)[1])
    _, cameras = SceneDataset(root, "test")[1]
    seed = read_manifest(os.path.join(root, "test"))["source"]["seed"]
    ring = render_gqn.ring_cameras(cameras, 4, float(np.arctan2(cameras[0, 1], cameras[0, 0])))
    truth = synthetic.render_from("rooms_ring", seed, "test", 1, ring, SIZE).astype(np.int64)   # (4, H, W, 3)
    top, left = HEADER + PAD, 2 * PAD + SIZE
    for frame in range(4):
        gif.seek(frame)
        tile = np.asarray(gif.convert("RGB"))[top:top + SIZE, left:left + SIZE].astype(np.int64)
        assert np.abs(tile - truth[frame]).mean() < 4  # the GIF's 256-colour palette rounds a little
        assert np.abs(tile - truth[(frame + 2) % 4]).mean() > 4 * np.abs(tile - truth[frame]).mean()


def test_render_is_fixed_per_seed_and_renders_a_missing_synthetic_split_on_first_use(run, tmp_path):
    _, from_disk = render(run, tmp_path / "disk", "--scene", 2)
    _, again = render(run, tmp_path / "again", "--scene", 2)
    _, on_the_spot = render(run, tmp_path / "spot", "--scene", 2, "--data-dir", tmp_path / "no-data")
    assert (tmp_path / "no-data" / "rooms_ring-16px-40" / "test" / "manifest.json").exists()
    _, other_seed = render(run, tmp_path / "seed", "--scene", 2, "--seed", 1)
    np.testing.assert_array_equal(again, from_disk)
    np.testing.assert_array_equal(on_the_spot, from_disk)
    assert not np.array_equal(other_seed, from_disk)


def test_render_defaults_to_the_demo_checkpoint_or_says_it_is_missing(run, tmp_path, monkeypatch):
    monkeypatch.setattr(render_gqn, "DEMO", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="no RUN given and the demo model .*missing is missing"):
        render_gqn.main(["--out-dir", str(tmp_path)])
    monkeypatch.setattr(render_gqn, "DEMO", str(run / "checkpoint"))
    render_gqn.main(["--out-dir", str(tmp_path), "--views", "4"])
    assert Image.open(tmp_path / "rooms_ring-test-0-ring.gif").n_frames == 4


@pytest.mark.parametrize("flags, message", [(["--scene", 4], "--scene 4: valid 0..3"),
                                            (["--context", 10], "--context 10: valid 1..9")])
def test_render_errors_name_the_bad_value(run, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        render(run, tmp_path, *flags)


def test_exported_renderer_matches_the_model(run, tmp_path):
    check_export(run, tmp_path)


@pytest.mark.parametrize("flag, value", [("attention", 4), ("ray_depths", 3)])
def test_exported_renderer_with_attention_or_rays_matches_the_model(tmp_path, flag, value):
    """--attention adds the patch memory and reads to the graph, --ray-depths the ray volume; the export must carry
    them, for any B and K."""
    run = dry_run(tmp_path, "--" + flag.replace("_", "-"), str(value))
    assert json.loads((run / "config.json").read_text())["model"][flag] == value
    check_export(run, tmp_path / "export")


def check_export(run, tmp_path):
    export_gqn.main([str(run), "--out-dir", str(tmp_path)])
    predictor = Predictor(str(tmp_path))
    model, _ = load_model(str(run), mx.cpu(), core.GQN.from_config)
    rng = np.random.default_rng(0)
    batch, slots = 3, 5  # neither the export's batch of 1 nor its K of 3
    inputs = [rng.uniform(size=(batch, slots, 3, SIZE, SIZE)), rng.normal(size=(batch, slots, 7)),
              (np.arange(slots) < np.array([[1], [3], [5]])).astype(np.float32), rng.normal(size=(batch, 7)),
              predictor.noise(batch, seed=4)]
    inputs = [np.asarray(a, np.float32) for a in inputs]
    want = model.generator()(*(mx.nd.array(a) for a in inputs)).asnumpy()
    got = predictor.render(*inputs)
    assert got.shape == (batch, 3, SIZE, SIZE)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    spec = json.loads((tmp_path / "gqn-renderer.json").read_text())
    assert spec["noise_shape"] == [2, 4, SIZE // 4, SIZE // 4] and spec["model"]["image_size"] == SIZE
    with pytest.raises(ValueError, match=r"noise of shape \(3, 2, 4, 3, 3\): expected \(B, 2, 4, 4, 4\)"):
        predictor.render(*inputs[:4], np.zeros((3, 2, 4, 3, 3), np.float32))


def test_a_damaged_record_ends_evaluation_and_rendering_in_one_line_naming_it(run, tmp_path):
    """A flipped byte in a held-out record: evaluate_gqn.py and render_gqn.py stop with the shard and record."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(json.loads((run / "checkpoint" / "state.json").read_text())["config"]["data_dir"], data)
    test_dir = next(data.glob("*/test"))
    rec = sorted(test_dir.glob("*.rec"))[0]
    raw = bytearray(rec.read_bytes())
    raw[200] ^= 0xFF  # inside scene 0 (records are kilobytes): the structure holds, the checksum does not
    rec.write_bytes(bytes(raw))
    for tool, flags in (("evaluate_gqn.py", ["--scenes", "4", "--json", str(tmp_path / "e.json")]),
                        ("render_gqn.py", ["--scene", "0", "--out-dir", str(tmp_path / "render")])):
        cmd = [sys.executable, os.path.join(ROOT, tool), str(run), "--data-dir", str(data)] + flags
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        last = (done.stderr.strip().splitlines() or [""])[-1]
        assert done.returncode == 1 and "Traceback" not in done.stderr and last.startswith(tool + ": ") \
            and str(rec) in last and "checksum mismatch" in last, (tool, done.returncode, done.stdout[-800:], done.stderr[-1500:])
