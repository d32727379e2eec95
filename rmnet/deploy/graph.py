"""A Caffe deploy net read into ONNX-ready records: blob shapes, the caffemodel checked layer
by layer, and BatchNorm/Scale folded into the convolutions. The exporter
(``rmnet.deploy.export``), the OpenCV backend's fit check, the benchmark's and ``model_stats``'s
counts all come from here.

Both files are read with Caffe's own ``caffe_pb2`` (no net is instantiated). Layers it does not
know are refused, naming the prototxt, the layer and its type.

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

Counting (``count_params``, ``conv_macs``): ``params_raw`` counts every Caffe blob value;
``params_affine`` each BatchNorm+Scale pair as one scale and one bias per channel;
``params_folded`` each pair right after a convolution folded into it (one bias per output
channel), a pair with no convolution before it (the input normalisation) as an affine map, and a
lone Scale (the calibration) by its blobs, which is how the published OpenVINO models count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmnet.caffe import caffemodel
from rmnet.caffe.protos import ProtoError, caffe_pb2, read_net
from rmnet.caffe.shapes import (ShapeError, check_shapes, conv_output_size, included,
                                pool_output_size)

# Caffe layer types the graph converts (see the module doc).
SUPPORTED_TYPES = ("Input", "Convolution", "BatchNorm", "Scale", "ReLU", "ELU", "Pooling",
                   "Eltwise")


class ExportError(ValueError):
    """The net or the caffemodel cannot be exported; the message names the file(s) and layer."""



@dataclass
class ConvRecord:
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
class AffineRecord:
    name: str
    src: str
    dst: str
    scale: np.ndarray     # float64 (C,)
    shift: np.ndarray     # float64 (C,)
    rank: int             # rank of the blob it acts on (channels on axis 1)
    folded: list[str] = field(default_factory=list)


@dataclass
class OpRecord:
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

    @property
    def folded_into_convolutions(self) -> int:
        """How many BatchNorm/Scale layers were folded into convolutions."""
        return sum(len(r.folded) for r in self.records if isinstance(r, ConvRecord))


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


class _Builder:
    """The walk over a deploy net behind ``build_graph``: one method per layer type, the blob
    bookkeeping (shapes, which record wrote a blob and whether anything read it since) shared."""

    def __init__(self, net, blobs: dict[str, list[np.ndarray]] | None,
                 prototxt: str | os.PathLike, weights: str | os.PathLike | None):
        self.layers = [lay for lay in net.layer if included(lay, caffe_pb2().TEST)]
        self.blobs, self.prototxt, self.weights = blobs, prototxt, weights
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.g = Graph(name=net.name or Path(prototxt).stem, input_name="", input_shape=(),
                       outputs=[])
        self.open: dict[str, object] = {}   # blob -> record whose output nothing has read yet
        self.read_since_write: dict[str, bool] = {}
        self.write_order: list[str] = []

    # --- bookkeeping ---------------------------------------------------------------------

    def where(self, layer) -> str:
        return f"{self.prototxt}: layer {layer.name!r} (type {layer.type})"

    def params(self, layer, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        """The layer's blobs from the caffemodel, checked against the shapes the net needs."""
        self.g.param_sizes[layer.name] = [int(np.prod(s)) for s in expected]
        if self.blobs is None:
            return [np.zeros(s, np.float32) for s in expected]
        fit = (f"{self.weights} does not fit {self.prototxt}: layer {layer.name!r} "
               f"(type {layer.type})")
        got = self.blobs.get(layer.name)
        if got is None:
            raise ExportError(f"{fit} has no parameters in the caffemodel (expected "
                              f"{len(expected)} blobs of shapes {expected})")
        if len(got) != len(expected):
            raise ExportError(f"{fit} has {len(got)} blobs in the caffemodel, the prototxt "
                              f"needs {len(expected)} ({expected})")
        for i, (arr, shape) in enumerate(zip(got, expected)):
            if not _fits(arr.shape, shape):
                raise ExportError(f"{fit} blob {i} has shape {tuple(arr.shape)} in the "
                                  f"caffemodel, the prototxt needs {shape}")
        return [np.asarray(a, np.float64).reshape(s) for a, s in zip(got, expected)]

    def add_input(self, name: str, shape: tuple[int, ...], layer_desc: str) -> None:
        if self.g.input_name:
            raise ExportError(f"{layer_desc}: a second net input {name!r}; only one input "
                              f"(the image blob) is supported")
        if len(shape) != 4 or shape[1] != 3:
            raise ExportError(f"{layer_desc}: input {name!r} has shape {shape}, expected "
                              f"N x 3 x H x W")
        self.g.input_name, self.g.input_shape = name, shape
        self.shapes[name] = shape
        self.read_since_write[name] = False
        self.write_order.append(name)

    def write(self, blob: str, shape: tuple[int, ...], rec) -> None:
        self.shapes[blob] = shape
        self.read_since_write[blob] = False
        if blob in self.write_order:
            self.write_order.remove(blob)
        self.write_order.append(blob)
        if rec is not None:
            self.open[blob] = rec
        else:
            self.open.pop(blob, None)

    def read(self, blob: str) -> None:
        self.read_since_write[blob] = True
        self.open.pop(blob, None)

    def emit(self, rec, srcs: list[str], dst: str, shape: tuple[int, ...]) -> None:
        """A record that reads ``srcs`` and writes ``dst`` (nothing folds into it)."""
        self.g.records.append(rec)
        for src in srcs:
            self.read(src)
        self.write(dst, shape, None)

    def affine(self, layer, a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> None:
        """A per-channel map ``x * a + b``: folded into the convolution (or map) that wrote its
        input if nothing else reads that output, else a record of its own."""
        src, dst = layer.bottom[0], layer.top[0]
        rec = self.open.get(src)
        in_place = src == dst
        foldable = rec is not None and (in_place or not _read_later(self.layers, layer, src))
        if foldable and isinstance(rec, ConvRecord):
            rec.weight = rec.weight * a[:, None, None, None]
            rec.bias = rec.bias * a + b
        elif foldable and isinstance(rec, AffineRecord):
            rec.scale, rec.shift = rec.scale * a, rec.shift * a + b
        else:
            rec = AffineRecord(layer.name, src, dst, a, b, len(shape))
            self.g.records.append(rec)
            self.read_since_write[src] = True
            self.open.pop(src, None)
            self.write(dst, shape, rec)
            return
        rec.folded.append(layer.name)
        rec.dst = dst
        self.open.pop(src, None)
        self.write(dst, shape, rec)
        if not in_place:
            self.read_since_write[src] = True

    # --- the walk ------------------------------------------------------------------------

    def build(self, net) -> Graph:
        if len(net.layers):
            raise ExportError(f"{self.prototxt}: V1 'layers' nets are not supported; upgrade "
                              f"it with Caffe's upgrade_net_proto_text")
        if len(net.input):   # legacy input fields
            dims = list(net.input_shape) or []
            if len(net.input) != 1 or (dims and len(dims) != 1):
                raise ExportError(f"{self.prototxt}: only one legacy 'input' is supported")
            shape = (tuple(int(d) for d in dims[0].dim) if dims
                     else tuple(int(d) for d in net.input_dim))
            self.add_input(net.input[0], shape, f"{self.prototxt}: input {net.input[0]!r}")
        handlers = {"Input": self.input, "Convolution": self.convolution,
                    "BatchNorm": self.batch_norm, "Scale": self.scale, "ReLU": self.activation,
                    "ELU": self.activation, "Pooling": self.pooling, "Eltwise": self.eltwise}
        seen_names: set[str] = set()
        for layer in self.layers:
            w = self.where(layer)
            if layer.name in seen_names:
                raise ExportError(f"{w}: layer name used twice")
            seen_names.add(layer.name)
            if layer.type not in SUPPORTED_TYPES:
                extra = (" (a Python layer's code is not part of the model; replace it with "
                         "Caffe built-ins for deployment)" if layer.type == "Python" else "")
                raise ExportError(f"{w}: layer type {layer.type!r} is not supported by the "
                                  f"exporter{extra}; supported: {', '.join(SUPPORTED_TYPES)}")
            for bottom in layer.bottom:
                if bottom not in self.shapes:
                    raise ExportError(f"{w}: reads blob {bottom!r}, which no earlier layer "
                                      f"produces")
            if layer.type != "Input":
                if len(layer.top) != 1:
                    raise ExportError(f"{w}: expected exactly one top, got {list(layer.top)}")
                if layer.type != "Eltwise" and len(layer.bottom) != 1:
                    raise ExportError(f"{w}: expected one bottom, got {list(layer.bottom)}")
            handlers[layer.type](layer, w)
        g = self.g
        if not g.input_name:
            raise ExportError(f"{self.prototxt}: the net has no Input layer (deploy nets start "
                              f"with one)")
        g.outputs = [b for b in self.write_order
                     if not self.read_since_write[b] and b != g.input_name]
        if not g.outputs:
            raise ExportError(f"{self.prototxt}: the net has no output blob")
        g.shapes = self.shapes
        return g

    # --- one method per layer type -------------------------------------------------------

    def input(self, layer, w: str) -> None:
        if len(layer.top) != 1:
            raise ExportError(f"{w}: only one top is supported")
        ps = list(layer.input_param.shape)
        if len(ps) != 1:
            raise ExportError(f"{w}: expected one input_param.shape, got {len(ps)}")
        self.add_input(layer.top[0], tuple(int(d) for d in ps[0].dim), w)

    def convolution(self, layer, w: str) -> None:
        src, dst = layer.bottom[0], layer.top[0]
        in_shape = self.shapes[src]
        p = layer.convolution_param
        if p.axis != 1 or len(in_shape) != 4:
            raise ExportError(f"{w}: only 2-D convolution over axis 1 is supported")
        kh, kw = _pair(p.kernel_size, p.kernel_h, p.kernel_w,
                       p.HasField("kernel_h") or p.HasField("kernel_w"), 0, w)
        sh, sw = _pair(p.stride, p.stride_h, p.stride_w,
                       p.HasField("stride_h") or p.HasField("stride_w"), 1, w)
        ph, pw = _pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), 0, w)
        dh, dw = _pair(p.dilation, 1, 1, False, 1, w)
        group = int(p.group)
        c_in, c_out = in_shape[1], int(p.num_output)
        if kh < 1 or kw < 1 or group < 1 or c_in % group or c_out % group:
            raise ExportError(f"{w}: kernel {kh}x{kw}, group {group} do not fit "
                              f"{c_in} -> {c_out} channels")
        oh = conv_output_size(in_shape[2], kh, sh, ph, dh)
        ow = conv_output_size(in_shape[3], kw, sw, pw, dw)
        if (in_shape[2] + 2 * ph < dh * (kh - 1) + 1 or in_shape[3] + 2 * pw < dw * (kw - 1) + 1
                or oh < 1 or ow < 1):   # (ONNX floors where Caffe truncates toward zero)
            raise ExportError(f"{w}: input {in_shape[2]}x{in_shape[3]} is too small")
        expected = [(c_out, c_in // group, kh, kw)] + ([(c_out,)] if p.bias_term else [])
        got = self.params(layer, expected)
        bias = got[1] if p.bias_term else np.zeros(c_out)
        rec = ConvRecord(layer.name, src, dst, got[0], bias, (sh, sw), (ph, pw), (dh, dw), group)
        self.g.records.append(rec)
        self.read(src)
        self.write(dst, (in_shape[0], c_out, oh, ow), rec)

    def batch_norm(self, layer, w: str) -> None:
        in_shape = self.shapes[layer.bottom[0]]
        bp = layer.batch_norm_param
        if bp.HasField("use_global_stats") and not bp.use_global_stats:
            raise ExportError(f"{w}: use_global_stats is false (batch statistics at test "
                              f"time); a deploy net must use the stored statistics")
        c = in_shape[1]
        mean, var, factor = self.params(layer, [(c,), (c,), (1,)])
        f = float(factor[0])
        inv = 0.0 if f == 0 else 1.0 / f
        a = 1.0 / np.sqrt(var * inv + float(bp.eps))
        self.affine(layer, a, -mean * inv * a, in_shape)

    def scale(self, layer, w: str) -> None:
        in_shape = self.shapes[layer.bottom[0]]
        sp = layer.scale_param
        if sp.axis != 1 or sp.num_axes != 1:
            raise ExportError(f"{w}: only per-channel Scale (axis 1, num_axes 1) is supported")
        c = in_shape[1]
        got = self.params(layer, [(c,)] + ([(c,)] if sp.bias_term else []))
        self.affine(layer, got[0], got[1] if sp.bias_term else np.zeros(c), in_shape)

    def activation(self, layer, w: str) -> None:
        src, dst = layer.bottom[0], layer.top[0]
        if layer.type == "ReLU":
            slope = float(layer.relu_param.negative_slope)
            op = OpRecord(layer.name, "LeakyRelu" if slope else "Relu", [src], dst,
                          {"alpha": slope} if slope else {})
        else:
            op = OpRecord(layer.name, "Elu", [src], dst, {"alpha": float(layer.elu_param.alpha)})
        self.emit(op, [src], dst, self.shapes[src])

    def pooling(self, layer, w: str) -> None:
        op, out_shape = _pooling(layer, self.shapes[layer.bottom[0]], w)
        self.emit(op, [layer.bottom[0]], layer.top[0], out_shape)

    def eltwise(self, layer, w: str) -> None:
        ep = layer.eltwise_param
        srcs = list(layer.bottom)
        if len(srcs) < 2:
            raise ExportError(f"{w}: Eltwise needs at least two bottoms")
        in_shape = self.shapes[srcs[0]]
        for s in srcs:
            if self.shapes[s] != in_shape:
                raise ExportError(f"{w}: bottoms have different shapes "
                                  f"({', '.join(f'{b} {self.shapes[b]}' for b in srcs)})")
        coeff = [float(c) for c in ep.coeff]
        if coeff and len(coeff) != len(srcs):
            raise ExportError(f"{w}: {len(coeff)} coefficients for {len(srcs)} bottoms")
        kind = caffe_pb2().EltwiseParameter.EltwiseOp.Name(ep.operation)
        if kind != "SUM" and coeff:
            raise ExportError(f"{w}: coefficients are only allowed with SUM")
        op_type = {"SUM": "Sum", "PROD": "Mul", "MAX": "Max"}[kind]
        if op_type == "Mul" and len(srcs) > 2:
            raise ExportError(f"{w}: PROD of more than two bottoms is not supported")
        op = OpRecord(layer.name, op_type, srcs, layer.top[0])
        if coeff and any(c != 1.0 for c in coeff):
            op.consts = [np.float32(c) for c in coeff]
        self.emit(op, srcs, layer.top[0], in_shape)


def build_graph(net, blobs: dict[str, list[np.ndarray]] | None, prototxt: str | os.PathLike,
                weights: str | os.PathLike | None = None) -> Graph:
    """Walk the deploy net: shapes, parameter checks against the caffemodel, folding.

    ``blobs=None`` checks and shapes the net only (weights all zero), e.g. for FLOPs counts.
    Every error names ``prototxt`` (and ``weights`` for parameter mismatches) and the layer.
    What Caffe itself would abort on is found first by Caffe's own shape rules
    (``rmnet.caffe.shapes``), with the same message ``load_net`` gives.
    """
    try:
        check_shapes(net, prototxt)
    except ShapeError as e:
        raise ExportError(str(e)) from None
    return _Builder(net, blobs, prototxt, weights).build(net)


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


def _pooling(layer, in_shape: tuple[int, ...], w: str) -> tuple[OpRecord, tuple[int, ...]]:
    pb2 = caffe_pb2()
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
        return (OpRecord(layer.name, "GlobalMaxPool" if method == "MAX" else "GlobalAveragePool",
                    [layer.bottom[0]], layer.top[0]), (n, c, 1, 1))
    kh, kw = _pair([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h,
                   p.kernel_w, p.HasField("kernel_h") or p.HasField("kernel_w"), 0, w)
    sh, sw = _pair([p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w,
                   p.HasField("stride_h") or p.HasField("stride_w"), 1, w)
    if kh < 1 or kw < 1:
        raise ExportError(f"{w}: pooling needs a kernel size (or global_pooling)")
    ceil_mode = pb2.PoolingParameter.RoundMode.Name(p.round_mode) == "CEIL"
    sizes = [pool_output_size(size, k, s, pad, ceil_mode)
             for size, k, s, pad in ((h, kh, sh, ph), (wd, kw, sw, pw))]
    if min(c_ for _, c_ in sizes) < 1 or min(f for f, _ in sizes) < 1:
        raise ExportError(f"{w}: input {h}x{wd} is too small for a {kh}x{kw} pooling")
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
    op = OpRecord(layer.name, "MaxPool" if method == "MAX" else "AveragePool",
             [layer.bottom[0]], layer.top[0], attrs)
    return op, (n, c, sizes[0][1], sizes[1][1])


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> its parameter blobs (float32 arrays) from a binary caffemodel
    (``rmnet.caffe.caffemodel``), with its errors as ExportError."""
    try:
        return caffemodel.read_caffemodel(path)
    except caffemodel.WeightsError as e:
        raise ExportError(str(e)) from None


def load_graph(prototxt: str | os.PathLike, weights: str | os.PathLike | None) -> Graph:
    """Read both files and build the checked, folded graph (``weights=None``: shapes only)."""
    try:
        net = read_net(prototxt)
    except ProtoError as e:
        raise ExportError(str(e)) from None
    blobs = read_caffemodel(weights) if weights is not None else None
    return build_graph(net, blobs, prototxt, weights)


# --- counting -----------------------------------------------------------------------------------

def count_params(net_param, param_sizes: dict[str, list[int]]) -> dict[str, int]:
    """Raw, BN/Scale-as-affine and BN/Scale-folded parameter counts of a NetParameter.

    ``param_sizes``: layer name -> sizes of its parameter blobs (from caffe.Net)."""
    layers = list(net_param.layer)
    raw = affine = folded = 0
    last_writer: dict[str, object] = {}   # blob -> the last layer that wrote it
    paired_scales: set[str] = set()
    for i, layer in enumerate(layers):
        sizes = param_sizes.get(layer.name, [])
        raw += sum(sizes)
        if layer.type == "BatchNorm":
            blob = layer.top[0]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if not (nxt is not None and nxt.type == "Scale" and list(nxt.bottom) == [blob]):
                raise ValueError(f"BatchNorm {layer.name!r} is not followed by its Scale")
            channels = sizes[0]
            paired_scales.add(nxt.name)
            affine += 2 * channels
            prev = last_writer.get(layer.bottom[0])
            if prev is not None and prev.type == "Convolution" and layer.bottom[0] == blob:
                # Folded into the convolution: its weights absorb the scale, one bias remains
                # (already counted if the convolution has its own bias).
                folded += 0 if prev.convolution_param.bias_term else channels
            else:
                folded += 2 * channels
        elif layer.type == "Scale" and layer.name in paired_scales:
            pass   # counted with its BatchNorm
        else:
            affine += sum(sizes)
            folded += sum(sizes)
        for top in layer.top:
            last_writer[top] = layer
    return {"params_raw": raw, "params_affine": affine, "params_folded": folded}


def conv_macs(net_param, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of all Convolution layers, from the instantiated blob shapes."""
    macs = 0
    for layer in net_param.layer:
        if layer.type != "Convolution":
            continue
        p = layer.convolution_param
        n_in = shapes[layer.bottom[0]][1]
        out = shapes[layer.top[0]]
        k = list(p.kernel_size) or [p.kernel_h, p.kernel_w]
        kh, kw = (k[0], k[0]) if len(k) == 1 else (k[0], k[1])
        group = p.group or 1
        out_elems = 1
        for d in out[1:]:
            out_elems *= d
        macs += out_elems * (n_in // group) * kh * kw
    return macs
