"""Automatic mixed precision for training: bfloat16 on CPU, float16 (with MXNet's dynamic loss scaler) on GPU.

    ctx = mx.cpu()
    dtype = amp.init(ctx)                  # once, before the model is built and before any backward pass
    model = ...; model.hybridize(static_alloc=True, static_shape=True); trainer = gluon.Trainer(...)
    amp.init_trainer(trainer)              # fp16 only: attaches the loss scaler (bf16 needs none)
    with autograd.record(): losses = ...
    amp.backward(losses, trainer)          # instead of autograd.backward(losses)
    trainer.step(batch_size)

mx.contrib.amp casts the inputs of convolutions to the low-precision type and keeps the other operators in
fp32; parameters and their gradients stay fp32, so checkpoints are unchanged. Two traps of MXNet 1.9.1 are
handled (docs/mxnet-notes.md): the in-place gradient sum that goes wrong for tensors with many consumers is raised
out of reach (MXNET_EXEC_INPLACE_GRAD_SUM_CAP), and models concatenate through `amp_multicast` (core.py).
"""
import os

import mxnet as mx
from mxnet.contrib import amp as mx_amp

from gqn import cpu

LOW_PRECISION = {"cpu": "bfloat16", "gpu": "float16"}
# MXNet sums the gradients of a tensor with this many consumers or more in place, which gives silently wrong
# (20-4000x too small) low-precision gradients under static_alloc; fp32 results do not change with it raised.
GRAD_SUM_CAP = "1000"


class AmpUnsupported(RuntimeError):
    """The device has no kernels for the low-precision type."""


def dtype_for(ctx):
    """'bfloat16' on CPU, 'float16' on GPU."""
    if ctx.device_type not in LOW_PRECISION:
        raise ValueError("AMP on device %s: valid device types are %s" % (ctx, sorted(LOW_PRECISION)))
    return LOW_PRECISION[ctx.device_type]


def probe(ctx, dtype):
    """None if a low-precision convolution runs forward and backward on `ctx`, else MXNet's error message.

    On CPU, oneDNN has bf16 convolutions only on AVX-512 CPUs (fast with avx512_bf16 or AMX); on an AVX2-only
    CPU it has none ('could not create a primitive descriptor iterator') and MXNet's own kernels take no bf16.
    """
    cast = mx_amp.amp.bfloat16 if dtype == "bfloat16" else dtype
    try:
        x = mx.nd.amp_cast(mx.nd.ones((1, 8, 4, 4), ctx=ctx), dtype=cast)
        w = mx.nd.amp_cast(mx.nd.ones((8, 8, 3, 3), ctx=ctx), dtype=cast)
        w.attach_grad()
        with mx.autograd.record():
            y = mx.nd.Convolution(x, w, kernel=(3, 3), pad=(1, 1), num_filter=8, no_bias=True)
        y.backward()
        w.grad.wait_to_read()
    except mx.base.MXNetError as error:
        try:
            mx.nd.waitall()  # collects the failed op's error, which the engine would raise again at exit
        except mx.base.MXNetError:
            pass
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return lines[-1] if lines else repr(error)
    return None


def preferred(ctx):
    """Whether low precision is the faster way to train on `ctx` -> (bool, the reason in a few words).

    On CPU, bf16 only where oneDNN runs it on AMX tiles (gqn/cpu.py): MXNet 1.9.1's oneDNN has no faster bf16
    kernels than its fp32 ones elsewhere (its avx512_core_bf16 convolutions ran 2-3x slower than fp32 on a Xeon
    with avx512_bf16, bench/dnnl_profile.py). On GPU fp32, as before: fp16 has not been measured against it.
    """
    if ctx.device_type == "cpu" and cpu.amx_active():
        return True, "bf16: oneDNN runs it on AMX"
    if ctx.device_type == "cpu":
        return False, "fp32: no AMX, and bf16 without it is slower"
    return False, "fp32 on %s" % ctx.device_type


def choose(flag, ctx):
    """-> (low precision on?, why): the --amp / --no-amp flag (True / False) when given, else `preferred(ctx)`."""
    if flag is None:
        return preferred(ctx)
    return flag, "mixed: --amp" if flag else "fp32: --no-amp"


def init(ctx, check=True):
    """Turn AMP on for this whole process (it cannot be turned off) -> the low-precision dtype name.

    Call before the model's first forward pass (AMP rewrites the operators hybrid_forward builds from) and before
    any backward pass (MXNet reads the gradient-sum cap once). Raises AmpUnsupported, with the reason, when the
    device cannot run the low-precision type; `check=False` skips that probe (graph-only tests).
    """
    dtype = dtype_for(ctx)
    reason = probe(ctx, dtype) if check else None
    if reason is not None:
        raise AmpUnsupported("--amp: %s has no %s convolution kernels, so AMP cannot run here (MXNet: %s). On CPU "
                             "MXNet's oneDNN needs AVX-512 for bfloat16 (fast with avx512_bf16 or AMX); train in "
                             "float32 without --amp." % (ctx, dtype, reason))
    os.environ["MXNET_EXEC_INPLACE_GRAD_SUM_CAP"] = GRAD_SUM_CAP
    mx_amp.init(dtype)
    _state["dtype"] = dtype
    return dtype


def enabled():
    """True once AMP is on in this process (through `init` or mx.contrib.amp.init): models built from then on
    cast their concatenated inputs to one type (core.py)."""
    return bool(mx_amp.amp._amp_initialized)


def init_trainer(trainer):
    """Attach MXNet's dynamic loss scaler to `trainer` when `init` chose float16. bfloat16 has fp32's range and
    needs none, and the scaler's overflow check would cost a host sync every step."""
    if _state["dtype"] == "float16":
        mx_amp.init_trainer(trainer)


def backward(losses, trainer):
    """autograd.backward(losses), through the trainer's loss scaler if it has one (fp16 AMP)."""
    if getattr(trainer, "_amp_loss_scaler", None) is None:
        mx.autograd.backward(losses)
        return
    with mx_amp.scale_loss(losses, trainer) as scaled:
        mx.autograd.backward(scaled)


_state = {"dtype": None}  # what `init` turned on; AMP is process-wide, so this is too
