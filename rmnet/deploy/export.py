"""Caffe deploy net + caffemodel -> ONNX -> OpenVINO IR, each export checked against pycaffe.

Why our own converter: the deploy nets use a small, fixed set of Caffe layers (the generator's
RMNet nets and the ResNet-50 baseline of ``rmnet.bench.baselines``), and the one thing that matters is
that the exported graph computes exactly what Caffe computes. So this module reads both files
with Caffe's own ``caffe_pb2`` (no pycaffe needed to convert), checks that the caffemodel fits the
prototxt, and writes the graph with ``onnx.helper``; layers it does not know are refused.

Layers and how they map (Caffe TEST phase semantics):

- ``Input`` (or the legacy ``input:``/``input_shape`` fields): the graph input, raw BGR
  N x 3 x H x W float32, batch dimension dynamic (``batch``).
- ``Convolution`` -> ``Conv`` (group, stride, pad, dilation; bias from the caffemodel if any).
- ``BatchNorm`` and ``Scale`` (with or without bias): per-channel affine maps. BatchNorm's blobs
  are the running mean, the running variance and a scale factor (blobs[2]); Caffe divides mean and
  variance by the factor (a factor of 0 means 0, as in Caffe), then computes
  ``(x - mean) / sqrt(var + eps)`` with the layer's ``eps`` (default 1e-5).
  A chain of these maps right after a convolution is folded into it (weights rescaled, bias
  added), in float64 before the cast to float32: this is exact up to rounding, because the map acts
  on the convolution's output. A map with no convolution before it (the learned input
  normalisation on the raw pixels) stays a ``Mul`` + ``Add``: folding it into the padded stem
  convolution would be wrong at the borders, where the convolution's zero padding would then be
  padding of *normalised* values (0 after the map is not 0 before it). A map is folded only when
  nothing else reads the convolution's output (checked on the graph, not assumed).
- ``ReLU`` -> ``Relu`` (``LeakyRelu`` with a negative slope), ``ELU`` -> ``Elu`` (alpha).
- ``Pooling`` MAX/AVE -> ``MaxPool``/``AveragePool``, global -> ``GlobalMaxPool``/
  ``GlobalAveragePool``. Caffe rounds pooled sizes up (``round_mode`` CEIL, the default); ONNX's
  ``ceil_mode`` reproduces that when the pooling has no padding (ResNet-50's 3x3/2 max-pool). A
  padded pooling whose Caffe size differs from floor's is refused (Caffe's extra clipping rule
  for padded windows has no ONNX equivalent).
- ``Eltwise`` SUM (with coefficients) / PROD / MAX -> ``Sum`` / ``Mul`` / ``Max``.

Anything else (``Python`` layers included: their code is not part of the model file) is refused
with an ``ExportError`` naming the prototxt, the layer and its type. A caffemodel that does not
fit the prototxt (a layer with parameters missing from the caffemodel, a wrong number of blobs, a
blob of the wrong shape) is refused naming both files and the layer, before anything is written.
Caffe itself would silently keep a missing layer's random initialisation.

``export()`` writes ``<name>.onnx`` (opset 17) and, with ``openvino=True``, ``<name>.xml`` +
``<name>.bin`` (``openvino.convert_model`` of the ONNX file, ``save_model(...,
compress_to_fp16=False)``: FP32 weights). Everything is written into a staging directory inside
``out_dir`` first and verified there: pycaffe runs the original net on a batch of real images
(files from a folder, or crops drawn by ``rmnet.data.synthetic``), ONNX Runtime runs the ONNX file and
OpenVINO the IR, and the largest absolute difference of the output descriptors is reported. Only
when every difference is within the tolerance (1e-4) are the files moved into place, each
atomically (``rmnet.atomic.atomic_path``; the IR's ``.bin`` before its ``.xml``). A failed check
raises ``ExportCheckError`` and leaves nothing behind.

``random_caffemodel()`` writes a caffemodel with random but sensible weights (the BatchNorm
statistics of a fresh ``caffe.Net`` are all zero, factor included) for tests and benchmarks.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmnet.caffe import caffemodel
from rmnet.atomic import atomic_path

OPSET = 17
IR_VERSION = 8            # the IR version that goes with opset 17; read by every runtime here
DEFAULT_TOLERANCE = 1e-4  # max abs difference of FP32 descriptors accepted by the check
CHECK_IMAGES = 8          # images in the check batch

# Caffe layer types the exporter converts (see the module doc).
SUPPORTED_TYPES = ("Input", "Convolution", "BatchNorm", "Scale", "ReLU", "ELU", "Pooling",
                   "Eltwise")


class ExportError(ValueError):
    """The net or the caffemodel cannot be exported; the message names the file(s) and layer."""


class ExportCheckError(RuntimeError):
    """An exported model's outputs differ from pycaffe's by more than the tolerance."""

    def __init__(self, message: str, report: "ExportReport"):
        super().__init__(message)
        self.report = report


# --- reading Caffe files -----------------------------------------------------------------------

def _import_caffe():
    """pycaffe, quiet (glog's INFO lines list every layer) unless GLOG_minloglevel is set."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe

    caffe.set_mode_cpu()
    return caffe


def _caffe_pb2():
    os.environ.setdefault("GLOG_minloglevel", "2")   # importing caffe.proto loads pycaffe
    try:
        from caffe.proto import caffe_pb2
    except ImportError as e:   # pragma: no cover - the venv always has pycaffe
        raise ExportError(f"reading Caffe files needs pycaffe's caffe.proto ({e}); run "
                          f"`make setup`") from None
    return caffe_pb2


def read_prototxt(path: str | os.PathLike):
    """Parse a prototxt into a ``caffe_pb2.NetParameter``; errors name the file."""
    from google.protobuf import text_format

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ExportError(f"{path}: cannot read the prototxt: {e.strerror or e}") from None
    net = _caffe_pb2().NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        raise ExportError(f"{path}: not a valid Caffe prototxt: {e}") from None
    return net


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> its parameter blobs (float32 arrays) from a binary caffemodel
    (``rmnet.caffe.caffemodel``), with its errors as ExportError."""
    try:
        return caffemodel.read_caffemodel(path)
    except caffemodel.WeightsError as e:
        raise ExportError(str(e)) from None


# --- the graph: Caffe layers -> records, with BN/Scale folded ----------------------------------

@dataclass
class _Conv:
    name: str             # the Caffe layer, plus the folded ones after it
    src: str
    dst: str
    weight: np.ndarray    # float64 (out, in/group, kh, kw)
    bias: np.ndarray      # float64 (out,)
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    group: int
    folded: list[str] = field(default_factory=list)


@dataclass
class _Affine:
    name: str
    src: str
    dst: str
    scale: np.ndarray     # float64 (C,)
    shift: np.ndarray     # float64 (C,)
    rank: int             # rank of the blob it acts on (channels on axis 1)
    folded: list[str] = field(default_factory=list)


@dataclass
class _Op:
    name: str
    op_type: str
    srcs: list[str]
    dst: str
    attrs: dict = field(default_factory=dict)
    consts: list[np.ndarray] = field(default_factory=list)   # extra constant inputs (Eltwise)


@dataclass
class Graph:
    """The net as ONNX-ready records, plus what the checks and the benchmark need to know."""
    name: str
    input_name: str
    input_shape: tuple[int, ...]           # as in the prototxt (batch dimension included)
    outputs: list[str]
    records: list = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)   # blob -> shape (batch 1)
    param_sizes: dict[str, list[int]] = field(default_factory=dict)    # layer -> blob sizes

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.input_shape[2]), int(self.input_shape[3])


def _pair(repeated, single_h: int, single_w: int, has_hw: bool, default: int,
          what: str) -> tuple[int, int]:
    if has_hw:
        return int(single_h), int(single_w)
    vals = [int(v) for v in repeated]
    if not vals:
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise ExportError(f"{what}: only 2-D spatial parameters are supported, got {vals}")


def _fits(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Blob shape check as Caffe does it, accepting legacy 4-D shapes padded with leading 1s."""
    if tuple(actual) == tuple(expected):
        return True
    strip = lambda s: tuple(s)[next((i for i, d in enumerate(s) if d != 1), len(s)):]  # noqa: E731
    return strip(actual) == strip(expected) and int(np.prod(actual)) == int(np.prod(expected))


def _included_in_test(layer) -> bool:
    """Whether the layer exists in Caffe's TEST phase (include/exclude phase rules)."""
    test = _caffe_pb2().TEST
    for rule in layer.exclude:
        if rule.HasField("phase") and rule.phase == test:
            return False
    if len(layer.include):
        return any(not rule.HasField("phase") or rule.phase == test for rule in layer.include)
    return True


def build_graph(net, blobs: dict[str, list[np.ndarray]] | None, prototxt: str | os.PathLike,
                weights: str | os.PathLike | None = None) -> Graph:
    """Walk the deploy net: shapes, parameter checks against the caffemodel, folding.

    ``blobs=None`` checks and shapes the net only (weights all zero), e.g. for FLOPs counts.
    Every error names ``prototxt`` (and ``weights`` for parameter mismatches) and the layer.
    """
    layers = [lay for lay in net.layer if _included_in_test(lay)]
    if len(net.layers):
        raise ExportError(f"{prototxt}: V1 'layers' nets are not supported; upgrade it with "
                          f"Caffe's upgrade_net_proto_text")
    shapes: dict[str, tuple[int, ...]] = {}
    g = Graph(name=net.name or Path(prototxt).stem, input_name="", input_shape=(), outputs=[])
    open_: dict[str, object] = {}      # blob -> record whose output nothing else has read yet
    read_since_write: dict[str, bool] = {}
    write_order: list[str] = []

    def where(layer) -> str:
        return f"{prototxt}: layer {layer.name!r} (type {layer.type})"

    def params(layer, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        g.param_sizes[layer.name] = [int(np.prod(s)) for s in expected]
        if blobs is None:
            return [np.zeros(s, np.float32) for s in expected]
        got = blobs.get(layer.name)
        if got is None:
            raise ExportError(f"{weights} does not fit {prototxt}: layer {layer.name!r} "
                              f"(type {layer.type}) has no parameters in the caffemodel "
                              f"(expected {len(expected)} blobs of shapes {expected})")
        if len(got) != len(expected):
            raise ExportError(f"{weights} does not fit {prototxt}: layer {layer.name!r} "
                              f"(type {layer.type}) has {len(got)} blobs in the caffemodel, "
                              f"the prototxt needs {len(expected)} ({expected})")
        for i, (arr, shape) in enumerate(zip(got, expected)):
            if not _fits(arr.shape, shape):
                raise ExportError(f"{weights} does not fit {prototxt}: layer {layer.name!r} "
                                  f"(type {layer.type}) blob {i} has shape {tuple(arr.shape)} "
                                  f"in the caffemodel, the prototxt needs {shape}")
        return [np.asarray(a, np.float64).reshape(s) for a, s in zip(got, expected)]

    def add_input(name: str, shape: tuple[int, ...], layer_desc: str) -> None:
        if g.input_name:
            raise ExportError(f"{layer_desc}: a second net input {name!r}; only one input "
                              f"(the image blob) is supported")
        if len(shape) != 4 or shape[1] != 3:
            raise ExportError(f"{layer_desc}: input {name!r} has shape {shape}, expected "
                              f"N x 3 x H x W")
        g.input_name, g.input_shape = name, shape
        shapes[name] = shape
        read_since_write[name] = False
        write_order.append(name)

    if len(net.input):   # legacy input fields
        dims = list(net.input_shape) or []
        if len(net.input) != 1 or (dims and len(dims) != 1):
            raise ExportError(f"{prototxt}: only one legacy 'input' is supported")
        shape = tuple(int(d) for d in dims[0].dim) if dims else tuple(int(d) for d in
                                                                      net.input_dim)
        add_input(net.input[0], shape, f"{prototxt}: input {net.input[0]!r}")

    def affine(layer, a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> None:
        src, dst = layer.bottom[0], layer.top[0]
        rec = open_.get(src)
        in_place = src == dst
        foldable = rec is not None and (in_place or not _read_later(layers, layer, src))
        if foldable and isinstance(rec, _Conv):
            rec.weight = rec.weight * a[:, None, None, None]
            rec.bias = rec.bias * a + b
        elif foldable and isinstance(rec, _Affine):
            rec.scale, rec.shift = rec.scale * a, rec.shift * a + b
        else:
            rec = _Affine(layer.name, src, dst, a, b, len(shape))
            g.records.append(rec)
            read_since_write[src] = True
            open_.pop(src, None)
            write(dst, shape, rec)
            return
        rec.folded.append(layer.name)
        rec.dst = dst
        open_.pop(src, None)
        write(dst, shape, rec)
        if not in_place:
            read_since_write[src] = True

    def write(blob: str, shape: tuple[int, ...], rec) -> None:
        shapes[blob] = shape
        read_since_write[blob] = False
        if blob in write_order:
            write_order.remove(blob)
        write_order.append(blob)
        if rec is not None:
            open_[blob] = rec
        else:
            open_.pop(blob, None)

    def read(blob: str) -> None:
        read_since_write[blob] = True
        open_.pop(blob, None)

    seen_names: set[str] = set()
    for layer in layers:
        w = where(layer)
        if layer.name in seen_names:
            raise ExportError(f"{w}: layer name used twice")
        seen_names.add(layer.name)
        t = layer.type
        if t not in SUPPORTED_TYPES:
            extra = (" (a Python layer's code is not part of the model; replace it with Caffe "
                     "built-ins for deployment)" if t == "Python" else "")
            raise ExportError(f"{w}: layer type {t!r} is not supported by the exporter{extra}; "
                              f"supported: {', '.join(SUPPORTED_TYPES)}")
        for b in layer.bottom:
            if b not in shapes:
                raise ExportError(f"{w}: reads blob {b!r}, which no earlier layer produces")
        if t == "Input":
            if len(layer.top) != 1:
                raise ExportError(f"{w}: only one top is supported")
            ps = list(layer.input_param.shape)
            if len(ps) != 1:
                raise ExportError(f"{w}: expected one input_param.shape, got {len(ps)}")
            add_input(layer.top[0], tuple(int(d) for d in ps[0].dim), w)
            continue
        if len(layer.top) != 1:
            raise ExportError(f"{w}: expected exactly one top, got {list(layer.top)}")
        n_bottom = 1 if t != "Eltwise" else None
        if n_bottom is not None and len(layer.bottom) != n_bottom:
            raise ExportError(f"{w}: expected one bottom, got {list(layer.bottom)}")
        src, dst = layer.bottom[0], layer.top[0]
        in_shape = shapes[src]

        if t == "Convolution":
            p = layer.convolution_param
            if p.axis != 1 or len(in_shape) != 4:
                raise ExportError(f"{w}: only 2-D convolution over axis 1 is supported")
            kh, kw = _pair(p.kernel_size, p.kernel_h, p.kernel_w,
                           p.HasField("kernel_h") or p.HasField("kernel_w"), 0, w)
            sh, sw = _pair(p.stride, p.stride_h, p.stride_w,
                           p.HasField("stride_h") or p.HasField("stride_w"), 1, w)
            ph, pw = _pair(p.pad, p.pad_h, p.pad_w,
                           p.HasField("pad_h") or p.HasField("pad_w"), 0, w)
            dh, dw = _pair(p.dilation, 1, 1, False, 1, w)
            group = int(p.group)
            c_in, c_out = in_shape[1], int(p.num_output)
            if kh < 1 or kw < 1 or group < 1 or c_in % group or c_out % group:
                raise ExportError(f"{w}: kernel {kh}x{kw}, group {group} do not fit "
                                  f"{c_in} -> {c_out} channels")
            oh = (in_shape[2] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
            ow = (in_shape[3] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
            if oh < 1 or ow < 1:
                raise ExportError(f"{w}: input {in_shape[2]}x{in_shape[3]} is too small")
            expected = [(c_out, c_in // group, kh, kw)] + ([(c_out,)] if p.bias_term else [])
            got = params(layer, expected)
            bias = got[1] if p.bias_term else np.zeros(c_out)
            rec = _Conv(layer.name, src, dst, got[0], bias, (sh, sw), (ph, pw), (dh, dw), group)
            g.records.append(rec)
            read(src)
            write(dst, (in_shape[0], c_out, oh, ow), rec)
        elif t == "BatchNorm":
            bp = layer.batch_norm_param
            if bp.HasField("use_global_stats") and not bp.use_global_stats:
                raise ExportError(f"{w}: use_global_stats is false (batch statistics at test "
                                  f"time); a deploy net must use the stored statistics")
            c = in_shape[1]
            mean, var, factor = params(layer, [(c,), (c,), (1,)])
            f = float(factor[0])
            inv = 0.0 if f == 0 else 1.0 / f
            a = 1.0 / np.sqrt(var * inv + float(bp.eps))
            affine(layer, a, -mean * inv * a, in_shape)
        elif t == "Scale":
            sp = layer.scale_param
            if sp.axis != 1 or sp.num_axes != 1:
                raise ExportError(f"{w}: only per-channel Scale (axis 1, num_axes 1) is "
                                  f"supported")
            c = in_shape[1]
            got = params(layer, [(c,)] + ([(c,)] if sp.bias_term else []))
            affine(layer, got[0], got[1] if sp.bias_term else np.zeros(c), in_shape)
        elif t in ("ReLU", "ELU"):
            if t == "ReLU":
                slope = float(layer.relu_param.negative_slope)
                op = _Op(layer.name, "LeakyRelu" if slope else "Relu", [src], dst,
                         {"alpha": slope} if slope else {})
            else:
                op = _Op(layer.name, "Elu", [src], dst, {"alpha": float(layer.elu_param.alpha)})
            g.records.append(op)
            read(src)
            write(dst, in_shape, None)
        elif t == "Pooling":
            op, out_shape = _pooling(layer, in_shape, w)
            g.records.append(op)
            read(src)
            write(dst, out_shape, None)
        elif t == "Eltwise":
            ep = layer.eltwise_param
            srcs = list(layer.bottom)
            if len(srcs) < 2:
                raise ExportError(f"{w}: Eltwise needs at least two bottoms")
            for s in srcs:
                if shapes[s] != in_shape:
                    raise ExportError(f"{w}: bottoms have different shapes "
                                      f"({', '.join(f'{b} {shapes[b]}' for b in srcs)})")
            coeff = [float(c) for c in ep.coeff]
            if coeff and len(coeff) != len(srcs):
                raise ExportError(f"{w}: {len(coeff)} coefficients for {len(srcs)} bottoms")
            kind = _caffe_pb2().EltwiseParameter.EltwiseOp.Name(ep.operation)
            if kind != "SUM" and coeff:
                raise ExportError(f"{w}: coefficients are only allowed with SUM")
            op_type = {"SUM": "Sum", "PROD": "Mul", "MAX": "Max"}[kind]
            if op_type == "Mul" and len(srcs) > 2:
                raise ExportError(f"{w}: PROD of more than two bottoms is not supported")
            op = _Op(layer.name, op_type, srcs, dst)
            if coeff and any(c != 1.0 for c in coeff):
                op.consts = [np.float32(c) for c in coeff]
            g.records.append(op)
            for s in srcs:
                read(s)
            write(dst, in_shape, None)

    if not g.input_name:
        raise ExportError(f"{prototxt}: the net has no Input layer (deploy nets start with one)")
    g.outputs = [b for b in write_order if not read_since_write[b] and b != g.input_name]
    if not g.outputs:
        raise ExportError(f"{prototxt}: the net has no output blob")
    g.shapes = shapes
    return g


def _read_later(layers: list, layer, blob: str) -> bool:
    """Whether a layer after ``layer`` reads ``blob`` before something rewrites it."""
    after = False
    for other in layers:
        if other is layer:
            after = True
            continue
        if not after:
            continue
        if blob in other.bottom:
            return True
        if blob in other.top:
            return False
    return False


def _pooling(layer, in_shape: tuple[int, ...], w: str) -> tuple[_Op, tuple[int, ...]]:
    pb2 = _caffe_pb2()
    p = layer.pooling_param
    method = pb2.PoolingParameter.PoolMethod.Name(p.pool)
    if method not in ("MAX", "AVE"):
        raise ExportError(f"{w}: pooling method {method} is not supported (MAX, AVE)")
    n, c, h, wd = in_shape
    ph, pw = _pair([p.pad] if p.HasField("pad") else [], p.pad_h, p.pad_w,
                   p.HasField("pad_h") or p.HasField("pad_w"), 0, w)
    if p.global_pooling:
        if ph or pw:
            raise ExportError(f"{w}: global pooling with padding is not supported")
        return (_Op(layer.name, "GlobalMaxPool" if method == "MAX" else "GlobalAveragePool",
                    [layer.bottom[0]], layer.top[0]), (n, c, 1, 1))
    kh, kw = _pair([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h,
                   p.kernel_w, p.HasField("kernel_h") or p.HasField("kernel_w"), 0, w)
    sh, sw = _pair([p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w,
                   p.HasField("stride_h") or p.HasField("stride_w"), 1, w)
    if kh < 1 or kw < 1:
        raise ExportError(f"{w}: pooling needs a kernel size (or global_pooling)")
    ceil_mode = pb2.PoolingParameter.RoundMode.Name(p.round_mode) == "CEIL"
    sizes = []
    for size, k, s, pad in ((h, kh, sh, ph), (wd, kw, sw, pw)):
        floor_out = (size + 2 * pad - k) // s + 1
        caffe_out = -(-(size + 2 * pad - k) // s) + 1 if ceil_mode else floor_out
        if pad and (caffe_out - 1) * s >= size + pad:
            caffe_out -= 1   # Caffe: the last window must start inside the image or left pad
        sizes.append((floor_out, caffe_out))
    needs_ceil = any(f != c_ for f, c_ in sizes)
    if needs_ceil and (ph or pw):
        raise ExportError(f"{w}: padded pooling whose Caffe output size "
                          f"{sizes[0][1]}x{sizes[1][1]} differs from floor rounding's "
                          f"{sizes[0][0]}x{sizes[1][0]} has no exact ONNX equivalent; change "
                          f"the input size or the padding")
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw],
             "ceil_mode": int(needs_ceil)}
    if method == "AVE":
        # Caffe divides by the window clipped to the padded image: with padding and floor
        # sizes that is the whole kernel (count_include_pad); without padding, the window
        # clipped to the image (ceil-mode windows hanging over the edge).
        attrs["count_include_pad"] = int(bool(ph or pw))
    op = _Op(layer.name, "MaxPool" if method == "MAX" else "AveragePool",
             [layer.bottom[0]], layer.top[0], attrs)
    return op, (n, c, sizes[0][1], sizes[1][1])


# --- ONNX --------------------------------------------------------------------------------------

def to_onnx(g: Graph, doc: str = ""):
    """The graph as an ``onnx.ModelProto`` (opset 17, float32, dynamic batch), checked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # ONNX values are written once: versions of an in-place Caffe blob get distinct names, the
    # last version keeps the blob's own name (so the outputs are called as in Caffe).
    total: dict[str, int] = {g.input_name: 1}
    for rec in g.records:
        total[rec.dst] = total.get(rec.dst, 0) + 1
    count: dict[str, int] = {}
    current: dict[str, str] = {}

    def new_name(blob: str) -> str:
        k = count.get(blob, 0)
        count[blob] = k + 1
        name = blob if k == total[blob] - 1 else f"{blob}#{k}"
        current[blob] = name
        return name

    new_name(g.input_name)
    nodes, inits = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    for rec in g.records:
        if isinstance(rec, _Conv):
            x = current[rec.src]
            wname = const(f"{rec.name}/weight", rec.weight)
            bname = const(f"{rec.name}/bias", rec.bias)
            nodes.append(helper.make_node(
                "Conv", [x, wname, bname], [new_name(rec.dst)], name=rec.name,
                kernel_shape=list(rec.weight.shape[2:]), strides=list(rec.stride),
                pads=[rec.pad[0], rec.pad[1], rec.pad[0], rec.pad[1]],
                dilations=list(rec.dilation), group=rec.group,
                doc_string="folded: " + ", ".join(rec.folded) if rec.folded else ""))
        elif isinstance(rec, _Affine):
            x = current[rec.src]
            shape = (1, -1) + (1,) * (rec.rank - 2)
            sname = const(f"{rec.name}/scale", rec.scale.reshape(shape))
            bname = const(f"{rec.name}/shift", rec.shift.reshape(shape))
            mid = f"{rec.name}/mul"
            nodes.append(helper.make_node("Mul", [x, sname], [mid], name=mid))
            nodes.append(helper.make_node("Add", [mid, bname], [new_name(rec.dst)],
                                          name=f"{rec.name}/add",
                                          doc_string="affine of: " + ", ".join(
                                              [rec.name] + rec.folded)))
        else:
            srcs = [current[s] for s in rec.srcs]
            if rec.consts:   # Eltwise SUM with coefficients
                scaled = []
                for i, (s, c) in enumerate(zip(srcs, rec.consts)):
                    cname = const(f"{rec.name}/coeff{i}", np.asarray(c))
                    out = f"{rec.name}/scaled{i}"
                    nodes.append(helper.make_node("Mul", [s, cname], [out], name=out))
                    scaled.append(out)
                srcs = scaled
            nodes.append(helper.make_node(rec.op_type, srcs, [new_name(rec.dst)],
                                          name=rec.name, **rec.attrs))

    def value_info(name: str, shape: tuple[int, ...]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape[1:]])

    graph = helper.make_graph(nodes, g.name, [value_info(g.input_name, g.input_shape)],
                              [value_info(o, g.shapes[o]) for o in g.outputs], inits)
    model = helper.make_model(graph, producer_name="rmnet.deploy.export", doc_string=doc,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    h, w = g.input_hw
    helper.set_model_props(model, {"rmnet.input": "raw BGR 0..255, N x 3 x H x W",
                                   "rmnet.input_height": str(h), "rmnet.input_width": str(w)})
    onnx.checker.check_model(model, full_check=True)
    return model


def load_graph(prototxt: str | os.PathLike, weights: str | os.PathLike | None) -> Graph:
    """Read both files and build the checked, folded graph (``weights=None``: shapes only)."""
    net = read_prototxt(prototxt)
    blobs = read_caffemodel(weights) if weights is not None else None
    return build_graph(net, blobs, prototxt, weights)


# --- verification ------------------------------------------------------------------------------

def check_images(images: str | os.PathLike | None, height: int, width: int,
                 n: int = CHECK_IMAGES, seed: int = 0) -> tuple[np.ndarray, str]:
    """A float32 (n, 3, height, width) raw BGR batch for the checks, and where it came from.

    ``images``: a folder (searched recursively; the first ``n`` image files in sorted order), or
    None for ``n`` person crops drawn by ``rmnet.data.synthetic`` (seeded).
    """
    from rmnet.data.images import is_image_name, load_blob, resize_to, to_blob

    if images is not None:
        root = Path(images)
        if not root.is_dir():
            raise ExportError(f"{root}: not a folder of images")
        files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name)
                       and not p.name.startswith("."))[:n]
        if not files:
            raise ExportError(f"{root}: no image files (.jpg, .jpeg, .png) in the folder")
        return load_blob(files, height, width), f"{len(files)} images from {root}"
    crops = synthetic_crops(n, seed)
    return (to_blob([resize_to(c, height, width) for c in crops]),
            f"{n} synthetic person crops (rmnet.data.synthetic, seed {seed})")


def synthetic_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 BGR person crops (128x64, Market-like) drawn by ``rmnet.data.synthetic``."""
    from rmnet.data import synthetic

    cfg = synthetic.SyntheticConfig(train_ids=max(2, n), test_ids=2, seed=seed)
    plan = synthetic.make_plan(cfg)
    items = [it for it in plan.items if it.split == "train"][:n]
    return [synthetic.render_item(plan, it) for it in items]


def caffe_forward(prototxt: str | os.PathLike, weights: str | os.PathLike,
                  blob: np.ndarray) -> np.ndarray:
    """pycaffe's output (the net's first output blob) for one input batch, flattened to (N, D).

    Call only after ``load_graph`` accepted the pair: Caffe aborts the process on a shape
    mismatch.
    """
    from rmnet.deploy.embedder import PycaffeBackend

    return PycaffeBackend(prototxt, weights).infer(blob)


@dataclass
class ExportReport:
    prototxt: str
    weights: str
    onnx: str | None = None
    openvino_xml: str | None = None
    output: str = ""
    input_hw: tuple[int, int] = (0, 0)
    images: str = ""
    max_abs_diff: dict[str, float] = field(default_factory=dict)   # runtime -> max |diff|
    max_abs_ref: float = 0.0                                        # max |pycaffe output|
    tolerance: float = DEFAULT_TOLERANCE
    relative: bool = False     # tolerance on max |diff| / max |pycaffe output| instead
    folded: int = 0            # BN/Scale layers folded into convolutions

    def measure(self, diff: float) -> float:
        """What the tolerance is compared with: the abs diff, or it relative to the output."""
        return diff / max(self.max_abs_ref, 1e-30) if self.relative else diff

    @property
    def ok(self) -> bool:
        return all(self.measure(d) <= self.tolerance for d in self.max_abs_diff.values())

    def lines(self) -> list[str]:
        out = [f"input {self.input_hw[0]}x{self.input_hw[1]} raw BGR, output {self.output!r}; "
               f"{self.folded} BatchNorm/Scale layers folded into convolutions",
               f"check on {self.images} against pycaffe (max |output| {self.max_abs_ref:.4g}):"]
        kind = "relative tolerance" if self.relative else "tolerance"
        for rt, d in self.max_abs_diff.items():
            verdict = "OK" if self.measure(d) <= self.tolerance else "FAIL"
            rel = d / max(self.max_abs_ref, 1e-30)
            out.append(f"  {rt:12s} max abs diff {d:.3g} (relative {rel:.3g})  "
                       f"({kind} {self.tolerance:g}) {verdict}")
        for path in (self.onnx, self.openvino_xml):
            if path:
                out.append(f"  wrote {path}")
        return out


def export(prototxt: str | os.PathLike, weights: str | os.PathLike, out_dir: str | os.PathLike,
           *, name: str | None = None, openvino: bool = True,
           images: str | os.PathLike | None = None, tolerance: float = DEFAULT_TOLERANCE,
           relative: bool = False, n_images: int = CHECK_IMAGES) -> ExportReport:
    """Export and verify (see the module doc); returns the report, raises on a failed check.

    ``relative``: compare ``tolerance`` with max |diff| / max |pycaffe output| (for random-weight
    nets whose outputs are in the hundreds, e.g. the ResNet-50 speed baseline); the default is
    the absolute difference.
    """
    prototxt, weights, out_dir = Path(prototxt), Path(weights), Path(out_dir)
    g = load_graph(prototxt, weights)          # every structural error before any writing
    if len(g.outputs) != 1:
        raise ExportError(f"{prototxt}: the net has {len(g.outputs)} outputs "
                          f"({', '.join(g.outputs)}); a descriptor net has one")
    name = name or weights.stem
    h, w = g.input_hw
    blob, source = check_images(images, h, w, n_images)
    report = ExportReport(str(prototxt), str(weights), output=g.outputs[0], input_hw=(h, w),
                          images=source, tolerance=tolerance, relative=relative,
                          folded=sum(len(r.folded) for r in g.records if isinstance(r, _Conv)))
    doc = (f"Exported by rmnet.deploy.export from {prototxt.name} + {weights.name} "
           f"(caffemodel sha256 {caffemodel.sha256_file(weights)[:16]})")
    model = to_onnx(g, doc)
    ref = caffe_forward(prototxt, weights, blob)
    report.max_abs_ref = float(np.abs(ref).max())

    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.export-"))
    try:
        import onnx

        from rmnet.deploy.embedder import OnnxRuntimeBackend, OpenVINOBackend, runtime_available

        onnx_tmp = stage / f"{name}.onnx"
        onnx.save(model, str(onnx_tmp))
        if runtime_available("onnxruntime"):
            got = OnnxRuntimeBackend(onnx_tmp).infer(blob)
            report.max_abs_diff["onnxruntime"] = _max_diff(ref, got)
        if openvino:
            if not runtime_available("openvino"):
                raise ExportError("--openvino needs the openvino package (pip install "
                                  "openvino; see requirements.txt)")
            import openvino as ov

            xml_tmp = stage / f"{name}.xml"
            ov.save_model(ov.convert_model(str(onnx_tmp)), str(xml_tmp),
                          compress_to_fp16=False)
            got = OpenVINOBackend(xml_tmp).infer(blob)
            report.max_abs_diff["openvino"] = _max_diff(ref, got)
        if not report.max_abs_diff:
            raise ExportError("no runtime to check the ONNX export with: install onnxruntime "
                              "or openvino (requirements.txt)")
        if not report.ok:
            raise ExportCheckError(
                f"export of {prototxt} + {weights} does not match pycaffe: "
                + ", ".join(f"{rt} max abs diff {d:.3g}" for rt, d in
                            report.max_abs_diff.items())
                + f" (max |output| {report.max_abs_ref:.4g}; "
                + ("relative " if relative else "") + f"tolerance {tolerance:g}); "
                "nothing written", report)
        # verified: move into place, each file atomically (the IR's weights before its xml)
        _move_in(onnx_tmp, out_dir / onnx_tmp.name)
        report.onnx = str(out_dir / f"{name}.onnx")
        if openvino:
            _move_in(stage / f"{name}.bin", out_dir / f"{name}.bin")
            _move_in(stage / f"{name}.xml", out_dir / f"{name}.xml")
            report.openvino_xml = str(out_dir / f"{name}.xml")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _move_in(src: Path, dst: Path) -> None:
    """Move a finished file onto ``dst`` atomically (fsynced, via ``rmnet.atomic.atomic_path``)."""
    with atomic_path(dst) as tmp:
        os.replace(src, tmp)


def save_openvino(model, xml_path: str | os.PathLike) -> Path:
    """Write an ``openvino.Model`` as IR (``.xml`` + ``.bin``, weights as they are: FP32 stays
    FP32) atomically: both files are written in a staging folder next to ``xml_path``, then
    moved into place, the ``.bin`` before the ``.xml`` that names the model."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=xml_path.parent, prefix=f".{xml_path.stem}.ir-"))
    try:
        ov.save_model(model, str(stage / xml_path.name), compress_to_fp16=False)
        _move_in(stage / xml_path.with_suffix(".bin").name, xml_path.with_suffix(".bin"))
        _move_in(stage / xml_path.name, xml_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return xml_path


def _max_diff(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.shape != got.shape:
        raise ExportError(f"output shapes differ: pycaffe {ref.shape}, export {got.shape}")
    return float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())


# --- random weights for tests and benchmarks ---------------------------------------------------

def random_caffemodel(prototxt: str | os.PathLike, out: str | os.PathLike,
                      seed: int = 0) -> Path:
    """Write a caffemodel for ``prototxt`` with random, numerically sensible weights.

    A fresh ``caffe.Net`` fills convolutions from their fillers but leaves every BatchNorm blob at
    zero, scale factor included, which Caffe reads as mean 0 and variance 0 (then divides by
    sqrt(eps)): activations explode along the net. Here, with Caffe's RNG seeded, convolutions
    keep their fillers' weights; BatchNorm gets mean N(0, 0.1), variance U(0.5, 2) and factor 1;
    Scale weight U(0.5, 1) and bias N(0, 0.1). Written atomically. For tests and benchmarks.

    (Setting the BatchNorm statistics from real activations instead was tried: random filters
    then leave some channels nearly constant, e.g. ELU outputs stuck near -1, and normalising
    those amplifies float32 rounding ~25x; every runtime then differs from Caffe by ~1e-4 on
    RMNet, which measures the random net's conditioning, not the export.)
    """
    caffe = _import_caffe()
    caffe.set_random_seed(seed)
    net = caffe.Net(str(prototxt), caffe.TEST)
    rng = np.random.default_rng(seed)
    for layer, lname in zip(net.layers, net._layer_names):
        blobs = net.params[lname] if lname in net.params else []
        if layer.type == "BatchNorm":
            c = blobs[0].data.shape[0]
            blobs[0].data[...] = rng.normal(0, 0.1, c)
            blobs[1].data[...] = rng.uniform(0.5, 2.0, c)
            blobs[2].data[...] = 1.0
        elif layer.type == "Scale":
            c = blobs[0].data.shape[0]
            blobs[0].data[...] = rng.uniform(0.5, 1.0, c)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0, 0.1, c)
    out = Path(out)
    with atomic_path(out) as tmp:
        net.save(str(tmp))
    return out
