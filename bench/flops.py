"""Analytic FLOPs of the convolutions in one training step of core.GQN, read from the model's own graph.

A convolution's forward pass is 2 x (output elements) x (input channels x kernel area) FLOPs; its backward
pass twice that (input and weight gradients), less the input gradient where the input is data (the context
frames, the target). Elementwise work (LSTM gates, losses) is not counted.
"""
import json

INPUTS = ("context_frames", "context_cameras", "context_mask", "query_camera", "noise", "target")


def input_shapes(config, batch, context):
    size, state = config.image_size, config.image_size // 4
    return {"context_frames": (batch, context, 3, size, size), "context_cameras": (batch, context, 7),
            "context_mask": (batch, context), "query_camera": (batch, 7),
            "noise": (batch, config.steps, config.latent, state, state), "target": (batch, 3, size, size)}


def conv_flops(model, config, batch, context):
    """-> {'forward': FLOPs, 'backward': FLOPs, 'convolutions': count} for a training step of `model`."""
    import mxnet as mx
    mean, kl = model(*[mx.sym.var(name) for name in INPUTS])
    graph = mx.sym.Group([mean, kl])
    internals = graph.get_internals()
    _, shapes, _ = internals.infer_shape(**input_shapes(config, batch, context))
    shape_of = dict(zip(internals.list_outputs(), shapes))
    nodes = json.loads(graph.tojson())["nodes"]
    forward = backward = count = 0
    for node in nodes:
        if node["op"] != "Convolution":
            continue
        data = nodes[node["inputs"][0][0]]
        data_shape = shape_of[data["name"] if data["op"] == "null" else "%s_output" % data["name"]]
        kernel = json.loads(node["attrs"]["kernel"].replace("(", "[").replace(")", "]"))
        groups = int(node["attrs"].get("num_group", 1))
        out = shape_of[node["name"] + "_output"]
        flops = 2 * _prod(out) * data_shape[1] // groups * _prod(kernel)
        forward += flops
        backward += flops if _is_input(nodes, data) else 2 * flops
        count += 1
    return {"forward": forward, "backward": backward, "convolutions": count}


def _is_input(nodes, node):
    """Whether `node` is one of the model's data inputs, perhaps reshaped: nothing needs its gradient."""
    while node["op"] in ("Reshape", "reshape"):
        node = nodes[node["inputs"][0][0]]
    return node["op"] == "null" and node["name"] in INPUTS


def _prod(values):
    result = 1
    for v in values:
        result *= int(v)
    return result
