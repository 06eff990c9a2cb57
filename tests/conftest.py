"""Test setup: the repository root on sys.path, so tests import core and gqn as the CLIs do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
