"""Test setup: mxnet imported first, and the repository root on sys.path so tests import core and gqn."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

# Several tests run trainers side by side (two trainers, a kill loop beside a whole run, dist_sync's four
# processes): spinning OpenMP threads would slow them several times over. Subprocesses inherit this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
cpu.setup()

import mxnet  # noqa: F401  before anything can import tensorflow (TF first, then mxnet, segfaults)

