"""Test setup: mxnet imported first, and the repository root on sys.path so tests import core and gqn."""
import os

# MXNet runs one OpenMP thread per two cores unless told otherwise (it assumes hyper-threading); on a CPU
# without it that halves convolution speed. Set before mxnet is imported; a user's OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import sys

import mxnet  # noqa: F401  before anything can import tensorflow (TF first, then mxnet, segfaults)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
