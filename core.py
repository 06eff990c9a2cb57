"""The Generative Query Network (Eslami et al., "Neural scene representation and rendering", Science 2018) in Gluon.

Letters used in shape comments throughout the project:
  B  scenes in a batch               K  context views per scene (padded to a fixed maximum, see below)
  N  images through a block at once (B*K for the representation, B elsewhere)
  L  generation steps                C  channels (of the ConvLSTM state and the canvas)
  H, W  image height and width       h, w  state height and width (H/4, W/4)
  R  channels of the scene representation r
  Z  latent channels

Context size. The loader pads every batch to the same K with a `context_mask` (B, K) that is 1 for real
views; r sums only masked-in views. Shapes never change between batches, so a model hybridized with
static_alloc and static_shape binds its graph once, whatever context size a batch draws.

Work that stays constant over the L steps is done once per batch, with results identical to the
straightforward formulation (tests/test_core.py checks this):
  * each ConvLSTM's gate convolution over concat(constant inputs, per-step inputs) is split, by
    linearity, into one convolution of the constant part (r, v_q and the downsampled x_q), done once,
    plus one of the per-step part (z, h) each step;
  * the canvas u_l = sum_{j<=l} deconv(h_g^j) is never materialised at H x W. The 4x4 stride-4 write and
    the 1x1 eta_g are both linear, so the mean image is one 4x4 stride-4 write of sum_l h_g^l with the
    composed weight; and the inference core's 4x4 stride-4 read of u_l is a 1x1 convolution of the
    running sum of h_g (a read of a write, patch by patch). The composed weights are computed in the graph
    from the original parameters, so gradients reach exactly the parameters of the paper's model.
  * the stride-4 write is a 1x1 convolution followed by depth_to_space, which avoids Conv2DTranspose
    (it crashes under oneDNN when applied more than once, docs/mxnet-notes.md).

The canvas parameters enter the graph through one identity op each: under MXNet 1.9.1's static_alloc graph a
parameter read by several non-convolution ops gets a wrong gradient with grad_req 'add' otherwise
(docs/mxnet-notes.md; tests/test_train.py guards it).
"""
import math
import warnings
from dataclasses import asdict, dataclass, field, fields

from mxnet import nd
from mxnet.gluon import HybridBlock, nn

CAMERA_DIMS = 7  # x, y, z, sin yaw, cos yaw, sin pitch, cos pitch
SCALE = 4        # image pixels per state pixel along each axis
BLOCK = 16       # CatConv pads its concat to a multiple of this: oneDNN blocks fp32 by 8 (AVX2) or 16 channels
LOG_2PI = math.log(2.0 * math.pi)


def _conv(in_channels, channels, kernel, stride=1, use_bias=True):
    """A conv with its input channels given, so parameters have shapes before the first batch."""
    return nn.Conv2D(channels, kernel, strides=stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                     use_bias=use_bias, in_channels=in_channels)


def _concat(F, *parts, mixed=False):
    """Concat of (N, C_i, H, W) maps along channels -> (N, sum C_i, H, W).

    The parts are concatenated as (N, C_i, H, W, 1), where MXNet's own concat runs: oneDNN's 4-D concat backward
    leaks host memory on every call (bench/leak_check.py). Under mixed precision (`mixed`, gqn/amp.py) parts may
    mix bf16/fp16 and fp32, which Concat rejects: they are cast to one type first (docs/mxnet-notes.md).
    """
    parts = [F.expand_dims(p, axis=4) for p in parts]                     # (N, C_i, H, W, 1)
    if mixed and len(parts) > 1:
        parts = F.amp_multicast(*parts, num_outputs=len(parts), cast_narrow=True)
    return F.reshape(F.concat(*parts, dim=1), shape=(0, 0, 0, -3))         # (N, sum C_i, H, W, 1) -> 4-D


def _act(F, x, kind, mixed=False):
    """relu, sigmoid or tanh of x, by the Activation operator: oneDNN runs it vectorised, where F.relu, F.sigmoid and
    F.tanh are MXNet's scalar loops (tanh ~3x slower on a gate map: bench/op_kernels.py times both ways). Under
    mixed precision (`mixed`) the named operators, whose precision MXNet's AMP lists set (sigmoid in fp32)."""
    return getattr(F, kind)(x) if mixed else F.Activation(x, act_type=kind)


class CatConv(HybridBlock):
    """A convolution of the channel concat of its inputs: (N, C_i, H, W)... -> (N, O, H', W'); parameters as Conv2D.

    Under mixed precision (`mixed`) it is computed, by linearity, as a convolution of the inputs whose channels
    are multiples of 16 plus one of the others (the 7 camera channels), each with its slice of the one weight:
    oneDNN's blocked bf16 kernels need channels in multiples of 16, and a single convolution of concat(r, camera)
    fell back to its slow im2col + gemm kernel (`x64:gemm:jit`). In fp32 it is the one convolution of the concat,
    as Conv2D computes it, over the concat padded with zero channels to a multiple of BLOCK: oneDNN runs it on a
    blocked kernel there, where the Tower's concat(r, camera), 71 channels, ran on `x64:gemm:jit` 1.4-2x slower
    (bench/op_kernels.py). The weight is padded with zeros to match; the parameter keeps its shape.
    """

    def __init__(self, in_channels, channels, kernel, use_bias=True, mixed=False, **kwargs):
        super().__init__(**kwargs)
        self._parts, self._channels, self._kernel, self._mixed = tuple(in_channels), channels, kernel, mixed
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(channels, sum(in_channels), kernel, kernel),
                                          allow_deferred_init=True)
            self.bias = self.params.get("bias", shape=(channels,), init="zeros") if use_bias else None

    def _conv(self, F, x, weight, bias):
        pad = (self._kernel - 1) // 2
        return F.Convolution(x, weight, bias, kernel=(self._kernel,) * 2, pad=(pad, pad), num_filter=self._channels,
                             no_bias=bias is None)

    def hybrid_forward(self, F, *parts, weight, bias=None):
        if not self._mixed:
            pad = -sum(self._parts) % BLOCK
            if 0 < pad <= max(self._parts):  # zeros shaped like the first pad channels of the widest part, and weight
                widest = parts[self._parts.index(max(self._parts))]
                parts += (F.zeros_like(F.slice_axis(widest, axis=1, begin=0, end=pad)),)
                weight = _concat(F, weight, F.zeros_like(F.slice_axis(weight, axis=1, begin=0, end=pad)))
            return self._conv(F, _concat(F, *parts), weight, bias)
        begins = [sum(self._parts[:i]) for i in range(len(self._parts))]
        slices = [F.slice_axis(weight, axis=1, begin=b, end=b + c) for b, c in zip(begins, self._parts)]
        aligned = [i for i, c in enumerate(self._parts) if c % 16 == 0]
        groups = [g for g in (aligned, [i for i in range(len(parts)) if i not in aligned]) if g]
        outputs = []
        for group in groups:
            x = _concat(F, *[parts[i] for i in group], mixed=True) if len(group) > 1 else parts[group[0]]
            w = F.concat(*[slices[i] for i in group], dim=1) if len(group) > 1 else slices[group[0]]
            outputs.append(self._conv(F, x, w, bias if not outputs else None))  # (N, O, H', W')
        return outputs[0] if len(outputs) == 1 else outputs[0] + outputs[1]


def _camera_map(F, camera, size):
    """(N, 7) camera -> (N, 7, size, size), the camera broadcast over a feature map."""
    return F.broadcast_to(F.reshape(camera, shape=(0, 0, 1, 1)), shape=(0, 0, size, size))


class Tower(HybridBlock):
    """The paper's Tower representation: (N, 3, H, W), (N, 7) -> (N, R, h, w).

    Every representation takes (r_channels, image_size, mixed): `mixed` casts concatenated inputs to one type
    under mixed precision (_concat).
    """

    def __init__(self, r_channels, image_size, mixed=False, **kwargs):
        super().__init__(**kwargs)
        self._size, self._mixed = image_size // SCALE, mixed
        half = r_channels // 2
        with self.name_scope():
            self.conv1 = _conv(3, r_channels, 2, stride=2)
            self.skip1 = _conv(r_channels, r_channels, 2, stride=2)
            self.conv2 = _conv(r_channels, half, 3)
            self.conv3 = _conv(half, r_channels, 2, stride=2)
            self.skip2 = CatConv((r_channels, CAMERA_DIMS), r_channels, 3, mixed=mixed)
            self.conv4 = CatConv((r_channels, CAMERA_DIMS), half, 3, mixed=mixed)
            self.conv5 = _conv(half, r_channels, 3)
            self.conv6 = _conv(r_channels, r_channels, 1)

    def hybrid_forward(self, F, x, camera):
        m = self._mixed
        x = _act(F, self.conv1(x), "relu", m)                   # (N, R, H/2, W/2)
        skip = _act(F, self.skip1(x), "relu", m)                # (N, R, h, w)
        x = _act(F, self.conv3(_act(F, self.conv2(x), "relu", m)), "relu", m) + skip  # (N, R, h, w)
        camera = _camera_map(F, camera, self._size)            # (N, 7, h, w)
        skip = _act(F, self.skip2(x, camera), "relu", m)        # a conv of concat(x, camera): (N, R+7, h, w)
        x = _act(F, self.conv5(_act(F, self.conv4(x, camera), "relu", m)), "relu", m) + skip  # (N, R, h, w)
        return _act(F, self.conv6(x), "relu", m)


class Pool(HybridBlock):
    """The paper's Pool representation: the Tower averaged over space, (N, 3, H, W), (N, 7) -> (N, R, 1, 1)."""

    def __init__(self, r_channels, image_size, mixed=False, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.tower = Tower(r_channels, image_size, mixed)

    def hybrid_forward(self, F, x, camera):
        return F.mean(self.tower(x, camera), axis=(2, 3), keepdims=True)  # (N, R, 1, 1)


class Pyramid(HybridBlock):
    """The paper's Pyramid representation: camera stacked on the image, four strided convs -> (N, R, 1, 1)."""

    def __init__(self, r_channels, image_size, mixed=False, **kwargs):
        super().__init__(**kwargs)
        self._size, self._mixed = image_size, mixed
        last = image_size // 8  # what three stride-2 convs leave, collapsed by the last conv
        with self.name_scope():
            self.convs = nn.HybridSequential()
            in_channels = 3 + CAMERA_DIMS
            for channels, kernel in ((r_channels // 8, 2), (r_channels // 4, 2), (r_channels // 2, 2),
                                     (r_channels, last)):
                self.convs.add(nn.Conv2D(channels, kernel, strides=kernel, activation="relu",
                                         in_channels=in_channels))
                in_channels = channels

    def hybrid_forward(self, F, x, camera):
        x = _concat(F, x, _camera_map(F, camera, self._size), mixed=self._mixed)  # (N, 3+7, H, W)
        return self.convs(x)                                        # (N, R, 1, 1)


REPRESENTATIONS = {"tower": Tower, "pool": Pool, "pyramid": Pyramid}


class ConvLSTM(HybridBlock):
    """A ConvLSTM cell; its caller passes the gates' constant part, convolved once for all L steps."""

    def __init__(self, step_channels, hidden, kernel, mixed=False, **kwargs):
        super().__init__(**kwargs)
        self._mixed = mixed
        with self.name_scope():
            self.step_conv = _conv(step_channels, 4 * hidden, kernel)

    def hybrid_forward(self, F, const_gates, step_input, cell):
        gates = const_gates + self.step_conv(step_input)        # (B, 4C, h, w)
        i, f, o, g = F.split(gates, num_outputs=4, axis=1)      # 4 x (B, C, h, w)
        m = self._mixed
        cell = _act(F, f, "sigmoid", m) * cell + _act(F, i, "sigmoid", m) * _act(F, g, "tanh", m)
        hidden = _act(F, o, "sigmoid", m) * _act(F, cell, "tanh", m)
        return hidden, cell


class GaussianHead(HybridBlock):
    """A 5x5 conv giving a diagonal Gaussian (mu, sigma) over the Z latent maps.

    Its weights start at zero (whatever initializer the model gets), so prior and posterior start equal,
    N(0, softplus(0)^2) everywhere, and the KL starts at exactly 0: with random heads, the KL of the first
    steps makes Adam shut the generator's LSTM gates, which then renders grey layouts for the rest of the run
    (tests/test_core.py checks the start).
    """

    def __init__(self, hidden, latent, kernel, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = _conv(hidden, 2 * latent, kernel)
            self.conv.weight.init = "zeros"  # a parameter's own init wins over model.initialize(...)

    def hybrid_forward(self, F, h):
        mu, raw = F.split(self.conv(h), num_outputs=2, axis=1)  # 2 x (B, Z, h, w)
        return mu, F.Activation(raw, act_type="softrelu") + 1e-4


def gaussian_kl(F, mu_q, sigma_q, mu_p, sigma_p):
    """KL(q || p) of diagonal Gaussians, summed over (Z, h, w): (B, Z, h, w) x 4 -> (B,)."""
    kl = (F.log(sigma_p) - F.log(sigma_q)
          + (F.square(sigma_q) + F.square(mu_q - mu_p)) / (2 * F.square(sigma_p)) - 0.5)
    return F.sum(kl, axis=(1, 2, 3))


def gaussian_nll(F, target, mean, sigma):
    """-log N(target | mean, sigma^2) summed over pixels: (B, 3, H, W) x 2, scalar sigma -> (B,) nats.

    NLL = sum_i (x_i - mu_i)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2; the last two terms are the
    constant (for a 64x64 RGB image at sigma 0.7, 12288 * (log 0.7 + 0.919) = 6,909 nats) that makes
    the loss plateau users report.
    """
    per_pixel = F.square(target - mean) / (2.0 * sigma * sigma) + (math.log(sigma) + 0.5 * LOG_2PI)
    return F.sum(per_pixel, axis=(1, 2, 3))


def mse(F, target, mean):
    """Mean squared error per image: (B, 3, H, W) x 2 -> (B,)."""
    return F.mean(F.square(target - mean), axis=(1, 2, 3))


def bits_per_dim(nats, dims):
    """Nats per image (NLL + KL of pixels in [0, 1]) -> bits per 8-bit sub-pixel (adds log2 256 = 8)."""
    return nats / (dims * math.log(2.0)) + 8.0


def elbo_terms(F, target, mean, kl, sigma):
    """The negative ELBO and its terms per scene, each (B,): target, mean (B, 3, H, W), kl (B,), pixel sigma ->
    {'nll', 'kl', 'elbo' = nll + kl (the training loss, nats), 'mse' of mean, 'bits_per_dim' of elbo}.

    F is mx.nd or numpy (evaluation scores in float64): the one place every tool takes these numbers from.
    """
    nll = gaussian_nll(F, target, mean, sigma)
    elbo = nll + kl
    dims = target.shape[1] * target.shape[2] * target.shape[3]
    return {"nll": nll, "kl": kl, "elbo": elbo, "mse": mse(F, target, mean), "bits_per_dim": bits_per_dim(elbo, dims)}


def option(default, help, choices=None, low=None, above=None):
    """A config field with its command-line help and valid range (at least `low`, or above `above`):
    train_gqn.py makes one flag of each."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "above": above})


@dataclass(frozen=True)
class ModelConfig:
    representation: str = option("tower", "scene representation network", tuple(sorted(REPRESENTATIONS)))
    image_size: int = option(64, "H = W of every view (taken from the data when training)", low=4)
    steps: int = option(12, "L, DRAW generation steps", low=1)
    hidden: int = option(128, "C, hidden channels of the ConvLSTM cores (also the canvas channels)", low=1)
    latent: int = option(64, "Z, latent channels per step", low=1)
    r_channels: int = option(256, "R, channels of the scene representation r", low=1)
    shared_cores: bool = option(True, "one generator/inference ConvLSTM for all L steps, or one per step")
    canvas_to_inference: bool = option(True, "the inference core also reads the canvas (the authors' advice)")
    kernel: int = option(5, "ConvLSTM and prior/posterior kernel size", low=1)
    query_down_channels: int = option(48, "channels of the 4x4 stride-4 view of x_q (48 = 3*4*4, lossless)", low=1)
    attention: int = option(0, "A, channels of the generator's attention over the context views' patches (0 = off, "
                               "the paper's model)", low=0)
    ray_depths: int = option(0, "D: the generator also reads, at D depths along each state pixel's ray, the mean and "
                                "spread of what the context views show there (0 = off, the paper's model)", low=0)
    ray_channels: int = option(16, "channels of each view's map that the ray_depths volume samples", low=1)
    field_of_view: float = option(50.0, "every camera's field of view in degrees, across and down (ray_depths)",
                                  above=0.0)
    ray_near: float = option(0.5, "nearest of the D depths along the query camera's axis, in world units", above=0.0)
    ray_far: float = option(7.0, "farthest of the D depths, in world units (ray_depths)", above=0.0)

    def __post_init__(self):
        if self.representation not in REPRESENTATIONS:
            raise ValueError("representation %r: choose one of %s" % (self.representation, sorted(REPRESENTATIONS)))
        if self.image_size % SCALE:
            raise ValueError("image_size %d: must be a multiple of %d" % (self.image_size, SCALE))
        if self.ray_depths and self.representation != "tower":
            raise ValueError("ray_depths %d: needs the tower representation, whose maps keep each view's layout "
                             "(representation %r)" % (self.ray_depths, self.representation))
        if not self.field_of_view < 180:
            raise ValueError("field_of_view %g: valid above 0 and below 180 (degrees)" % self.field_of_view)
        if self.ray_depths and not self.ray_near < self.ray_far:
            raise ValueError("ray_near %g, ray_far %g: the nearest depth must be below the farthest"
                             % (self.ray_near, self.ray_far))

    def to_dict(self):
        return asdict(self)

    @classmethod
    def unknown(cls, values):
        """The names in a settings dict that are no field of this version (sorted): a newer version's checkpoint."""
        return sorted(set(values) - {f.name for f in fields(cls)})


class PatchMemory(HybridBlock):
    """What the generator's attention reads (`attention` A > 0; the paper's model has none): every context view's
    representation patches, kept apart where r sums them, so where each view saw an object stays in one place.

    (B*K, R, h', w') per-view maps, mask (B, K) -> keys (B, A, K*P) scaled by 1/sqrt(A), values (B, K*P, A),
    an additive bias (B, 1, K*P) of -1e4 on the patches of masked-out views, and the learned embedding of each
    query's place (1, A, h, w); P = h'*w'. Keys and values are 1x1 convolutions of a patch; a key also carries a
    learned embedding of the patch's place in its view (the Tower already mixed the view's camera in).
    """

    def __init__(self, r_channels, channels, size, patch_size, **kwargs):
        super().__init__(**kwargs)
        self._scale = 1.0 / math.sqrt(channels)
        with self.name_scope():
            # no key bias, nor a place for a view's one patch: softmax ignores what adds to every key alike
            self.key = _conv(r_channels, channels, 1, use_bias=False)
            self.value = _conv(r_channels, channels, 1)
            self.key_place = self.params.get("key_place", shape=(1, channels, patch_size, patch_size)) \
                if patch_size > 1 else None
            self.query_place = self.params.get("query_place", shape=(1, channels, size, size))

    def hybrid_forward(self, F, views, mask, query_place, key_place=None):
        keys = self.key(views)                                                         # (B*K, A, h', w')
        if key_place is not None:
            keys = F.broadcast_add(keys, key_place)
        keys = keys * self._scale
        keys = F.reshape(self._per_scene(F, keys, mask), shape=(0, 0, 0, -3))          # (B, K, A, P)
        values = F.reshape(self._per_scene(F, self.value(views), mask), shape=(0, 0, 0, -3))  # (B, K, A, P)
        bias = F.broadcast_like(F.reshape(mask - 1, shape=(0, 0, 1, 1)),               # (B, K, 1, P): -1 masked
                                F.slice_axis(values, axis=2, begin=0, end=1))
        bias = F.identity(F.reshape(F.swapaxes(bias, 1, 2), shape=(0, 0, -3)) * 1e4)  # (B, 1, K*P)
        keys = F.reshape(F.swapaxes(keys, 1, 2), shape=(0, 0, -3))      # (B, A, K*P)
        values = F.reshape(F.swapaxes(values, 2, 3), shape=(0, -3, 0))  # (B, K*P, A)
        return keys, values, bias, F.identity(query_place)  # one read of the parameter (module docstring)

    @staticmethod
    def _per_scene(F, x, mask):
        """(B*K, ...) -> (B, K, ...), B and K taken from the mask (B, K)."""
        return F.reshape_like(x, mask, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2)


class PatchRead(HybridBlock):
    """One step's attention read: each state pixel of h_g (B, C, h, w) queries a PatchMemory -> (B, A, h, w)."""

    def __init__(self, hidden, channels, size, **kwargs):
        super().__init__(**kwargs)
        self._size = size
        with self.name_scope():
            self.query = _conv(hidden, channels, 1)

    def hybrid_forward(self, F, h, keys, values, bias, query_place):
        query = F.reshape(F.broadcast_add(self.query(h), query_place), shape=(0, 0, -3))  # (B, A, h*w)
        logits = F.broadcast_add(F.batch_dot(query, keys, transpose_a=True), bias)        # (B, h*w, K*P)
        read = F.batch_dot(F.softmax(logits, axis=-1), values)                            # (B, h*w, A)
        return F.reshape(F.swapaxes(read, 1, 2), shape=(0, 0, self._size, self._size))

def _camera_axes(F, camera):
    """Cameras (..., 7) -> origin, forward, right and down unit vectors, each (..., 3), as gqn/render.py casts
    rays: yaw turns about z from +x, pitch raises the view, image columns run right and rows down."""
    part = [F.slice_axis(camera, axis=-1, begin=i, end=i + 1) for i in range(3, CAMERA_DIMS)]  # (..., 1) each
    sin_yaw, cos_yaw, sin_pitch, cos_pitch = part
    origin = F.slice_axis(camera, axis=-1, begin=0, end=3)
    forward = F.concat(cos_pitch * cos_yaw, cos_pitch * sin_yaw, sin_pitch, dim=-1)
    right = F.concat(sin_yaw, -cos_yaw, F.zeros_like(sin_yaw), dim=-1)
    down = F.concat(cos_yaw * sin_pitch, sin_yaw * sin_pitch, -cos_pitch, dim=-1)  # -(right x forward)
    return origin, forward, right, down


class RayVolume(HybridBlock):
    """What the context views show along each query ray (`ray_depths` D > 0; the paper's model has none): a plane
    sweep. Each state pixel of the query view casts its ray; at D depths along it (planes of constant depth from
    the query camera, evenly spaced in inverse depth between ray_near and ray_far) the point is projected into every
    context view that sees it, and a 1x1 map of that view's representation is sampled there (bilinear). Where the
    ray meets a surface the views agree, so the mean and the spread over views at each depth say both what is there
    and how far; the generator reads them with r, where the Tower's sum over views has to learn that geometry.

    (B*K, R, h, w) per-view maps, cameras (B, K, 7), mask (B, K), query camera (B, 7) -> (B, (2E+1)*D, h, w):
    the mean and the variance of the E sampled channels over the views that see each point, and the share of the
    context views that see it, each at the D depths.
    """

    def __init__(self, r_channels, channels, size, depths, fov_degrees, near, far, **kwargs):
        super().__init__(**kwargs)
        self._size, self._depths = size, depths
        self._tan = math.tan(math.radians(fov_degrees) / 2)
        self._near, self._far = near, far
        with self.name_scope():
            self.map = _conv(r_channels, channels, 1)

    @staticmethod
    def out_channels(channels, depths):
        return depths * (2 * channels + 1)

    def _points(self, F, query_camera, pixels, planes):
        """World points (B, 1, 3, D, h*w) at the D depths of each query state pixel's ray."""
        n, d = self._size, self._depths
        origin, forward, right, down = (F.reshape(a, shape=(0, 3, 1, 1)) for a in _camera_axes(F, query_camera))
        grid = (2 * (pixels + 0.5) / n - 1) * self._tan                              # (1, n): pixel centres
        across, along = F.reshape(grid, shape=(1, 1, 1, n)), F.reshape(grid, shape=(1, 1, n, 1))
        rays = F.broadcast_add(F.broadcast_add(forward, F.broadcast_mul(right, across)),
                               F.broadcast_mul(down, along))                         # (B, 3, h, w), depth 1
        rays = F.reshape(rays, shape=(0, 1, 3, 1, -1))                               # (B, 1, 3, 1, h*w)
        depths = F.reshape(planes, shape=(1, 1, 1, d, 1))
        return F.broadcast_add(F.reshape(origin, shape=(0, 1, 3, 1, 1)), F.broadcast_mul(rays, depths))

    def _project(self, F, points, context_cameras, mask, pixels):
        """Points (B, 1, 3, P) seen from each context camera (B, K, 7), P = D*h*w -> the bilinear weights of the
        view's pixels (B*K, P, h*w) and whether the view sees the point (B, K, P), 0 or 1."""
        n = self._size
        origin, forward, right, down = _camera_axes(F, context_cameras)              # (B, K, 3) each
        offset = F.broadcast_sub(points, F.expand_dims(origin, axis=3))               # (B, K, 3, P)
        axes = F.stack(forward, right, down, axis=2)                                   # (B, K, 3 axes, 3)
        # sums over small axes as batch_dots: MXNet's sum over a middle axis is a slow scalar loop here
        local = F.batch_dot(F.reshape(axes, shape=(-3, 0, 0)), F.reshape(offset, shape=(-3, 0, 0)))
        local = F.reshape_like(local, mask, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2)  # (B, K, 3, P)
        depth, across, along = F.split(local, num_outputs=3, axis=2, squeeze_axis=True)  # (B, K, P) each
        safe = F.maximum(depth, 1e-2) * self._tan
        across, along = F.clip(across / safe, -2, 2), F.clip(along / safe, -2, 2)    # -1..1 inside the image
        inside = (depth > 1e-2) * (F.abs(across) < 1) * (F.abs(along) < 1)
        seen = F.broadcast_mul(inside, F.expand_dims(mask, axis=2))                   # (B, K, P)
        # bilinear sampling as a matrix: the tent weights of each point on the n columns and n rows of pixels
        pixels = F.reshape(pixels, shape=(1, 1, n))

        def tent(coord):  # (B, K, P) in -1..1 -> (B*K, P, n)
            coord = F.reshape((coord + 1) * (n / 2.0) - 0.5, shape=(-3, 0, 1))
            return F.relu(1 - F.abs(F.broadcast_sub(coord, pixels)))
        weights = F.broadcast_mul(F.expand_dims(tent(along), axis=3), F.expand_dims(tent(across), axis=2))
        return F.reshape(weights, shape=(0, 0, -3)), seen                              # (B*K, P, n*n)

    def _constants(self, F, views):
        """Pixel indices (n,) 0..n-1 and the D depths (D,), evenly spaced in 1/depth. Made from an input with
        arange_like: F.arange has no input, which MXNet's AMP wrappers cannot take."""
        count = F.cast(F.reshape(F.contrib.arange_like(views), shape=(-1,)), "float32")  # 0, 1, 2, ...
        pixels = F.slice_axis(count, axis=0, begin=0, end=self._size)
        steps = F.slice_axis(count, axis=0, begin=0, end=self._depths) / max(self._depths - 1, 1)
        return pixels, 1.0 / (1.0 / self._near + steps * (1.0 / self._far - 1.0 / self._near))

    def hybrid_forward(self, F, views, context_cameras, mask, query_camera):
        pixels, planes = self._constants(F, views)
        points = F.reshape(self._points(F, query_camera, pixels, planes), shape=(0, 0, 0, -1))  # (B, 1, 3, D*h*w)
        weights, seen = self._project(F, points, context_cameras, mask, pixels)
        weights, seen = F.BlockGrad(weights), F.BlockGrad(seen)                      # geometry, not learned
        maps = F.reshape(self.map(views), shape=(0, 0, -1))                          # (B*K, E, h*w)
        samples = F.batch_dot(maps, weights, transpose_b=True)                      # (B*K, E, P)
        samples = F.reshape_like(samples, mask, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2)  # (B, K, E, P)
        # per point, over the views that see it. Sums over K are (B, 1, K) x (B, K, ...) batch_dots, and the
        # geometry's factors are expanded before they multiply: MXNet reduces over a middle or broadcast axis
        # (a sum, or a broadcast op's backward) in a slow scalar loop
        ones = F.ones_like(F.expand_dims(mask, axis=1))                              # (B, 1, K)
        seen_by = F.batch_dot(ones, seen)                                            # (B, 1, P): views per point
        share = F.broadcast_div(seen_by, F.reshape(F.sum(mask, axis=1), shape=(-1, 1, 1)))
        both = F.BlockGrad(F.reshape(F.broadcast_like(F.expand_dims(seen, axis=2), samples), shape=(0, 0, -1)))
        first_view = F.slice_axis(samples, axis=1, begin=0, end=1)                  # (B, 1, E, P)
        per_point = F.BlockGrad(F.broadcast_like(F.expand_dims(1 / F.maximum(seen_by, 1), axis=2), first_view))
        samples = F.reshape(samples, shape=(0, 0, -1))                               # (B, K, E*P)
        mean = F.reshape_like(F.batch_dot(ones, samples * both), per_point) * per_point
        square = F.reshape_like(F.batch_dot(ones, F.square(samples) * both), per_point) * per_point
        volume = F.concat(mean, square - F.square(mean), F.expand_dims(share, axis=1), dim=2)  # (B, 1, 2E+1, P)
        return F.reshape(volume, shape=(0, -1, self._size, self._size))              # (B, (2E+1)*D, h, w)


class GQN(HybridBlock):
    """Representation network plus DRAW generator/inference cores.

    Forward (posterior, for training and reconstruction):
        (context_frames (B, K, 3, H, W), context_cameras (B, K, 7), context_mask (B, K),
         query_camera (B, 7), noise (B, L, Z, h, w), target (B, 3, H, W)) -> (mean (B, 3, H, W), kl (B,))
    With `sample_prior=True` the same network samples z from the prior and takes no target:
        (..., query_camera, noise) -> mean (B, 3, H, W). `generator()` returns that twin, sharing parameters.
    Noise is an input (standard normal) so that a seed, a test or an exported model fixes it exactly.
    `mixed_precision` builds the graph for mx.contrib.amp (gqn/amp.py), which must be on before the first call.
    """

    def __init__(self, config=ModelConfig(), sample_prior=False, mixed_precision=False, **kwargs):
        super().__init__(**kwargs)
        self.config, self._sample_prior, self._mixed = config, sample_prior, mixed_precision
        c, cores = config, 1 if config.shared_cores else config.steps
        self._size = c.image_size // SCALE
        gates = 4 * c.hidden
        with self.name_scope():
            self.representation = REPRESENTATIONS[c.representation](c.r_channels, c.image_size, mixed_precision)
            rays = (RayVolume.out_channels(c.ray_channels, c.ray_depths),) if c.ray_depths else ()
            self.gen_const = CatConv((CAMERA_DIMS, c.r_channels) + rays, cores * gates, c.kernel, use_bias=False,
                                     mixed=mixed_precision)
            self.inf_const = CatConv((c.query_down_channels, CAMERA_DIMS, c.r_channels), cores * gates, c.kernel,
                                     use_bias=False, mixed=mixed_precision)
            self.query_down = _conv(3, c.query_down_channels, SCALE, stride=SCALE)
            self.gen_cores = nn.HybridSequential()
            self.inf_cores = nn.HybridSequential()
            inf_step = (3 if c.canvas_to_inference else 2) * c.hidden  # h_g, h_e (and the canvas read)
            for _ in range(cores):
                self.gen_cores.add(ConvLSTM(c.latent + c.hidden + c.attention, c.hidden, c.kernel, mixed_precision))
                self.inf_cores.add(ConvLSTM(inf_step, c.hidden, c.kernel, mixed_precision))
            self.prior = GaussianHead(c.hidden, c.latent, c.kernel)
            self.posterior = GaussianHead(c.hidden, c.latent, c.kernel)
            if c.ray_depths:
                self.rays = RayVolume(c.r_channels, c.ray_channels, self._size, c.ray_depths, c.field_of_view,
                                      c.ray_near, c.ray_far)
            if c.attention:
                patch_size = self._size if c.representation == "tower" else 1
                self.memory = PatchMemory(c.r_channels, c.attention, self._size, patch_size)
                self.read = PatchRead(c.hidden, c.attention, self._size)
            # The canvas: u += write(h_g) each step (4x4 stride-4 transposed conv, Conv2DTranspose layout),
            # mean = eta(u_L) (1x1 conv), and the inference core's read(u_l) (4x4 stride-4 conv).
            self.write_weight = self.params.get("write_weight", shape=(c.hidden, c.hidden, SCALE, SCALE))
            self.write_bias = self.params.get("write_bias", shape=(c.hidden,), init="zeros")
            self.eta_weight = self.params.get("eta_weight", shape=(3, c.hidden))
            self.eta_bias = self.params.get("eta_bias", shape=(3,), init="zeros")
            if c.canvas_to_inference:
                self.read_weight = self.params.get("read_weight", shape=(c.hidden, c.hidden, SCALE, SCALE))
                self.read_bias = self.params.get("read_bias", shape=(c.hidden,), init="zeros")

    def generator(self):
        """The prior-sampling twin of this model (same parameters), built once."""
        if "_prior_twin" not in self.__dict__:  # kept out of Gluon's child registry: it shares, not owns
            twin = GQN(self.config, sample_prior=True, mixed_precision=self._mixed, prefix=self.prefix,
                       params=self.collect_params())
            object.__setattr__(self, "_prior_twin", twin)
        return self._prior_twin

    @classmethod
    def from_config(cls, values, **kwargs):
        """A model from a ModelConfig's dict (as a checkpoint's state.json stores it); ValueError naming the settings
        this version does not know (a checkpoint made by a newer one)."""
        unknown = ModelConfig.unknown(values)
        if unknown:
            raise ValueError("model settings %s are unknown to this version of core.py; it knows %s"
                             % (", ".join(unknown), ", ".join(f.name for f in fields(ModelConfig))))
        return cls(ModelConfig(**values), **kwargs)

    def noise_shape(self, batch_size):
        """(B, L, Z, h, w): the standard-normal noise one forward pass takes."""
        size = self.config.image_size // SCALE
        return (batch_size, self.config.steps, self.config.latent, size, size)

    def elbo(self, batch, noise, sigma):
        """Posterior pass of a Batch (context_frames, context_cameras, context_mask, query_camera, target) of
        NDArrays -> (elbo_terms per scene, the reconstruction (B, 3, H, W))."""
        mean, kl = self(*batch[:4], noise, batch.target)
        return elbo_terms(nd, batch.target, mean, kl, sigma), mean

    def __call__(self, *args):
        if not self._sample_prior:
            return super().__call__(*args)
        with warnings.catch_warnings():  # the prior pass leaves the inference network unused, as it should
            warnings.filterwarnings("ignore", message="Parameter .* is not used by any computation")
            return super().__call__(*args)

    def hybrid_forward(self, F, context_frames, context_cameras, context_mask, query_camera, noise, *target,
                       **canvas):
        canvas = {name: F.identity(value) for name, value in canvas.items()}  # see the module docstring
        r, views = self._represent(F, context_frames, context_cameras, context_mask)  # (B, R, h, w), (B*K, ...)
        memory = self.memory(views, context_mask) if self.config.attention else None
        query_map = _camera_map(F, query_camera, self._size)                    # (B, 7, h, w)
        if self.config.ray_depths:                                              # volume (B, (2E+1)*D, h, w)
            const_g = self.gen_const(query_map, r, self.rays(views, context_cameras, context_mask, query_camera))
        else:
            const_g = self.gen_const(query_map, r)                              # (B, cores*4C, h, w)
        const_e = None
        if not self._sample_prior:
            x_down = self.query_down(target[0])                                 # (B, 48, h, w)
            const_e = self._per_step(F, self.inf_const(x_down, query_map, r))
        eps = F.split(noise, num_outputs=self.config.steps, axis=1, squeeze_axis=True) \
            if self.config.steps > 1 else [F.reshape(noise, shape=(0, -3, -2))]  # L x (B, Z, h, w)
        canvas_sum, kls = self._draw(F, self._per_step(F, const_g), const_e, eps, canvas, memory)
        mean = self._write_image(F, canvas_sum, canvas)                         # (B, 3, H, W)
        return mean if self._sample_prior else (mean, F.add_n(*kls))

    def _represent(self, F, context_frames, context_cameras, context_mask):
        """Sum of the representations of the masked-in context views -> (B, R, h, w), and each view's own
        representation (B*K, R, h', w')."""
        frames = F.reshape(context_frames, shape=(-3, -2))          # (B, K, 3, H, W) -> (B*K, 3, H, W)
        cameras = F.reshape(context_cameras, shape=(-3, -2))        # (B, K, 7) -> (B*K, 7)
        views = self.representation(frames, cameras)                # (B*K, R, h', w')
        r = F.reshape_like(views, context_mask, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2)  # (B, K, R, h', w')
        mask = F.reshape(context_mask, shape=(0, 0, 1, 1, 1))       # (B, K) -> (B, K, 1, 1, 1)
        r = F.sum(F.broadcast_mul(r, mask), axis=1)                 # (B, R, h', w')
        return F.broadcast_to(r, shape=(0, 0, self._size, self._size)), views  # (B, R, h' or 1, ...) -> (B, R, h, w)

    def _per_step(self, F, const):
        """Constant gate input for each of the L steps: one tensor reused, or one slice per unshared core."""
        if self.config.shared_cores:
            return [const] * self.config.steps
        return F.split(const, num_outputs=self.config.steps, axis=1)  # L x (B, 4C, h, w)

    def _draw(self, F, const_g, const_e, eps, canvas, memory=None):
        """The L DRAW steps -> (sum_l h_g^l (B, C, h, w), per-step KL list of (B,)); with a PatchMemory's output
        each step's generator input also holds h_g's attention read of it."""
        c, shared, mixed = self.config, self.config.shared_cores, self._mixed
        zeros = F.zeros_like(F.slice_axis(const_g[0], axis=1, begin=0, end=c.hidden))  # (B, C, h, w)
        h_g = c_g = h_e = c_e = zeros
        canvas_sum, kls = None, []
        for step in range(c.steps):
            mu, sigma = self.prior(h_g)                             # the prior reads h_g before this step's update
            if const_e is not None:
                inputs = [h_g, h_e]
                if c.canvas_to_inference:
                    inputs.append(self._read_canvas(F, zeros if canvas_sum is None else canvas_sum, step, canvas))
                h_e, c_e = self.inf_cores[0 if shared else step](const_e[step], _concat(F, *inputs, mixed=mixed), c_e)
                mu_q, sigma_q = self.posterior(h_e)
                kls.append(gaussian_kl(F, mu_q, sigma_q, mu, sigma))
                mu, sigma = mu_q, sigma_q
            z = mu + sigma * eps[step]                              # (B, Z, h, w)
            step_input = [z, h_g] + ([self.read(h_g, *memory)] if memory is not None else [])
            h_g, c_g = self.gen_cores[0 if shared else step](const_g[step], _concat(F, *step_input, mixed=mixed), c_g)
            canvas_sum = h_g if canvas_sum is None else canvas_sum + h_g
        return canvas_sum, kls

    def _read_canvas(self, F, canvas_sum, step, canvas):
        """read(u_step), u_step = sum_{j<step} write(h_g^j) + step*write_bias, as a 1x1 conv of the sum."""
        flat_read = F.reshape(canvas["read_weight"], shape=(0, -1))     # (C', C*16)
        flat_write = F.reshape(canvas["write_weight"], shape=(0, -1))   # (C, C*16)
        weight = F.reshape(F.dot(flat_read, flat_write, transpose_b=True), shape=(0, 0, 1, 1))  # (C', C, 1, 1)
        read_of_bias = F.dot(F.sum(canvas["read_weight"], axis=(2, 3)), canvas["write_bias"])  # (C',)
        bias = step * read_of_bias + canvas["read_bias"]
        return F.Convolution(canvas_sum, weight, bias, kernel=(1, 1), num_filter=self.config.hidden)

    def _write_image(self, F, canvas_sum, canvas):
        """sigmoid(eta(u_L)), u_L = write(sum_l h_g^l) + L*write_bias, as a 1x1 conv and depth_to_space."""
        per_channel = F.reshape(F.transpose(canvas["write_weight"], axes=(1, 2, 3, 0)), shape=(0, -1))  # (C, 16*C)
        weight = F.reshape(F.dot(canvas["eta_weight"], per_channel), shape=(0, SCALE * SCALE, -1))  # (3, 16, C)
        weight = F.reshape(F.transpose(weight, axes=(1, 0, 2)), shape=(-3, 0, 1, 1))  # (16*3, C, 1, 1)
        bias = self.config.steps * F.dot(canvas["eta_weight"], canvas["write_bias"]) + canvas["eta_bias"]  # (3,)
        patches = F.Convolution(canvas_sum, weight, F.tile(bias, reps=(SCALE * SCALE,)), kernel=(1, 1),
                                num_filter=3 * SCALE * SCALE)                  # (B, 16*3, h, w)
        return _act(F, F.depth_to_space(patches, SCALE), "sigmoid", self._mixed)  # (B, 3, H, W)
