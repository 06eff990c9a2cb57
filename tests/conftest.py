"""Test setup: mxnet imported first, and the repository root on sys.path so tests import core and gqn."""
import os
import sys

import mxnet  # noqa: F401  before anything can import tensorflow (TF first, then mxnet, segfaults)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
