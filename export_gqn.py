"""Export a trained GQN's prior renderer as an MXNet symbol + params, with a JSON of its inputs, for gqn/predictor.py.

Examples:
  python export_gqn.py assets/demo --out-dir exported/demo
  python export_gqn.py runs/demo --out-dir exported/rooms_ring

Writes OUT_DIR/gqn-renderer-symbol.json, OUT_DIR/gqn-renderer-0000.params (HybridBlock.export: only the parameters
the renderer uses) and OUT_DIR/gqn-renderer.json (input names and shapes, noise shape, model config). The graph
takes any batch size B and any number of context slots K. Load it with gqn.predictor.Predictor(OUT_DIR).
"""
import os

from gqn import cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import json

import mxnet as mx

import core
from gqn import cli
from gqn.predictor import INPUTS, SPEC
from gqn.runs import load_model

PREFIX = "gqn-renderer"


def example_inputs(model, max_context):
    """Zero inputs of batch 1 and K = max_context that run the renderer once, as export needs."""
    size = model.config.image_size
    shapes = [(1, max_context, 3, size, size), (1, max_context, core.CAMERA_DIMS), (1, max_context),
              (1, core.CAMERA_DIMS), model.noise_shape(1)]
    return [mx.nd.zeros(shape) for shape in shapes]


def export(model, state, out):
    """Export model.generator() into directory `out`; -> the spec dict written beside it."""
    config = model.config
    renderer = model.generator()
    renderer(*example_inputs(model, state["max_context"]))
    os.makedirs(out, exist_ok=True)
    renderer.export(os.path.join(out, PREFIX), epoch=0)
    names = ["data%d" % i for i in range(len(INPUTS))]  # HybridBlock.export's names for several inputs
    graph_inputs = mx.sym.load(os.path.join(out, PREFIX + "-symbol.json")).list_inputs()
    missing = [name for name in names if name not in graph_inputs]
    if missing:
        raise RuntimeError("the exported graph lacks inputs %s; it has %s" % (missing, graph_inputs))
    size, noise_shape = config.image_size, list(model.noise_shape(1)[1:])  # (L, Z, h, w)
    spec = {"symbol": PREFIX + "-symbol.json", "params": PREFIX + "-0000.params",
            "inputs": dict(zip(INPUTS, names)),
            "shapes": {"context_frames": ["B", "K", 3, size, size], "context_cameras": ["B", "K", core.CAMERA_DIMS],
                       "context_mask": ["B", "K"], "query_camera": ["B", core.CAMERA_DIMS],
                       "noise": ["B"] + noise_shape,
                       "output": ["B", 3, size, size]},
            "noise_shape": noise_shape,
            "cameras": "x, y, z, sin yaw, cos yaw, sin pitch, cos pitch",
            "model": config.to_dict(), "step": state["step"], "dataset": state["config"]["dataset"],
            "max_context": state["max_context"]}
    with open(os.path.join(out, SPEC), "w") as f:
        json.dump(spec, f, indent=1)
    return spec


def main(argv=None):
    parser = cli.Parser(__doc__)
    parser.add_argument("run", metavar="RUN", help="a run directory (holding RUN/checkpoint) or a checkpoint folder")
    parser.add_argument("--out-dir", required=True, help="directory to write the exported renderer into")
    args = parser.parse_args(argv)
    try:
        model, state = load_model(args.run, mx.cpu(), core.GQN.from_config)
    except (FileNotFoundError, ValueError) as error:  # ValueError: model settings unknown here
        raise SystemExit("export_gqn.py: %s" % error)
    spec = export(model, state, args.out_dir)
    print("exported the renderer of %s (step %d, %s) to %s: %s, %s, %s"
          % (state["directory"], state["step"], spec["dataset"], args.out_dir, spec["symbol"], spec["params"], SPEC))


if __name__ == "__main__":
    main()
