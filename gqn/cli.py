"""What every command line of the toolkit shares: a parser without prefix matching and with one-line errors,
numeric flags checked against their valid range as they are parsed, the device list and the worker count."""
import argparse
import math
import os

DEFAULT_WORKERS = min(os.cpu_count() or 1, 8)  # threads or processes doing data work; more rarely pays
GPU_PACKAGE = ("pip uninstall -y mxnet && pip install -r requirements-gpu.txt "
               "(mxnet-cu112: needs the CUDA 11.2 toolkit and cuDNN 8)")


class Parser(argparse.ArgumentParser):
    """argparse with the script's docstring as help (its first line as description, the rest with its examples
    as epilog), no prefix matching (`--checkpoint` must not mean `--checkpoint-every`), and errors on one line."""

    def __init__(self, doc, **kwargs):
        super().__init__(description=doc.strip().splitlines()[0], epilog=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, "%s: error: %s (--help lists every flag)\n" % (self.prog, message))


def valid_range(low=None, high=None, above=None):
    """How a range reads in an error: '1 or more', '0..9', 'above 0'."""
    if above is not None:
        return "above %g" % above
    if high is None:
        return "%g or more" % low
    return "%g..%g" % (low, high)


def bounded(kind, low=None, high=None, above=None):
    """An argparse type: a finite `kind` (int or float) in [low, high], or above `above` (exclusive)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not %s" % (text, "an integer" if kind is int else "a number"))
        inside = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high) \
            and (above is None or value > above)
        if not inside:
            raise argparse.ArgumentTypeError("%s: valid %s" % (text, valid_range(low, high, above)))
        return value
    parse.__name__ = kind.__name__
    return parse


def add_workers(parser, what):
    parser.add_argument("--workers", type=bounded(int, 0), default=DEFAULT_WORKERS,
                        help="%s; 0 = in the main process (default: %d, the CPU count up to 8)"
                        % (what, DEFAULT_WORKERS))


def add_devices(parser, several):
    parser.add_argument("--devices", type=device_list, default="cpu", metavar="LIST",
                        help="comma-separated cpu, cpu:N or gpu:N%s (default: cpu)"
                        % (", e.g. gpu:0,gpu:1: each step's batch is split over them" if several else "; one device"))


def device_list(text):
    """'cpu', 'cpu:1', 'gpu:0,gpu:1' -> [(kind, id)]; argparse names the flag when it is malformed."""
    devices = []
    for item in text.split(","):
        kind, _, number = item.strip().partition(":")
        if kind not in ("cpu", "gpu") or not (number or "0").isdigit():
            raise argparse.ArgumentTypeError("%r: valid items are cpu, cpu:N and gpu:N, comma-separated" % text)
        devices.append((kind, int(number or 0)))
    if len(set(devices)) < len(devices):
        raise argparse.ArgumentTypeError("%r names a device twice" % text)
    return devices


def gpu_problem(devices, flag="--devices"):
    """None if every GPU asked for exists in this MXNet build, else the one-line reason naming the package."""
    import mxnet as mx
    gpus = [number for kind, number in devices if kind == "gpu"]
    if not gpus:
        return None
    try:
        found = mx.context.num_gpus()
    except mx.base.MXNetError:  # a CUDA build on a machine without a usable driver
        found = 0
    if found == 0:
        return ("%s %s asks for a GPU, but this MXNet build has none (mx.context.num_gpus() = 0); install the CUDA "
                "build: %s" % (flag, format_devices(devices), GPU_PACKAGE))
    if max(gpus) >= found:
        return "%s %s: this machine has %d GPU(s), gpu:0..gpu:%d" % (flag, format_devices(devices), found, found - 1)
    return None


def format_devices(devices):
    return ",".join("%s:%d" % device for device in devices)


def contexts(devices):
    import mxnet as mx
    return [mx.gpu(number) if kind == "gpu" else mx.cpu(number) for kind, number in devices]
