"""CPU settings every entry point makes before importing mxnet: setup(); isa() names the kernels it leads to.

OpenMP threads. MXNet runs one OpenMP thread per two cores unless told otherwise (it assumes hyper-threading);
on a CPU without it that halves convolution speed. setup() makes it one per core; a user's OMP_NUM_THREADS wins.
A step is thousands of small parallel regions, and what an OpenMP thread does between them decides its speed
both ways: on cores of its own, a thread that spins (OMP_WAIT_POLICY=ACTIVE) starts the next region at once and
a small step runs 1.3-2x faster than with threads that sleep (PASSIVE); when other processes share the cores,
a spinning thread burns the time slice its partner needs and the step runs 2-7x slower than sleeping
(README, Speed). libgomp reads the policy once, when it loads, so setup() decides then: spin when other
processes kept less than a quarter of one core busy over a 0.1 s sample of /proc/stat, sleep otherwise or where
it cannot tell. wait_policy() says which, and why. A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.

One OpenMP team only. MXNet copies an array of 200,000 or more elements with an OpenMP team of the thread that
asks (MXNET_CPU_PARALLEL_SIZE), and Python's main thread asks each time it reads an array (asnumpy: validation,
logging, checkpoints) or makes one (mx.nd.array). That team's thread outlives the copy, and with more OpenMP
threads than CPUs libgomp cuts every thread's spinning to 1,000 turns (GOMP_SPINCOUNT's documentation): the
engine's team then waits as if sleeping for the rest of the run, and cpu-demo training fell from ~72 to ~54
samples/s (the sleeping rate) after its first validation. setup() raises the threshold to the largest int, so
copies are one memcpy in the calling thread and the engine's team is the only one (a user's
MXNET_CPU_PARALLEL_SIZE wins; tests/test_cpu.py counts the threads).

Denormal floats, flushed to zero on x86-64. As a GQN trains, gate gradients and saturated activations drift
into the denormal range (below 1.2e-38), where each x86 float operation takes ~100 cycles instead of one
(bench/denormals.py measures it). MXNet 1.9.1 has no switch for it (apache/mxnet#20338 added one after 1.9.1), so we set the
two MXCSR bits ourselves: FTZ (results that would be denormal become 0) and DAZ (denormal inputs read as 0).
Threads inherit the creating thread's MXCSR, so setting it in the main thread before MXNet starts its engine and
OpenMP threads covers them all. Values that small carry nothing a 32-bit model can use.

Python cannot reach MXCSR, and glibc has no call for these bits, so the two 4-byte functions below,
`stmxcsr [rdi]; ret` and `ldmxcsr [rdi]; ret` (System V x86-64: the pointer argument is in rdi), are put in an
executable page. Elsewhere (other CPUs, or a system that forbids executable pages) nothing changes.

AMX, where the CPU has it (flags amx_bf16 and amx_tile). MXNet 1.9.1's oneDNN (v2.4) has AMX bf16 kernels but
leaves them off unless DNNL_MAX_CPU_ISA=AVX512_CORE_AMX; and Linux lets a process touch AMX tile data only after
it asks (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), which that oneDNN predates: with the variable
alone the first AMX instruction kills the process (SIGILL). So setup() asks the kernel itself and sets the
variable only if permission is granted (a user's DNNL_MAX_CPU_ISA wins). Elsewhere nothing is set.
"""
import ctypes
import functools
import mmap
import os
import platform
import time

import numpy

FTZ = 0x8000  # MXCSR bit 15: flush denormal results to zero
DAZ = 0x0040  # MXCSR bit 6: read denormal inputs as zero
_STMXCSR = b"\x0f\xae\x1f\xc3"
_LDMXCSR = b"\x0f\xae\x17\xc3"
AMX_FLAGS = frozenset({"amx_bf16", "amx_tile"})
AMX_ISA = "AVX512_CORE_AMX"
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18  # x86-64 Linux
_amx = {"granted": False}  # whether this process was granted AMX tile data by setup()
SERIAL_COPIES = str(2 ** 31 - 1)  # MXNET_CPU_PARALLEL_SIZE: MXNet parses an int; no array is that long here
SHARED = 0.25  # cores busy with other processes at start above which OpenMP threads sleep instead of spinning
_wait = {"busy": None}  # what setup() measured: cores other processes kept busy, or None (not measured)


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
    """OpenMP threads = cores, spinning or sleeping when idle, in one team (see the module docstring), and
    denormals flushed -> whether they are.

    GQN_DENORMALS=keep leaves the CPU's denormal handling alone (bench/denormals.py compares the two).
    AMX tiles are requested and oneDNN pointed at them where the CPU has them (see the module docstring).
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    os.environ.setdefault("MXNET_CPU_PARALLEL_SIZE", SERIAL_COPIES)
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        _wait["busy"] = busy_cores()
        os.environ["OMP_WAIT_POLICY"] = "ACTIVE" if _wait["busy"] is not None and _wait["busy"] < SHARED else "PASSIVE"
    enable_amx(cpu_flags())
    if os.environ.get("GQN_DENORMALS", "flush") == "keep":
        return False
    return flush_denormals()


def busy_cores(seconds=0.1, stat="/proc/stat"):
    """How many cores other processes kept busy (user, system and interrupt time) over `seconds`, from the
    kernel's CPU counters less this process's own time (numpy's BLAS threads can still be spinning); None where
    there are no counters."""
    def ticks():
        with open(stat) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq = (fields + [0] * 7)[:7]
        own = os.times()
        return user + nice + system + irq + softirq, sum(fields[:8]), own.user + own.system  # ticks, s
    try:
        busy0, all0, own0 = ticks()
        time.sleep(seconds)
        busy1, all1, own1 = ticks()
    except (OSError, ValueError):
        return None
    cores = os.cpu_count() or 1
    own = (own1 - own0) * os.sysconf("SC_CLK_TCK")  # in the counters' ticks
    return max(cores * (busy1 - busy0 - own) / max(all1 - all0, 1), 0.0)


def wait_policy(environ=os.environ):
    """One line for a run's log: what idle OpenMP threads do, and why."""
    policy = environ.get("OMP_WAIT_POLICY", "").upper()
    if "GOMP_SPINCOUNT" in environ:
        return "OpenMP threads spin %s times before they sleep (set by the user)" % environ["GOMP_SPINCOUNT"]
    if _wait["busy"] is None:
        return "OpenMP threads %s (%s)" % ("spin" if policy == "ACTIVE" else "sleep when idle",
                                            "set by the user" if policy else "cannot tell whether the cores are shared")
    if policy == "ACTIVE":
        return ("OpenMP threads spin: the cores were idle at start (%.2f busy); set OMP_WAIT_POLICY=PASSIVE if "
                "other jobs will share them" % _wait["busy"])
    return "OpenMP threads sleep when idle: other processes kept %.2f cores busy at start" % _wait["busy"]


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


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (first `flags` line) -> frozenset; empty where there is no such file."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def wants_amx(flags):
    """Whether a CPU with these flags has AMX bf16 tiles for oneDNN."""
    return AMX_FLAGS <= set(flags)


def request_amx_permission():
    """Ask Linux for AMX tile data in this process (inherited by the threads it starts) -> granted or not."""
    if not supported():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def enable_amx(flags, environ=os.environ):
    """On a CPU with AMX: ask for tile data and, if granted, set DNNL_MAX_CPU_ISA (unless set) -> granted."""
    if not wants_amx(flags) or not request_amx_permission():
        return False
    environ.setdefault("DNNL_MAX_CPU_ISA", AMX_ISA)
    _amx["granted"] = True
    return True


def amx_active(environ=os.environ):
    """Whether oneDNN in this process runs bf16 on AMX: tiles granted by setup() and the ISA cap left at AMX."""
    return _amx["granted"] and environ.get("DNNL_MAX_CPU_ISA", "").upper() == AMX_ISA


def isa(flags=None, environ=os.environ):
    """One line naming the instruction set of oneDNN's bf16 and fp32 kernels in this process, and why."""
    flags = cpu_flags() if flags is None else flags
    cap = environ.get("DNNL_MAX_CPU_ISA")
    if amx_active(environ):
        return "oneDNN ISA: avx512_core_amx (AMX tiles granted, DNNL_MAX_CPU_ISA=%s): bf16 on AMX" % cap
    reason = "no AMX"
    if wants_amx(flags):
        reason = ("AMX present, DNNL_MAX_CPU_ISA=%s caps it" % cap if _amx["granted"]
                  else "AMX present, tile permission refused by the kernel")
    if "avx512_bf16" in flags:
        return "oneDNN ISA: avx512_core_bf16 (%s): bf16 on AVX-512 BF16 instructions" % reason
    if "avx512f" in flags:
        return "oneDNN ISA: avx512_core (%s, no avx512_bf16): bf16 emulated, fp32 is faster" % reason
    return "oneDNN ISA: %s (no AVX-512): fp32 only" % ("avx2" if "avx2" in flags else "baseline x86-64")
