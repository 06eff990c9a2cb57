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
