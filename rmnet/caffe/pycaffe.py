"""pycaffe nets, loaded one way for the whole project: files checked, the caffemodel checked to
fit before Caffe sees it, glog quiet, CPU mode.

A Python layer that is not this project's is refused before Caffe imports its module.

Why the checks: Caffe's loader ignores caffemodel layers the net does not have, leaves net layers
the caffemodel lacks at their random initial values, and aborts the whole process (glog CHECK) on
a shape mismatch or a prototxt it cannot parse. ``load_net`` refuses all of these first, naming
the files and the layer (``rmnet.caffe.caffemodel.check_fit`` is the one fit rule; the net's own
shapes, an Eltwise over blobs of different shapes say, are checked by Caffe's rules in
``rmnet.caffe.shapes``).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from pathlib import Path

from rmnet.atomic import write_bytes
from rmnet.caffe.caffemodel import check_fit
from rmnet.caffe.protos import net_text, read_net
from rmnet.caffe.shapes import check_shapes


# What a CUDA-built Caffe logs (glog ERROR) on a machine without a GPU when it creates its context
# and when it is given a random seed: nothing a CPU run needs, and the same on every run.
NO_GPU_NOISE = ("Cannot create Cublas handle. Cublas won't be available.",
                "Cannot create Curand generator. Curand won't be available.",
                "Curand not available. Skipping setting the curand seed.")
GLOG_NOTICE = "WARNING: Logging before InitGoogleLogging() is written to STDERR"


def drop_no_gpu_noise(text: str) -> str:
    """``text`` (captured stderr) without the lines that end in one of ``NO_GPU_NOISE``, and
    without glog's notice that precedes its first message when nothing else is left."""
    kept = [line for line in text.splitlines(keepends=True)
            if not line.rstrip("\n").endswith(NO_GPU_NOISE)]
    if all(line.rstrip("\n") == GLOG_NOTICE for line in kept):
        return ""
    return "".join(kept)


@functools.cache
def _cuda_without_gpu() -> bool:
    """The imported pycaffe is a CUDA build and this machine has no usable GPU (asked once per
    process: the answer does not change)."""
    from rmnet.caffe.gpu import gpu_status

    status = gpu_status()
    return status.cudart is not None and status.count == 0


@contextlib.contextmanager
def without_no_gpu_noise():
    """Run the block with stderr (file descriptor 2, where glog writes) captured, and give it
    back without the ``NO_GPU_NOISE`` lines, when a CUDA Caffe runs on a machine without a
    GPU; otherwise (the CPU build, or a GPU present) nothing is captured."""
    if not _cuda_without_gpu():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            rest = drop_no_gpu_noise(captured.read().decode(errors="replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


def import_caffe():
    """pycaffe in CPU mode, quiet (glog's INFO lines list every layer) unless
    ``GLOG_minloglevel`` is set; a CUDA build on a machine without a GPU does not print its
    "won't be available" errors (see ``without_no_gpu_noise``)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe

    with without_no_gpu_noise():
        caffe.set_mode_cpu()            # creates Caffe's context (cuBLAS, cuRAND in a CUDA build)
    return caffe


def net_from_param(net_param, phase: str = "TEST", weights: str | os.PathLike | None = None):
    """``caffe.Net`` from a ``NetParameter`` (written to a temporary file, which Caffe needs);
    ``weights`` are copied by layer name, unchecked (check with ``check_weights`` first)."""
    caffe = import_caffe()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(net_text(net_param))
        f.flush()
        net = caffe.Net(f.name, getattr(caffe, phase))
    if weights:
        net.copy_from(str(weights))
    return net


def save_net(net, path: str | os.PathLike) -> None:
    """``net.save(path)`` that fails as an ``OSError`` naming ``path`` (a full disk, say)
    instead of Caffe's abort: Caffe writes into a private folder in memory (``/dev/shm`` where
    there is one, else the temporary folder) and Python copies the bytes to ``path``."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm, prefix="rmnet-save-") as folder:
        tmp = Path(folder) / "net.caffemodel"
        net.save(str(tmp))
        write_bytes(path, tmp.read_bytes())


def param_shapes(net) -> dict[str, list[tuple[int, ...]]]:
    """{layer: [parameter blob shapes]} of a ``caffe.Net``."""
    return {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}


def check_weights(net, prototxt: str | os.PathLike, weights: str | os.PathLike,
                  require_all: bool = True) -> None:
    """Raise ``WeightsError`` unless the caffemodel fits ``net`` (see ``check_fit``:
    ``require_all`` for evaluation and export, not for training, whose losses and counters
    start from their fillers)."""
    check_fit(param_shapes(net), prototxt, weights, require_all=require_all)


def load_net(prototxt: str | os.PathLike, weights: str | os.PathLike | None = None,
             phase: str = "TEST", require_input: bool = True):
    """A checked ``caffe.Net`` of ``prototxt`` with the caffemodel's weights (see module).

    ``require_input``: the net must start with an Input layer (a deploy net)."""
    for p, what in ((prototxt, "prototxt"), (weights, "caffemodel")):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"{p}: no such {what} file")
    net_param = read_net(prototxt)                              # parse errors name the file
    refuse_foreign_python_layers(net_param, prototxt)
    if require_input and not len(net_param.input) and not any(
            layer.type == "Input" for layer in net_param.layer):
        # before Caffe builds it: a train net's data layer would run (and read its dataset)
        data = [f"{layer.name!r} ({layer.python_param.layer or layer.type})"
                for layer in net_param.layer if layer.type in ("Python", "Data", "ImageData")]
        raise ValueError(f"{prototxt}: the net has no Input layer (a deploy prototxt is "
                         f"needed{'; this one reads data through ' + data[0] if data else ''})")
    caffe = import_caffe()
    check_shapes(net_param, prototxt, phase, known_types=caffe.layer_type_list())
    net = caffe.Net(str(prototxt), getattr(caffe, phase))
    if require_input and not net.inputs:
        raise ValueError(f"{prototxt}: the net has no Input layer (a deploy prototxt is needed)")
    if weights is not None:
        check_weights(net, prototxt, weights)
        net.copy_from(str(weights))
    return net


# The Python layers of this project (``layers.registry`` maps each to its config; a test keeps
# the two equal). Prototxts of earlier versions name them ``rmnet.layers.<module>``.
PROJECT_PYTHON_LAYERS = frozenset({
    ("layers.data", "MarketDataLayer"), ("layers.data", "HardSampleFeedbackLayer"),
    ("layers.losses", "AMSoftmaxLossLayer"), ("layers.losses", "LocalStructureLossLayer"),
    ("layers.dropout", "ScheduledDropoutLayer"), ("layers.classify", "ClassificationDataLayer"),
})
LEGACY_LAYERS_PREFIX = "rmnet.layers."


def is_project_layer(module: str, layer: str) -> bool:
    """Whether ``python_param { module layer }`` names one of this project's layers (under its
    current or its earlier module name)."""
    if module.startswith(LEGACY_LAYERS_PREFIX):
        module = "layers." + module[len(LEGACY_LAYERS_PREFIX):]
    return (module, layer) in PROJECT_PYTHON_LAYERS


def refuse_foreign_python_layers(net_param, prototxt: str | os.PathLike) -> None:
    """Caffe imports and runs the module a Python layer names as soon as it builds the net: a
    net given to be evaluated or exported may only name this project's own layers
    (``PROJECT_PYTHON_LAYERS``). ValueError naming the prototxt and the layer otherwise."""
    for layer in net_param.layer:
        if layer.type == "Python":
            pp = layer.python_param
            if not is_project_layer(pp.module, pp.layer):
                raise ValueError(f"{prototxt}: layer {layer.name!r} is a Python layer "
                                 f"{pp.module}.{pp.layer}, not one of this project's "
                                 f"(layers); refusing to import code a prototxt names")


def input_size(net) -> tuple[str, int, int]:
    """(input blob name, height, width) of the net's first input (N, 3, H, W)."""
    name = net.inputs[0]
    shape = net.blobs[name].data.shape
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"input blob {name!r} has shape {shape}, expected (N, 3, H, W)")
    return name, int(shape[2]), int(shape[3])


def output_blob(net, blob: str | None = None) -> str:
    """``blob`` if the net has it, else the net's last output."""
    if blob is None:
        return net.outputs[-1]
    if blob not in net.blobs:
        raise ValueError(f"the net has no blob {blob!r}; outputs: {', '.join(net.outputs)}")
    return blob
