"""Test setup: mxnet imported first, and the repository root on sys.path so tests import core and gqn."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from gqn import cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import mxnet  # noqa: F401  before anything can import tensorflow (TF first, then mxnet, segfaults)

