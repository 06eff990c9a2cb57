"""CPU settings every entry point makes before importing mxnet: setup().

OpenMP threads. MXNet runs one OpenMP thread per two cores unless told otherwise (it assumes hyper-threading);
on a CPU without it that halves convolution speed (a 5x5 conv: 65 -> 112 GFLOP/s on 2 cores). setup() makes it
one per core; a user's OMP_NUM_THREADS wins.

Denormal floats, flushed to zero on x86-64. As a GQN trains, gate gradients and saturated activations drift
into the denormal range (below 1.2e-38), where each x86 float operation takes ~100 cycles instead of one. A
cpu-demo model checkpointed at step 250 trained at 2.5 s/step, 0.22 s/step with denormals flushed
(bench/denormals.py). MXNet 1.9.1 has no switch for it (apache/mxnet#20338 added one after 1.9.1), so we set the
two MXCSR bits ourselves: FTZ (results that would be denormal become 0) and DAZ (denormal inputs read as 0).
Threads inherit the creating thread's MXCSR, so setting it in the main thread before MXNet starts its engine and
OpenMP threads covers them all. Values that small carry nothing a 32-bit model can use.

Python cannot reach MXCSR, and glibc has no call for these bits, so the two 4-byte functions below,
`stmxcsr [rdi]; ret` and `ldmxcsr [rdi]; ret` (System V x86-64: the pointer argument is in rdi), are put in an
executable page. Elsewhere (other CPUs, or a system that forbids executable pages) nothing changes.
"""
import ctypes
import functools
import mmap
import os
import platform

import numpy

FTZ = 0x8000  # MXCSR bit 15: flush denormal results to zero
DAZ = 0x0040  # MXCSR bit 6: read denormal inputs as zero
_STMXCSR = b"\x0f\xae\x1f\xc3"
_LDMXCSR = b"\x0f\xae\x17\xc3"


@functools.lru_cache(maxsize=None)
def _function(code):
    """A C function void f(uint32_t *) made of x86-64 `code`; built once, its executable page kept with it."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    function = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint32))(
        ctypes.addressof(ctypes.c_char.from_buffer(page)))
    function.page = page
    return function


def setup():
    """OpenMP threads = cores (unless OMP_NUM_THREADS is set) and denormals flushed -> whether they are.

    GQN_DENORMALS=keep leaves the CPU's denormal handling alone (bench/denormals.py compares the two).
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if os.environ.get("GQN_DENORMALS", "flush") == "keep":
        return False
    return flush_denormals()


def supported():
    return platform.machine().lower() in ("x86_64", "amd64") and platform.system() == "Linux"


def mxcsr():
    """This thread's MXCSR register (x86-64 Linux only)."""
    value = ctypes.c_uint32()
    _function(_STMXCSR)(ctypes.byref(value))
    return value.value


def flush_denormals():
    """Set FTZ and DAZ in this thread (and the threads it starts from now on) -> True if they are set."""
    if not supported():
        return False
    for dtype in (numpy.float16, numpy.float32, numpy.float64):  # numpy's cached limits, read before flushing:
        numpy.finfo(dtype)                                          # after, it warns its smallest subnormal is 0
    try:
        value = ctypes.c_uint32(mxcsr() | FTZ | DAZ)
        _function(_LDMXCSR)(ctypes.byref(value))
    except (OSError, ValueError):  # no executable pages here: run without, only slower
        return False
    return mxcsr() & (FTZ | DAZ) == FTZ | DAZ
