"""gqn/cpu.py: denormals are flushed to zero on MXNet's engine threads (x86-64 Linux), or left alone on request."""
import os
import subprocess
import sys

import mxnet as mx
import pytest

from gqn import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT = "import mxnet as mx; print(float((mx.nd.array([1e-30]) * mx.nd.array([1e-10])).asscalar()))"

pytestmark = pytest.mark.skipif(not cpu.supported(), reason="MXCSR exists on x86-64 only")


def run(code, **env):
    """`code` in a fresh interpreter at the repository root -> its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, **env))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_setup_sets_ftz_and_daz_in_this_process():
    # conftest.py calls cpu.setup() before importing mxnet, as every entry point does
    assert cpu.mxcsr() & (cpu.FTZ | cpu.DAZ) == cpu.FTZ | cpu.DAZ


def test_engine_threads_flush_a_denormal_product_to_zero():
    assert (mx.nd.array([1e-30]) * mx.nd.array([1e-10])).asscalar() == 0.0  # 1e-40 is denormal in float32


def test_without_setup_mxnet_keeps_denormals():
    # the check above would pass vacuously if MXNet flushed by itself: it does not
    assert float(run(PRODUCT)) == pytest.approx(1e-40, rel=1e-2)


def test_setup_before_mxnet_reaches_a_new_process_engine_threads():
    assert float(run("from gqn import cpu; cpu.setup(); " + PRODUCT)) == 0.0


def test_keep_leaves_denormals_alone():
    flushed, product = run("from gqn import cpu; print(cpu.setup()); " + PRODUCT, GQN_DENORMALS="keep").split()
    assert flushed == "False"
    assert float(product) == pytest.approx(1e-40, rel=1e-2)


AMX = frozenset({"fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
BF16_ONLY = frozenset({"fpu", "avx512f", "avx512_bf16", "avx512_fp16"})


def test_amx_is_wanted_only_with_both_tile_and_bf16_flags():
    assert cpu.wants_amx(AMX)
    assert not cpu.wants_amx(BF16_ONLY)
    assert not cpu.wants_amx(BF16_ONLY | {"amx_tile"})  # int8 tiles alone carry no bf16 kernels


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel\t\t: 207\nflags\t\t: fpu avx512f amx_tile amx_bf16\nbugs\t\t: x\n")
    assert cpu.cpu_flags(str(info)) == {"fpu", "avx512f", "amx_tile", "amx_bf16"}
    assert cpu.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_no_amx_flags_means_no_syscall_and_no_isa_cap(monkeypatch):
    monkeypatch.setattr(cpu, "request_amx_permission", lambda: pytest.fail("asked for AMX on a CPU without it"))
    environ = {}
    assert cpu.enable_amx(BF16_ONLY, environ) is False and environ == {}


def test_amx_cap_is_set_only_when_the_kernel_grants_tiles(monkeypatch):
    monkeypatch.setattr(cpu, "_amx", {"granted": False})
    monkeypatch.setattr(cpu, "request_amx_permission", lambda: False)
    environ = {}
    assert cpu.enable_amx(AMX, environ) is False and environ == {}  # the cap alone would die with SIGILL
    monkeypatch.setattr(cpu, "request_amx_permission", lambda: True)
    assert cpu.enable_amx(AMX, environ) is True and environ == {"DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX"}
    assert "avx512_core_amx" in cpu.isa(AMX, environ)
    mine = {"DNNL_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    assert cpu.enable_amx(AMX, mine) is True and mine == {"DNNL_MAX_CPU_ISA": "AVX512_CORE_BF16"}  # user wins
    assert "avx512_core_bf16" in cpu.isa(AMX, mine) and "caps it" in cpu.isa(AMX, mine)


def test_isa_line_per_cpu_kind(monkeypatch):
    monkeypatch.setattr(cpu, "_amx", {"granted": False})
    assert "avx512_core_bf16 (AMX present, tile permission refused" in cpu.isa(AMX, {})
    assert "avx512_core_bf16 (no AMX)" in cpu.isa(BF16_ONLY, {})
    assert "avx512_core (no AMX, no avx512_bf16)" in cpu.isa({"avx512f", "avx2"}, {})
    assert "avx2 (no AVX-512)" in cpu.isa({"avx2"}, {})


def test_kernel_refuses_tiles_where_the_cpu_has_no_amx():
    if cpu.wants_amx(cpu.cpu_flags()):
        pytest.skip("this CPU has AMX: the grant is checked by test_bf16_step_runs_amx_kernels")
    assert cpu.request_amx_permission() is False


BF16_STEP = """
import sys
sys.path[:0] = [%r, %r]
from gqn import cpu
cpu.setup()
import mxnet as mx
import core
from gqn import amp
from test_core import SMALL, loss_and_grads, make_inputs, make_model
amp.init(mx.cpu())
config = core.ModelConfig(**SMALL)
model = make_model(config)
model.hybridize(static_alloc=True, static_shape=True)
loss_and_grads(model, make_inputs(config))
print("ISA " + cpu.isa())
""" % (os.path.join(ROOT, "tests"), ROOT)


def bf16_conv_kernels():
    """One bf16 training step under DNNL_VERBOSE in a fresh process -> (its bf16 convolution kernels, isa() line)."""
    out = run(BF16_STEP, DNNL_VERBOSE="1", MKLDNN_VERBOSE="1").splitlines()
    kernels = {line.split(",")[4] for line in out
               if line.startswith("dnnl_verbose,exec,cpu,convolution,") and "src_bf16" in line}
    return kernels, [line for line in out if line.startswith("ISA ")][0]


def test_bf16_step_runs_amx_kernels():
    if not cpu.wants_amx(cpu.cpu_flags()):
        pytest.skip("this CPU has no amx_bf16/amx_tile flags (/proc/cpuinfo): no AMX kernels to check")
    kernels, line = bf16_conv_kernels()
    assert "avx512_core_amx" in line, line
    assert any("avx512_core_amx" in k for k in kernels), kernels


def test_bf16_step_runs_avx512_bf16_kernels_without_amx():
    flags = cpu.cpu_flags()
    if "avx512_bf16" not in flags or cpu.wants_amx(flags):
        pytest.skip("this check is for CPUs with avx512_bf16 and no AMX (here: %s)"
                    % ("AMX" if cpu.wants_amx(flags) else "no avx512_bf16"))
    kernels, line = bf16_conv_kernels()
    assert "avx512_core_bf16" in line, line
    assert any("avx512_core_bf16" in k for k in kernels) and not any("amx" in k for k in kernels), kernels


def test_idle_openmp_threads_spin_on_idle_cores_and_sleep_on_shared_ones(tmp_path):
    code = ("import os, sys; from gqn import cpu; cpu.SHARED = float(sys.argv[1]); cpu.setup(); "
            "print(os.environ.get('OMP_WAIT_POLICY')); print(cpu.wait_policy())")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def policy(shared, **env):
        done = subprocess.run([sys.executable, "-c", code, str(shared)], capture_output=True, text=True, cwd=ROOT,
                              env=dict(clean, **env))
        return done.stdout.split("\n", 1)
    # any load is under a threshold of 1e9 cores and over one of -1
    idle = policy(1e9)
    assert idle[0] == "ACTIVE" and idle[1].startswith("OpenMP threads spin: the cores were idle"), idle
    assert policy(-1)[0] == "PASSIVE" and "other processes kept" in policy(-1)[1]
    assert policy(1e9, OMP_WAIT_POLICY="PASSIVE") == ["PASSIVE", "OpenMP threads sleep when idle (set by the user)\n"]
    assert policy(-1, OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "OpenMP threads spin (set by the user)\n"]
    # a spin count only means something to active waiting
    assert policy(1e9, GOMP_SPINCOUNT="10000") == ["None", "OpenMP threads spin 10000 times before they sleep (set "
                                                           "by the user)\n"]


def test_busy_cores_counts_what_other_processes_used(tmp_path, monkeypatch):
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (ticks since boot)."""
    stat = tmp_path / "stat"
    samples = iter(["cpu 100 0 50 1000 10 0 0 5 0 0\n", "cpu 130 0 60 1050 10 0 0 5 0 0\n"])

    def sleep(seconds):
        stat.write_text(next(samples))
    stat.write_text(next(samples))
    monkeypatch.setattr(cpu.time, "sleep", sleep)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    assert cpu.busy_cores(stat=str(stat)) == pytest.approx(2 * 40 / 90)  # 40 busy ticks of 90
    assert cpu.busy_cores(stat=str(tmp_path / "none")) is None


def new_threads(code, **extra):
    """`code`, which prints how many threads it added, in a fresh interpreter with setup()'s own choice of
    MXNET_CPU_PARALLEL_SIZE (this process set it) and two OpenMP threads (a team needs two, whatever the cores)."""
    env = dict({k: v for k, v in os.environ.items() if k != "MXNET_CPU_PARALLEL_SIZE"}, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(env, **extra))
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


def test_python_threads_copies_make_no_second_openmp_team():
    """Reading a large array from Python (asnumpy) and making one (mx.nd.array) copy it in the main thread; with
    MXNet's default threshold that copy starts an OpenMP team of the main thread, whose thread stays, and libgomp
    stops spinning once it has more threads than CPUs. setup() keeps such copies serial: no new thread."""
    code = ("import os, sys; from gqn import cpu; cpu.setup(); import mxnet as mx\n"
            "a = mx.nd.ones((1000, 1000)) * 2; a.wait_to_read()  # made by the engine's team\n"
            "before = len(os.listdir('/proc/self/task')); mx.nd.array(a.asnumpy()).wait_to_read()\n"
            "print(len(os.listdir('/proc/self/task')) - before)")
    assert new_threads(code) == 0
    assert new_threads(code, MXNET_CPU_PARALLEL_SIZE="200000") >= 1  # MXNet's default (a user's value wins): a team


def test_validation_leaves_no_second_openmp_team_behind():
    """A training step, a validation and a checkpoint's read of every parameter, in a fresh process: the
    main thread must not become an OpenMP master (validation in inference mode reordered the convolution weights
    in place, and reading them back from Python started a team)."""
    code = ("import os, sys; sys.path.insert(0, 'tests'); from gqn import cpu; cpu.setup(); import mxnet as mx\n"
            "from test_train import tiny_model_and_batch; from gqn import training\n"
            "model, batch = tiny_model_and_batch(); model.hybridize(static_alloc=True, static_shape=True)\n"
            "model.generator().hybridize(static_alloc=True, static_shape=True)\n"
            "trainer = mx.gluon.Trainer(model.collect_params(), 'adam')\n"
            "training.train_step(model, trainer, batch, [mx.cpu()], 1.0, batch.target.shape[0]); mx.nd.waitall()\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "training.validate(model, [batch], 1.0, seed=0); training.check_parameters(model, 1, '.', None)\n"
            "print(len(os.listdir('/proc/self/task')) - before)")
    assert new_threads(code) == 0
