"""data/gqn_data_to_recordio.py as one importable module object, so worker processes can unpickle its functions."""
import importlib.util
import os
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "gqn_data_to_recordio.py")
if "gqn_data_to_recordio" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("gqn_data_to_recordio", SCRIPT)
    sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_spec.name])
convert = sys.modules["gqn_data_to_recordio"]
