"""core.py: shapes, hybridized == imperative (values and every gradient), loss against numpy, restructuring."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import core
from reference_gqn import randomize_latent_heads, reference_forward

nd = mx.nd
SMALL = dict(steps=3, hidden=16, latent=8, r_channels=32, image_size=32)


def make_inputs(config, batch=2, views=3, seed=0):
    rng = np.random.RandomState(seed)
    size = config.image_size // 4
    mask = np.zeros((batch, views), np.float32)
    for b in range(batch):
        mask[b, :1 + b % views] = 1  # different context sizes, padded views present
    arrays = (rng.uniform(size=(batch, views, 3, config.image_size, config.image_size)),
              rng.normal(size=(batch, views, 7)), mask, rng.normal(size=(batch, 7)),
              rng.normal(size=(batch, config.steps, config.latent, size, size)),
              rng.uniform(size=(batch, 3, config.image_size, config.image_size)))
    return [nd.array(a, dtype="float32") for a in arrays]


def make_model(config, seed=0, random_heads=True, mixed_precision=False):
    """A GQN with Xavier weights; random_heads replaces the zero-initialised latent heads so gradients reach everything."""
    mx.random.seed(seed)
    model = core.GQN(config, mixed_precision=mixed_precision)
    model.initialize(mx.init.Xavier(magnitude=2.0))
    if random_heads:
        randomize_latent_heads(model, mx.init.Xavier(magnitude=2.0))
    return model


def loss_and_grads(model, inputs):
    with autograd.record():
        mean, kl = model(*inputs)
        loss = core.elbo_terms(nd, inputs[-1], mean, kl, 0.9)["elbo"].mean()
    loss.backward()
    grads = {name: p.grad().asnumpy().copy() for name, p in model.collect_params().items()}
    return mean.asnumpy(), kl.asnumpy(), grads


@pytest.mark.parametrize("representation", ["tower", "pool", "pyramid"])
@pytest.mark.parametrize("shared", [True, False])
def test_output_shapes(representation, shared):
    config = core.ModelConfig(representation=representation, shared_cores=shared, **SMALL)
    model = make_model(config)
    inputs = make_inputs(config, batch=3)
    mean, kl = model(*inputs)
    assert mean.shape == (3, 3, 32, 32) and kl.shape == (3,)
    assert 0 < mean.min().asscalar() and mean.max().asscalar() < 1 and kl.min().asscalar() >= 0
    r, views = model._represent(nd, *inputs[:3])
    assert r.shape == (3, 32, 8, 8) and views.shape[:2] == (3 * 3, 32)
    assert model.generator()(*inputs[:5]).shape == (3, 3, 32, 32)


@pytest.mark.parametrize("config", [
    core.ModelConfig(representation="tower", shared_cores=True, **SMALL),
    core.ModelConfig(representation="pool", shared_cores=False, **SMALL),
    core.ModelConfig(representation="pyramid", shared_cores=True, canvas_to_inference=False, **SMALL),
    core.ModelConfig(representation="tower", shared_cores=True, attention=8, **SMALL),
    core.ModelConfig(representation="pool", shared_cores=False, attention=8, **SMALL),
    core.ModelConfig(representation="tower", shared_cores=True, ray_depths=4, ray_channels=4, **SMALL),
], ids=["tower-shared", "pool-unshared", "pyramid-no-canvas-read", "tower-attention", "pool-unshared-attention",
        "tower-rays"])
def test_hybridized_gradients_equal_imperative(config):
    inputs = make_inputs(config)
    model = make_model(config)
    mean_i, kl_i, grads_i = loss_and_grads(model, inputs)
    model.hybridize(static_alloc=True, static_shape=True)
    for _ in range(2):  # the second call runs the cached, statically allocated graph
        mean_h, kl_h, grads_h = loss_and_grads(model, inputs)
    np.testing.assert_allclose(mean_h, mean_i, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kl_h, kl_i, rtol=1e-4, atol=1e-3)
    zero = [name for name, grad in grads_i.items() if not grad.any()]
    # Only an unshared step-0 inference core sees all-zero per-step inputs (h_g = h_e = canvas = 0).
    assert len(zero) <= (0 if config.shared_cores else 1), zero
    for name in zero:
        assert not grads_h[name].any(), name
    for name, grad in grads_i.items():
        scale = np.linalg.norm(grad) or 1.0
        err = np.linalg.norm(grads_h[name] - grad) / scale
        assert err < 1e-3, "%s: hybridized gradient differs from imperative by %.2e (relative L2)" % (name, err)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("canvas_read", [True, False])
def test_restructured_model_equals_straightforward(shared, canvas_read):
    config = core.ModelConfig(shared_cores=shared, canvas_to_inference=canvas_read, **SMALL)
    model = make_model(config)
    inputs = make_inputs(config)
    mean, kl = model(*inputs)
    ref_mean, ref_kl = reference_forward(model, *inputs)
    np.testing.assert_allclose(mean.asnumpy(), ref_mean.asnumpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kl.asnumpy(), ref_kl.asnumpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("extra", [{}, dict(attention=8), dict(ray_depths=4, ray_channels=4)],
                         ids=["plain", "attention", "rays"])
def test_context_padding_is_ignored(extra):
    config = core.ModelConfig(**extra, **SMALL)
    model = make_model(config)
    inputs = make_inputs(config)
    mean, _ = model(*inputs)
    frames, cameras = inputs[0].copy(), inputs[1].copy()
    frames[:, 2] = nd.random.uniform(shape=frames[:, 2].shape)  # view 2 is masked out in both scenes
    cameras[:, 2] = 5.0
    mean2, _ = model(frames, cameras, *inputs[2:])
    np.testing.assert_allclose(mean2.asnumpy(), mean.asnumpy(), rtol=1e-6)


@pytest.mark.parametrize("attention", [0, 8])
def test_a_hybridized_model_trained_on_trimmed_context_slots_gets_the_padded_batch_s_loss_and_gradients(attention):
    """train_step drops the context slots no scene uses (loader.trim_context), so the cached graph changes shape
    from step to step: each shape must give the padded batch's numbers, also after switching back."""
    from gqn.loader import Batch, trim_context
    config = core.ModelConfig(attention=attention, **SMALL)
    inputs = make_inputs(config, batch=3, views=5)  # scenes with 1, 2 and 3 real views: two slots of padding
    padded = Batch(*inputs[:4], inputs[5])
    trimmed = trim_context(padded)
    assert trimmed.context_frames.shape[1] == 3
    model = make_model(config)
    model.hybridize(static_alloc=True, static_shape=True)
    runs = [loss_and_grads(model, list(batch[:4]) + [inputs[4], batch.target])
            for batch in (padded, trimmed, padded, trimmed)]
    for mean, kl, grads in runs[1:]:
        np.testing.assert_allclose(mean, runs[0][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kl, runs[0][1], rtol=1e-5, atol=1e-5)
        for name, grad in runs[0][2].items():
            err = np.linalg.norm(grads[name] - grad) / (np.linalg.norm(grad) or 1.0)
            assert err < 1e-5, "%s: gradient with trimmed slots differs by %.2e (relative L2)" % (name, err)


def numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_read_matches_numpy():
    """PatchMemory + PatchRead against softmax(q.k / sqrt(A)) v written out in numpy over the unmasked patches."""
    config = core.ModelConfig(attention=8, **SMALL)
    model = make_model(config)
    for p in (model.memory.key_place, model.memory.query_place):  # random, so that a misplaced embedding shows
        p.set_data(nd.random.normal(shape=p.shape))
    frames, cameras, mask = make_inputs(config, batch=2, views=3)[:3]
    h = nd.random.normal(shape=(2, config.hidden, 8, 8))
    _, views = model._represent(nd, frames, cameras, mask)
    read = model.read(h, *model.memory(views, mask)).asnumpy()               # (B, A, h, w)
    m = model.memory
    keys = (m.key(views) + m.key_place.data()).asnumpy().reshape(2, 3, 8, 64)  # (B, K, A, P)
    values = m.value(views).asnumpy().reshape(2, 3, 8, 64)
    queries = (model.read.query(h) + m.query_place.data()).asnumpy().reshape(2, 8, 64)  # (B, A, h*w)
    for b in range(2):
        seen = mask.asnumpy()[b] > 0
        k = keys[b, seen].transpose(1, 0, 2).reshape(8, -1)                   # (A, K'*P)
        v = values[b, seen].transpose(1, 0, 2).reshape(8, -1)
        expected = v @ numpy_softmax(queries[b].T @ k / math.sqrt(8)).T      # (A, h*w)
        np.testing.assert_allclose(read[b].reshape(8, 64), expected, rtol=1e-4, atol=1e-5)


def ring_cameras(rng, count):
    """DeepMind cameras (count, 5) on the synthetic rooms' ring, looking inwards and a little down."""
    angles = rng.uniform(0, 2 * np.pi, count)
    return np.stack([2.2 * np.cos(angles), 2.2 * np.sin(angles), np.full(count, 1.2), angles + np.pi
                     + rng.uniform(-0.3, 0.3, count), rng.uniform(-0.45, -0.15, count)], 1).astype(np.float32)


def numpy_bilinear(image, row, col):
    """image (E, n, n) at fractional pixel (row, col), zero outside."""
    n, total = image.shape[1], np.zeros(image.shape[0])
    r0, c0 = int(np.floor(row)), int(np.floor(col))
    for r, c in ((r0, c0), (r0 + 1, c0), (r0, c0 + 1), (r0 + 1, c0 + 1)):
        if 0 <= r < n and 0 <= c < n:
            total += (1 - abs(row - r)) * (1 - abs(col - c)) * image[:, r, c]
    return total


def test_ray_volume_matches_numpy():
    """RayVolume against gqn/render.py's camera rays and a per-point loop: a query pixel's ray at each depth,
    projected into every context view that sees it, the view's map sampled there, mean / variance / share."""
    from gqn import render
    from gqn.loader import transform_cameras
    depths, channels, fov, near, far = 5, 3, 50.0, 0.5, 7.0
    config = core.ModelConfig(ray_depths=depths, ray_channels=channels, field_of_view=fov, ray_near=near,
                              ray_far=far, **SMALL)
    model = make_model(config)
    rng = np.random.default_rng(3)
    raw = ring_cameras(rng, 2 * 4).reshape(2, 4, 5)                        # (B, 1 query + 3 context, 5)
    cameras = nd.array(transform_cameras(raw))
    frames = nd.array(rng.uniform(size=(2, 3, 3, 32, 32)).astype(np.float32))
    mask = nd.array([[1, 1, 1], [1, 1, 0]])
    _, views = model._represent(nd, frames, cameras[:, 1:], mask)
    volume = model.rays(views, cameras[:, 1:], mask, cameras[:, 0]).asnumpy()  # (B, (2E+1)*D, h, w)
    assert volume.shape == (2, (2 * channels + 1) * depths, 8, 8)
    volume = volume.reshape(2, 2 * channels + 1, depths, 64)
    maps = model.rays.map(views).asnumpy().reshape(2, 3, channels, 8, 8)
    tan, n = math.tan(math.radians(fov / 2)), 8
    planes = 1 / np.linspace(1 / near, 1 / far, depths)
    seen_some = 0
    for b in range(2):
        origin, rays = render.camera_rays(raw[b, :1], n, fov)              # (h*w, 3) each
        x, y, z, yaw, pitch = raw[b, 0]
        forward_q = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
        for d, depth in enumerate(planes):
            for pixel in range(64):
                point = origin[pixel] + depth * rays[pixel] / (rays[pixel] @ forward_q)
                samples = []
                for k in np.flatnonzero(mask.asnumpy()[b]):
                    x, y, z, yaw, pitch = raw[b, 1 + k]
                    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
                    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
                    down = -np.cross(right, forward)
                    offset = point - raw[b, 1 + k, :3]
                    u, v = offset @ right / (offset @ forward * tan), offset @ down / (offset @ forward * tan)
                    if offset @ forward > 1e-2 and abs(u) < 1 and abs(v) < 1:
                        samples.append(numpy_bilinear(maps[b, k], (v + 1) * n / 2 - 0.5, (u + 1) * n / 2 - 0.5))
                got = volume[b, :, d, pixel]
                if samples:
                    samples = np.array(samples)
                    seen_some += 1
                    np.testing.assert_allclose(got[:channels], samples.mean(0), rtol=1e-3, atol=1e-4)
                    np.testing.assert_allclose(got[channels:-1], samples.var(0), rtol=1e-3, atol=1e-4)
                else:
                    np.testing.assert_allclose(got[:-1], 0, atol=1e-6)
                assert got[-1] == pytest.approx(len(samples) / mask.asnumpy()[b].sum())
    assert 100 < seen_some < 2 * depths * 64  # both cases occur


@pytest.mark.parametrize("values, named", [(dict(ray_depths=4, representation="pool"), "ray_depths 4"),
                                           (dict(ray_depths=4, ray_near=2.0, ray_far=1.0), "ray_near 2"),
                                           (dict(ray_depths=4, field_of_view=180.0), "field_of_view 180")])
def test_ray_volume_settings_are_checked(values, named):
    with pytest.raises(ValueError, match=named):
        core.ModelConfig(**values)


def numpy_nll(target, mean, sigma):
    var = sigma ** 2
    return np.sum(0.5 * np.log(2 * np.pi * var) + (target - mean) ** 2 / (2 * var), axis=(1, 2, 3))


def numpy_kl(mq, sq, mp, sp):
    return np.sum(np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5, axis=(1, 2, 3))


def test_nll_and_kl_match_numpy():
    rng = np.random.RandomState(1)
    target, mean = rng.uniform(size=(2, 2, 3, 3, 4)).astype(np.float64)
    for sigma in (2.0, 0.7):
        got = core.gaussian_nll(nd, nd.array(target), nd.array(mean), sigma).asnumpy()
        np.testing.assert_allclose(got, numpy_nll(target, mean, sigma), rtol=1e-5)
    mq, mp = rng.normal(size=(2, 2, 4, 3, 3))
    sq, sp = rng.uniform(0.2, 2.0, size=(2, 2, 4, 3, 3))
    got = core.gaussian_kl(nd, *[nd.array(a) for a in (mq, sq, mp, sp)]).asnumpy()
    np.testing.assert_allclose(got, numpy_kl(mq, sq, mp, sp), rtol=1e-4)
    assert np.all(got > 0)
    same = core.gaussian_kl(nd, *[nd.array(a) for a in (mq, sq, mq, sq)]).asnumpy()
    np.testing.assert_allclose(same, 0.0, atol=1e-5)


def test_plateau_constant_and_bits_per_dim():
    dims = 3 * 64 * 64
    zero = nd.zeros((1, 3, 64, 64))
    nll = core.gaussian_nll(nd, zero, zero, 0.7).asscalar()
    assert abs(nll - dims * (math.log(0.7) + 0.5 * math.log(2 * math.pi))) < 1.0
    assert abs(nll - 6909) < 1.0  # the plateau users report is this constant
    assert core.bits_per_dim(dims * math.log(2.0), dims) == pytest.approx(9.0)
    np.testing.assert_allclose(core.mse(nd, zero + 0.5, zero).asnumpy(), [0.25])


def test_same_seed_same_generated_image():
    config = core.ModelConfig(**SMALL)
    model = make_model(config)
    renderer = model.generator()
    renderer.hybridize(static_alloc=True, static_shape=True)
    inputs = make_inputs(config)[:4]
    images = []
    for seed in (7, 7, 8):
        mx.random.seed(seed)
        noise = nd.random.normal(shape=(2, config.steps, config.latent, 8, 8))
        images.append(renderer(*inputs, noise).asnumpy())
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0] - images[2]).max() > 1e-4


def count_paper_parameters(c):
    """Independent count of the paper config's parameters from the architecture's layer list."""
    conv = lambda cin, cout, k, bias=True: cin * cout * k * k + (cout if bias else 0)
    R, C, Z, k, gates = c.r_channels, c.hidden, c.latent, c.kernel, 4 * c.hidden
    tower = (conv(3, R, 2) + conv(R, R, 2) + conv(R, R // 2, 3) + conv(R // 2, R, 2)
             + conv(R + 7, R, 3) + conv(R + 7, R // 2, 3) + conv(R // 2, R, 3) + conv(R, R, 1))
    generator = conv(7 + R, gates, k, False) + conv(Z + C, gates, k)
    inference = conv(48 + 7 + R, gates, k, False) + conv(3 * C, gates, k) + conv(3, 48, 4)
    heads = 2 * conv(C, 2 * Z, k)
    canvas = C * C * 16 + C + 3 * C + 3 + C * C * 16 + C
    return tower + generator + inference + heads + canvas


def test_paper_config_parameter_count():
    config = core.ModelConfig()
    model = core.GQN(config)
    model.initialize()
    model(*make_inputs(config, batch=1, views=1))  # completes deferred shapes
    total = sum(p.data().size for p in model.collect_params().values())
    print("\nparameters at the paper config (tower, shared cores, canvas read): %d" % total)
    assert total == count_paper_parameters(config)


def test_latent_heads_start_at_zero_so_the_kl_starts_at_zero():
    """core.GaussianHead: prior and posterior start equal whatever initializer the model gets."""
    config = core.ModelConfig(**SMALL)
    model = make_model(config, random_heads=False)
    inputs = make_inputs(config, batch=3)
    mean, kl = model(*inputs)
    assert np.abs(kl.asnumpy()).max() < 1e-5
    assert np.abs(model.collect_params()[model.prefix + "gaussianhead0_conv0_weight"].data().asnumpy()).max() == 0
    randomize_latent_heads(model, mx.init.Xavier(magnitude=2.0))  # the test can fail: random heads give KL > 0
    assert model(*inputs)[1].asnumpy().min() > 1.0


@pytest.mark.parametrize("channels", [(16, 7), (7, 64), (48, 7, 64), (16, 16), (7, 1)])
def test_cat_conv_in_fp32_is_the_conv2d_of_the_concat(channels):
    # outside AMP, CatConv is Conv2D of the concat, padded with zero channels to a multiple of core.BLOCK (its
    # blocked oneDNN kernel sums in another order: equal to rounding); the inputs' gradients are the concat's split
    rng = np.random.RandomState(0)
    parts = [nd.array(rng.normal(size=(2, c, 6, 6))) for c in channels]
    head = nd.array(rng.normal(size=(2, 8, 6, 6)))  # gradient arriving at the output
    cat, conv = core.CatConv(channels, 8, 3), mx.gluon.nn.Conv2D(8, 3, padding=1, in_channels=sum(channels))
    for block in (cat, conv):
        block.initialize(mx.init.Xavier())
        block.hybridize(static_alloc=True, static_shape=True)
    conv.weight.set_data(cat.weight.data())
    cat.bias.set_data(nd.array(rng.normal(size=8)))
    conv.bias.set_data(cat.bias.data())
    results = []
    for block, inputs in ((cat, [p.copy() for p in parts]), (conv, [nd.concat(*parts, dim=1)])):
        for x in inputs:
            x.attach_grad()
        with autograd.record():
            y = block(*inputs)
        y.backward(head)
        grads = [x.grad.asnumpy() for x in inputs]
        results.append([y.asnumpy(), block.weight.grad().asnumpy(), block.bias.grad().asnumpy(),
                        np.concatenate(grads, axis=1)])
    assert cat.weight.shape == conv.weight.shape == (8, sum(channels), 3, 3)  # checkpoints keep their shapes
    for mine, reference in zip(*results):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)
