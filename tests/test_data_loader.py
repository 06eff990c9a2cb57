"""The loader: fixed-K batch shapes, mask, query never in context, reproducibility, errors."""
import numpy as np
import pytest

from gqn import loader, synthetic

B, K = 4, 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("scenes"))
    synthetic.write_split(path, "rooms_ring", "train", 10, image_size=32, workers=1)
    return path


def _epoch(data):
    return [tuple(field.asnumpy() for field in batch) for batch in data]


def test_transform_cameras_order():
    raw = np.array([[1, 2, 3, np.pi / 2, np.pi / 6]], np.float32)
    np.testing.assert_allclose(loader.transform_cameras(raw),
                               [[1, 2, 3, 1, 0, 0.5, np.sqrt(3) / 2]], atol=1e-6)


def test_batch_shapes_and_mask(root):
    data = loader.make_loader(root, "train", B, K, seed=0)
    ks = set()
    for _ in range(4):
        batches = _epoch(data)
        assert len(batches) == 10 // B
        for frames, cameras, mask, query, target in batches:
            assert frames.shape == (B, K, 3, 32, 32) and cameras.shape == (B, K, 7)
            assert mask.shape == (B, K) and query.shape == (B, 7) and target.shape == (B, 3, 32, 32)
            assert all(a.dtype == np.float32 for a in (frames, cameras, mask, query, target))
            k = int(mask[0].sum())
            ks.add(k)
            assert (mask == (np.arange(K) < k)).all()  # real views first, one k per batch
            assert (frames[:, k:] == 0).all() and (cameras[:, k:] == 0).all()
            assert frames.min() >= 0 and frames.max() <= 1 and frames[:, :k].max() > 0
    assert len(ks) > 1 and ks <= set(range(1, K + 1))


def test_query_view_is_never_in_the_context(root):
    scenes = loader.SceneDataset(root, "train")
    examples = loader.QueryDataset(scenes, K)
    for key in [(0, 5, 11), (3, 4, 12), (9, 1, 13)]:
        frames, cameras, mask, query, target = examples[key]
        jpegs, raw = scenes[key[0]]
        views = loader.choose_views(len(jpegs), key[1], np.random.default_rng(key[2]))
        assert views[0] not in views[1:] and len(set(views)) == key[1] + 1
        np.testing.assert_array_equal(target, loader.decode_frames([jpegs[views[0]]])[0]
                                      .transpose(2, 0, 1) / np.float32(255))
        np.testing.assert_array_equal(query, loader.transform_cameras(raw[views[0]]))
        real = cameras[:key[1]]
        np.testing.assert_array_equal(real, loader.transform_cameras(raw[views[1:]]))
        assert not np.any(np.all(np.isclose(real, query), axis=1))
    with pytest.raises(ValueError, match="9 context views do not fit max_context=5"):
        examples[(0, 9, 1)]


def test_batches_are_reproducible_for_seed_and_epoch(root):
    first = loader.make_loader(root, "train", B, K, seed=7)
    epochs = [_epoch(first), _epoch(first)]
    same = loader.make_loader(root, "train", B, K, seed=7, num_workers=2)
    resumed = loader.make_loader(root, "train", B, K, seed=7, epoch=1)
    other = loader.make_loader(root, "train", B, K, seed=8)
    for want, got in [(epochs[0], _epoch(same)), (epochs[1], _epoch(same)),
                      (epochs[1], _epoch(resumed))]:
        for a, b in zip(want, got):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    skipped = _epoch(loader.make_loader(root, "train", B, K, seed=7, skip_batches=1))
    assert len(skipped) == 1 and all(np.array_equal(x, y) for x, y in zip(skipped[0], epochs[0][1]))
    assert not np.array_equal(epochs[0][0][4], epochs[1][0][4])
    assert not np.array_equal(epochs[0][0][4], _epoch(other)[0][4])


def test_min_context_bounds_every_drawn_k(root):
    data = loader.make_loader(root, "train", 2, K, seed=3, min_context=3)
    ks = [int(batch[2][0].sum()) for _ in range(10) for batch in _epoch(data)]  # 10 epochs of 5 batches
    assert set(ks) == {3, 4, 5}  # each of the three values, nothing under 3
    with pytest.raises(ValueError, match=r"min_context=6; valid: an integer in 1..5"):
        loader.make_loader(root, "train", B, K, min_context=6)


def test_fixed_k_keep_last_batch_and_bad_arguments(root):
    data = loader.make_loader(root, "train", B, K, shuffle=False, fixed_k=2, last_batch="keep")
    batches = _epoch(data)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert all((b[2].sum(1) == 2).all() for b in batches)
    with pytest.raises(ValueError, match=r"max_context=10; valid: an integer in 1..9"):
        loader.make_loader(root, "train", B, 10)
    with pytest.raises(ValueError, match=r"fixed_k=6; valid: an integer in 1..5"):
        loader.make_loader(root, "train", B, K, fixed_k=6)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        loader.make_loader(root, "test", B, K)


def test_build_batch_from_decoded_scenes(root):
    scenes = loader.SceneDataset(root, "train")
    decoded = [(loader.decode_frames(scenes[i][0]), scenes[i][1]) for i in range(3)]
    batch = loader.build_batch(decoded, 3, K, np.random.default_rng(0))
    assert batch.context_frames.shape == (3, K, 3, 32, 32) and batch.target.shape == (3, 3, 32, 32)
    assert (batch.context_mask.sum(1) == 3).all()
    nd_batch = batch.as_in_context(__import__("mxnet").cpu())
    np.testing.assert_array_equal(nd_batch.query_camera.asnumpy(), batch.query_camera)


def test_leaving_a_threaded_loader_mid_epoch_exits_cleanly(root):
    """gluon's thread-pool DataLoader aborted the interpreter at exit here ("terminate called without an active
    exception"); Loader's own threads are joined."""
    import os
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, %r)\nfrom gqn import loader\n"
            "for i, batch in enumerate(loader.make_loader(%r, 'train', 2, 5, num_workers=2)):\n"
            "    if i == 1:\n        break\nprint('left')" % (os.path.dirname(os.path.dirname(__file__)), root))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "left" in done.stdout, done.stderr[-1000:]


def test_batches_share_their_numpy_memory_on_the_cpu():
    """to_nd shares a float32 array's memory on cpu(0) (no engine copy: mx.nd.array's waits behind the running
    step) and keeps the array alive as long as the NDArray; other devices and dtypes get a copy."""
    import gc

    import mxnet as mx
    array = np.random.default_rng(0).uniform(size=(2, 5, 3, 8, 8)).astype(np.float32)
    expected = array.copy()
    shared = loader.to_nd(array)
    assert shared.context == mx.cpu() and shared.dtype == np.float32
    assert not array.flags.writeable  # the sign of shared memory: the array can no longer change under MXNet
    del array
    gc.collect()
    np.testing.assert_array_equal((shared * 1).asnumpy(), expected)  # read by an engine op after the owner went
    for other in (loader.to_nd(expected, mx.cpu(1)), loader.to_nd(expected.astype(np.float64))):
        np.testing.assert_array_equal(other.asnumpy(), expected)
        assert expected.flags.writeable  # copied, not shared
    assert loader.to_nd(expected.astype(np.float64)).dtype == np.float64


def test_trim_context_keeps_every_real_view_and_drops_only_slots_no_scene_uses(root):
    import mxnet as mx
    scenes = loader.SceneDataset(root, "train")
    decoded = [(loader.decode_frames(scenes[i][0]), scenes[i][1]) for i in range(3)]
    batch = loader.build_batch(decoded, 2, K, np.random.default_rng(0))
    mask = batch.context_mask.copy()
    mask[1, 2] = 1  # one scene with a third view: the batch keeps three slots
    batch = batch._replace(context_mask=mask)
    for form in (batch, batch.as_in_context(mx.cpu())):
        trimmed = loader.trim_context(form)
        got = [np.asarray(a.asnumpy() if isinstance(a, mx.nd.NDArray) else a) for a in trimmed]
        assert got[0].shape == (3, 3, 3, 32, 32) and got[1].shape == (3, 3, 7) and got[2].shape == (3, 3)
        np.testing.assert_array_equal(got[0], batch.context_frames[:, :3])
        np.testing.assert_array_equal(got[2], mask[:, :3])
        np.testing.assert_array_equal(got[4], batch.target)  # the query is untouched
    full = batch._replace(context_mask=np.ones_like(mask))
    assert loader.trim_context(full) is full
    empty = loader.trim_context(batch._replace(context_mask=np.zeros_like(mask)))
    assert empty.context_frames.shape[1] == 1  # the model needs one slot, even when it is padding
