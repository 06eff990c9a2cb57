"""The straightforward GQN formulation (full 64x64 canvas, one gate conv over all inputs each step), imperative.

It reads the parameters of a `core.GQN`, so tests can check that the restructured model computes the same thing.
"""
import mxnet as mx

nd = mx.nd


def randomize_latent_heads(model, init):
    """Give the prior/posterior heads random weights (core.GaussianHead starts them at zero, which leaves the
    inference network without gradient until the first update): gradient tests then cover every path."""
    for head in (model.prior, model.posterior):
        head.conv.weight.initialize(init, ctx=head.conv.weight.list_ctx(), force_reinit=True)


def _conv(x, weight, bias, stride=1):
    k = weight.shape[2]
    pad = (k - 1) // 2 if stride == 1 else 0
    return nd.Convolution(x, weight, bias, kernel=(k, k), stride=(stride, stride), pad=(pad, pad),
                          num_filter=weight.shape[0], no_bias=bias is None)


def _lstm(weight, bias, inputs, cell):
    gates = _conv(nd.concat(*inputs, dim=1), weight, bias)
    i, f, o, g = nd.split(gates, num_outputs=4, axis=1)
    cell = nd.sigmoid(f) * cell + nd.sigmoid(i) * nd.tanh(g)
    return nd.sigmoid(o) * nd.tanh(cell), cell


def _head(block, h):
    mu, raw = nd.split(_conv(h, block.conv.weight.data(), block.conv.bias.data()), num_outputs=2, axis=1)
    return mu, nd.Activation(raw, act_type="softrelu") + 1e-4


def _kl(mq, sq, mp, sp):
    return (nd.log(sp) - nd.log(sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(axis=(1, 2, 3))


def reference_forward(model, context_frames, context_cameras, context_mask, query_camera, noise, target):
    """(mean, kl) of the straightforward formulation, posterior pass."""
    c = model.config
    B, K = context_mask.shape
    size = c.image_size // 4
    r = model.representation(context_frames.reshape((B * K,) + context_frames.shape[2:]),
                             context_cameras.reshape((B * K, 7)))
    r = (r.reshape((B, K) + r.shape[1:]) * context_mask.reshape((B, K, 1, 1, 1))).sum(axis=1)
    r = nd.broadcast_to(r, shape=(B, r.shape[1], size, size))
    v = nd.broadcast_to(query_camera.reshape((B, 7, 1, 1)), shape=(B, 7, size, size))
    x_down = model.query_down(target)
    zeros = nd.zeros((B, c.hidden, size, size))
    h_g, c_g, h_e, c_e = zeros, zeros, zeros, zeros
    u = nd.zeros((B, c.hidden, c.image_size, c.image_size))
    kl = nd.zeros((B,))
    cores = 1 if c.shared_cores else c.steps
    for step in range(c.steps):
        idx = 0 if c.shared_cores else step
        wg = model.gen_const.weight.data()
        we = model.inf_const.weight.data()
        per = wg.shape[0] // cores
        wg, we = wg[idx * per:(idx + 1) * per], we[idx * per:(idx + 1) * per]
        gen, inf = model.gen_cores[idx], model.inf_cores[idx]
        mu_p, s_p = _head(model.prior, h_g)
        inputs = [x_down, v, r, h_g, h_e]  # constant inputs first, then per-step ones, as core.GQN splits them
        if c.canvas_to_inference:
            inputs.append(_conv(u, model.read_weight.data(), model.read_bias.data(), stride=4))
        w_e = nd.concat(we, inf.step_conv.weight.data(), dim=1)
        h_e, c_e = _lstm(w_e, inf.step_conv.bias.data(), inputs, c_e)
        mu_q, s_q = _head(model.posterior, h_e)
        kl = kl + _kl(mu_q, s_q, mu_p, s_p)
        z = mu_q + s_q * noise[:, step]
        w_g = nd.concat(wg, gen.step_conv.weight.data(), dim=1)
        h_g, c_g = _lstm(w_g, gen.step_conv.bias.data(), [v, r, z, h_g], c_g)
        u = u + nd.Deconvolution(h_g, model.write_weight.data(), model.write_bias.data(), kernel=(4, 4),
                                 stride=(4, 4), num_filter=c.hidden, no_bias=False)
    eta = model.eta_weight.data().reshape((3, c.hidden, 1, 1))
    mean = nd.sigmoid(nd.Convolution(u, eta, model.eta_bias.data(), kernel=(1, 1), num_filter=3))
    return mean, kl
