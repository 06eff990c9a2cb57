"""TensorBoard's custom-scalars layout of a run: the charts a user opens TensorBoard for, each tag beside the ones
it must be read against (the model's validation MSE beside its two baselines)."""
from mxboard.proto import summary_pb2, tensor_pb2  # mxboard's protos first: tensorboard's own would clash with them
from mxboard.proto.event_pb2 import Event
from tensorboard.plugins.custom_scalar import layout_pb2

CONFIG_TAG, PLUGIN = "custom_scalars__config__", "custom_scalars"  # what TensorBoard's plugin looks for
DT_STRING = 7  # tensorflow's DataType enum

# (category, [(chart title, [tag regexes])]); TensorBoard draws each chart's tags as lines of one plot.
LAYOUT = [
    ("does the model beat the baselines?", [
        ("validation MSE: prior sample (the model) vs nearest context view vs mean context image",
         [r"^val/mse_prior_sample$", r"^val/mse_nearest_view$", r"^val/mse_mean_context$"]),
        ("is the generator alive? spread of samples across scenes, colour correlation with the truth",
         [r"^val/sample_spread$", r"^val/colour_corr$"]),
    ]),
    ("loss", [
        ("-ELBO (nats per image), train and validation", [r"^train/elbo$", r"^val/elbo$"]),
        ("KL (nats per image), train and validation", [r"^train/kl$", r"^val/kl$"]),
        ("schedules: learning rate and pixel sigma", [r"^schedule/lr$", r"^schedule/sigma$"]),
    ]),
]


def layout():
    """The layout as TensorBoard's Layout proto; every category open."""
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, closed=False, chart=[
            layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(tag=tags))
            for chart, tags in charts])
        for title, charts in LAYOUT])


def write_layout(events):
    """Add the layout to a run's event file (gqn.events.EventFile), as TensorBoard's custom-scalars plugin reads it."""
    tensor = tensor_pb2.TensorProto(dtype=DT_STRING, string_val=[layout().SerializeToString()])
    plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN)
    metadata = summary_pb2.SummaryMetadata(plugin_data=[plugin])  # repeated in mxboard's proto, one on the wire
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=CONFIG_TAG, metadata=metadata, tensor=tensor)])
    events.add(Event(summary=summary), step=0)
