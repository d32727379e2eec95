"""OpenVINO IR files -> one small graph of the operations RMNet uses, and a numpy forward of it.

Intel published its RMNet re-identification models (person-reidentification-retail-0079 at
160x64, -0076 at 384x128) only as OpenVINO IR. Two generations of the format exist, and this
module reads both into the same ``IRGraph``:

- **IR v5-v7** (Model Optimizer 2018-2019), read here with ElementTree and numpy, because the
  installed ``openvino`` package no longer reads them. The XML is ``<net version=...>`` with
  ``<layers>``: each ``<layer id name type precision>`` has a ``<data .../>`` element of
  attributes, ``<input>``/``<output>`` ports with ``<dim>`` sizes and, for layers with
  parameters, ``<blobs><weights offset size/><biases offset size/></blobs>``: byte ranges of
  the ``.bin`` file next to the XML, raw little-endian float32 (FP32) or float16 (FP16) as the
  layer's (or the blob's) ``precision`` says. ``<edges>`` connect ``from-layer``/``from-port``
  to ``to-layer``/``to-port``. Layer types read: ``Input``, ``ScaleShift`` (per-channel
  ``weights`` and ``biases``), ``Convolution`` (``kernel``, ``strides``, ``pads_begin``,
  ``pads_end``, ``dilations``, ``group``, ``output``; weights (out, in/group, kh, kw) flat),
  ``Activation`` with ``type="elu"`` or a layer typed ``elu`` (``alpha``), ``ReLU``
  (``negative_slope`` 0), ``Eltwise`` (``operation="sum"``), ``Pooling`` (``pool-method="max"``,
  ``kernel``, ``strides``, pads, ``rounding_type``; a kernel covering the whole input is global
  pooling). The legacy ``kernel-x``/``stride-x``/``pad-x`` spellings are accepted too.
- **IR v10/v11** (OpenVINO 2020 and later, also what ``tools/export.py --openvino`` writes), read
  through ``openvino.Core().read_model``: ``Constant`` nodes (possibly float16 behind a
  ``Convert``, or reshaped) feed ``Convolution``/``GroupConvolution``; an ``Add`` of a constant
  after a convolution is its bias; ``Multiply``/``Add`` by constants on a tensor are a
  per-channel scale/shift; ``Elu``, ``Relu``, ``Add`` of two tensors, ``MaxPool``, and
  ``ReduceMax`` over the spatial axes (global max pooling).

Anything else is refused with ``IRError`` naming the file, the layer and its type.

``IRGraph.ops`` is in topological order (the graph's own order among ready layers), each op
naming its inputs by index. ``forward()`` runs the graph in float64 numpy, written from the
operations' definitions (no runtime shared with Caffe or OpenVINO): the independent reference
that an import of an old IR is checked against.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OLD_VERSIONS = (5, 6, 7)
NEW_VERSIONS = (10, 11)
KINDS = ("input", "scaleshift", "conv", "elu", "relu", "sum", "maxpool", "globalmaxpool")


class IRError(ValueError):
    """An IR file that cannot be read or holds an operation this reader does not know."""


@dataclass
class IROp:
    """One operation. ``kind`` is one of KINDS; ``name``/``ir_type`` are as in the file."""
    name: str
    kind: str
    ir_type: str
    inputs: list[int] = field(default_factory=list)
    shape: tuple[int, ...] = ()                 # output shape, batch included, when known
    weight: np.ndarray | None = None            # conv (out, in/group, kh, kw); scaleshift (C,)
    bias: np.ndarray | None = None              # conv / scaleshift (C,)
    kernel: tuple[int, int] = (1, 1)            # conv and maxpool
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)               # pads_begin
    pad_end: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1
    alpha: float = 1.0                          # elu
    ceil: bool = False                          # maxpool rounding


@dataclass
class IRGraph:
    path: Path
    version: int
    precision: str                              # FP32, FP16 (weights as stored)
    ops: list[IROp]
    output: int                                 # index of the op whose output is the result

    @property
    def input(self) -> IROp:
        return self.ops[0]

    @property
    def input_hw(self) -> tuple[int, int]:
        s = self.input.shape
        return int(s[2]), int(s[3])

    def consumers(self, index: int) -> list[int]:
        return [j for j, op in enumerate(self.ops) if index in op.inputs]

    def where(self, op: IROp) -> str:
        return f"{self.path}: layer {op.name!r} (type {op.ir_type})"

    @property
    def parameter_count(self) -> int:
        """Weights and biases of the convolutions and scale/shifts (Intel's 0079: 819,766)."""
        return sum(int(a.size) for op in self.ops for a in (op.weight, op.bias)
                   if a is not None)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        h, w = self.input_hw
        return (f"{self.path.name}: IR v{self.version}, {self.precision} weights, input "
                f"{h}x{w}, {self.parameter_count:,} parameters; "
                + ", ".join(f"{n} {k}" for k, n in counts.items()))


def ir_version(xml_path: str | os.PathLike) -> int:
    """The ``version`` attribute of an IR's ``<net>`` element; IRError if not an IR XML."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except OSError as e:
        raise IRError(f"{path}: cannot read the IR: {e.strerror or e}") from None
    except ET.ParseError as e:
        raise IRError(f"{path}: not an XML file: {e}") from None
    if root.tag != "net" or "version" not in root.attrib:
        raise IRError(f"{path}: not an OpenVINO IR (no <net version=...> root element)")
    try:
        return int(root.attrib["version"])
    except ValueError:
        raise IRError(f"{path}: <net version={root.attrib['version']!r}> is not a number") from None


def read_ir(xml_path: str | os.PathLike) -> IRGraph:
    """Read an IR (v5-v7 by this module's parser, v10/v11 through openvino)."""
    path = Path(xml_path)
    version = ir_version(path)
    if version in OLD_VERSIONS:
        return read_old_ir(path)
    if version in NEW_VERSIONS:
        return read_new_ir(path)
    raise IRError(f"{path}: IR version {version} is not supported (v5-v7 of Model Optimizer "
                  f"2018-2019, v10/v11 of OpenVINO 2020+)")


# --- IR v5-v7 ---------------------------------------------------------------------------------

def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise IRError(f"{what}: not a list of integers: {text!r}") from None


def _pair_attr(data: dict, name: str, legacy: str, default: int, what: str) -> tuple[int, int]:
    """A 2-D attribute: ``name="h,w"`` (v5+), or the legacy ``<legacy>-y``/``<legacy>-x``."""
    if name in data:
        vals = _ints(data[name], f"{what} attribute {name}")
        if len(vals) == 1:
            return vals[0], vals[0]
        if len(vals) != 2:
            raise IRError(f"{what}: attribute {name}={data[name]!r} is not 2-D")
        return vals[0], vals[1]
    if f"{legacy}-x" in data or f"{legacy}-y" in data:
        return (int(data.get(f"{legacy}-y", data.get(f"{legacy}-x", default))),
                int(data.get(f"{legacy}-x", data.get(f"{legacy}-y", default))))
    return default, default


def _port_dims(port) -> tuple[int, ...]:
    return tuple(int(d.text) for d in port.findall("dim"))


def _blob(layer, which: str, bin_data: bytes, precision: str, what: str) -> np.ndarray | None:
    b = layer.find(f"blobs/{which}")
    if b is None:
        return None
    try:
        offset, size = int(b.attrib["offset"]), int(b.attrib["size"])
    except (KeyError, ValueError):
        raise IRError(f"{what}: <{which}> needs integer offset and size attributes") from None
    prec = b.attrib.get("precision", precision).upper()
    dtype = {"FP32": "<f4", "FP16": "<f2"}.get(prec)
    if dtype is None:
        raise IRError(f"{what}: {which} precision {prec} is not supported (FP32, FP16)")
    item = np.dtype(dtype).itemsize
    if offset < 0 or size < 0 or size % item or offset + size > len(bin_data):
        raise IRError(f"{what}: {which} bytes {offset}..{offset + size} do not fit the .bin file "
                      f"({len(bin_data)} bytes) as {prec}")
    return np.frombuffer(bin_data, dtype, size // item, offset).astype(np.float32)


def read_old_ir(xml_path: str | os.PathLike) -> IRGraph:
    """Parse an IR v5-v7 XML and its ``.bin`` (see the module doc)."""
    path = Path(xml_path)
    root = ET.parse(path).getroot()
    version = int(root.attrib["version"])
    bin_path = path.with_suffix(".bin")
    try:
        bin_data = bin_path.read_bytes()
    except OSError as e:
        raise IRError(f"{bin_path}: cannot read the IR weights: {e.strerror or e}") from None
    net_precision = root.attrib.get("precision", "FP32").upper()
    layers = root.findall("layers/layer")
    if not layers:
        raise IRError(f"{path}: no <layers><layer> elements")
    by_id = {}
    for lay in layers:
        lid = lay.attrib.get("id")
        if lid is None or lid in by_id:
            raise IRError(f"{path}: layer {lay.attrib.get('name')!r} has a missing or repeated id")
        by_id[lid] = lay
    # edges: (to layer, to port) <- (from layer, from port)
    producers: dict[str, list[tuple[int, str]]] = {lid: [] for lid in by_id}
    for e in root.findall("edges/edge"):
        a = e.attrib
        try:
            src, dst = a["from-layer"], a["to-layer"]
            to_port = int(a["to-port"])
        except (KeyError, ValueError):
            raise IRError(f"{path}: an <edge> without from-layer/to-layer/to-port") from None
        if src not in by_id or dst not in by_id:
            raise IRError(f"{path}: an edge names layer {src if src not in by_id else dst}, "
                          f"which does not exist")
        producers[dst].append((to_port, src))
    # topological order, ties broken by position in the file
    position = {lid: i for i, lid in enumerate(by_id)}
    indeg = {lid: len(producers[lid]) for lid in by_id}
    users: dict[str, list[str]] = {lid: [] for lid in by_id}
    for dst, srcs in producers.items():
        for _, src in srcs:
            users[src].append(dst)
    ready = sorted((lid for lid in by_id if indeg[lid] == 0), key=position.get)
    order: list[str] = []
    while ready:
        lid = ready.pop(0)
        order.append(lid)
        for u in users[lid]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
                ready.sort(key=position.get)
    if len(order) != len(by_id):
        raise IRError(f"{path}: the graph has a cycle")

    index: dict[str, int] = {}
    ops: list[IROp] = []
    for lid in order:
        lay = by_id[lid]
        name, typ = lay.attrib.get("name", lid), lay.attrib.get("type", "")
        prec = lay.attrib.get("precision", net_precision).upper()
        what = f"{path}: layer {name!r} (type {typ})"
        data = dict(lay.find("data").attrib) if lay.find("data") is not None else {}
        ins = [index[src] for _, src in sorted(producers[lid])]
        outs = lay.findall("output/port")
        shape = _port_dims(outs[0]) if outs else ()
        t = typ.lower()
        op = IROp(name=name, kind="", ir_type=typ, inputs=ins, shape=shape)
        n_in = 0 if t == "input" else 2 if t == "eltwise" else 1
        if len(ins) != n_in:
            raise IRError(f"{what}: has {len(ins)} inputs, expected {n_in}")
        if t == "input":
            if ops:
                raise IRError(f"{what}: a second input; RMNet IRs have one (the image)")
            if len(shape) != 4 or shape[1] != 3:
                raise IRError(f"{what}: input shape {shape}, expected N x 3 x H x W")
            op.kind = "input"
        elif t == "scaleshift":
            op.kind = "scaleshift"
            op.weight = _blob(lay, "weights", bin_data, prec, what)
            op.bias = _blob(lay, "biases", bin_data, prec, what)
            c = ops[ins[0]].shape[1] if ops[ins[0]].shape else None
            if op.weight is None:
                raise IRError(f"{what}: no weights blob")
            if op.bias is None:
                op.bias = np.zeros_like(op.weight)
            if c is not None:   # a single value applies to every channel
                op.weight = op.weight if op.weight.size != 1 else np.full(c, op.weight[0])
                op.bias = op.bias if op.bias.size != 1 else np.full(c, op.bias[0])
            if c is not None and (op.weight.size != c or op.bias.size != c):
                raise IRError(f"{what}: {op.weight.size} weights / {op.bias.size} biases for "
                              f"{c} channels")
        elif t == "convolution":
            op.kind = "conv"
            op.kernel = _pair_attr(data, "kernel", "kernel", 0, what)
            op.stride = _pair_attr(data, "strides", "stride", 1, what)
            op.pad = _pair_attr(data, "pads_begin", "pad", 0, what)
            op.pad_end = _pair_attr(data, "pads_end", "pad", 0, what) if (
                "pads_end" in data or "pad-x" in data or "pad-y" in data) else op.pad
            op.dilation = _pair_attr(data, "dilations", "dilation", 1, what)
            op.group = int(data.get("group", 1))
            try:
                c_out = int(data["output"])
            except (KeyError, ValueError):
                raise IRError(f"{what}: no integer 'output' attribute") from None
            src_shape = ops[ins[0]].shape
            if not src_shape:
                raise IRError(f"{what}: the input's shape is unknown")
            c_in = src_shape[1]
            if op.group < 1 or c_in % op.group or c_out % op.group or min(op.kernel) < 1:
                raise IRError(f"{what}: kernel {op.kernel}, group {op.group} do not fit "
                              f"{c_in} -> {c_out} channels")
            w = _blob(lay, "weights", bin_data, prec, what)
            want = (c_out, c_in // op.group, *op.kernel)
            if w is None or w.size != int(np.prod(want)):
                raise IRError(f"{what}: weights hold {0 if w is None else w.size} values, "
                              f"kernel {want} needs {int(np.prod(want))}")
            op.weight = w.reshape(want)
            b = _blob(lay, "biases", bin_data, prec, what)
            if b is not None and b.size != c_out:
                raise IRError(f"{what}: {b.size} biases for {c_out} outputs")
            op.bias = b if b is not None else np.zeros(c_out, np.float32)
        elif t in ("activation", "elu"):
            kind = data.get("type", "elu").lower() if t == "activation" else "elu"
            if kind == "elu":
                op.kind, op.alpha = "elu", float(data.get("alpha", 1.0))
            elif kind == "relu":
                op.kind = "relu"
            else:
                raise IRError(f"{what}: activation {kind!r} is not supported (elu, relu)")
        elif t == "relu":
            if float(data.get("negative_slope", 0)) != 0:
                raise IRError(f"{what}: leaky ReLU (negative_slope "
                              f"{data['negative_slope']}) is not supported")
            op.kind = "relu"
        elif t == "eltwise":
            if data.get("operation", "sum").lower() != "sum" or data.get("coeff"):
                raise IRError(f"{what}: only a plain sum is supported, got operation "
                              f"{data.get('operation')!r} coeff {data.get('coeff')!r}")
            op.kind = "sum"
        elif t == "pooling":
            method = data.get("pool-method", data.get("pool_method", "max")).lower()
            if method != "max":
                raise IRError(f"{what}: pool-method {method!r} is not supported (max)")
            op.kind = "maxpool"
            op.kernel = _pair_attr(data, "kernel", "kernel", 0, what)
            op.stride = _pair_attr(data, "strides", "stride", 1, what)
            op.pad = _pair_attr(data, "pads_begin", "pad", 0, what)
            op.pad_end = _pair_attr(data, "pads_end", "pad", 0, what) if (
                "pads_end" in data or "pad-x" in data) else op.pad
            rounding = data.get("rounding_type", data.get("rounding-type", "ceil")).lower()
            op.ceil = rounding == "ceil"
            src_shape = ops[ins[0]].shape
            if (src_shape and tuple(op.kernel) == tuple(src_shape[2:]) and op.pad == (0, 0)
                    and (not shape or tuple(shape[2:]) == (1, 1))):
                op.kind = "globalmaxpool"
        else:
            raise IRError(f"{what}: layer type {typ!r} is not supported by the importer "
                          f"(Input, ScaleShift, Convolution, Activation/elu, ReLU, Eltwise, "
                          f"Pooling)")
        if op.kind != "input" and not op.shape:
            raise IRError(f"{what}: no output port with dims")
        index[lid] = len(ops)
        ops.append(op)
    outputs = [i for i in range(len(ops)) if not any(i in o.inputs for o in ops)]
    if len(outputs) != 1:
        names = ", ".join(repr(ops[i].name) for i in outputs)
        raise IRError(f"{path}: {len(outputs)} outputs ({names}); a descriptor net has one")
    precs = {lay.attrib.get("precision", net_precision).upper() for lay in layers
             if lay.find("blobs") is not None}
    return IRGraph(path, version, "/".join(sorted(precs)) or net_precision, ops, outputs[0])


# --- IR v10/v11 through openvino --------------------------------------------------------------

def read_new_ir(xml_path: str | os.PathLike) -> IRGraph:
    """Read an IR v10/v11 with ``openvino`` and reduce it to IR ops (see the module doc)."""
    import openvino as ov

    path = Path(xml_path)
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:   # openvino raises RuntimeError with a long message
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IRError(f"{path}: openvino cannot read the IR: {first}") from None
    version = ir_version(path)
    ops: list[IROp] = []
    value: dict[tuple[int, int], tuple[str, object]] = {}   # (node id, port) -> const | op
    precisions: set[str] = set()

    def key(output) -> tuple[int, int]:
        return output.get_node().get_instance_id(), output.get_index()

    def n_users(output) -> int:
        return len(output.get_target_inputs())

    for node in model.get_ordered_ops():
        t = node.get_type_name()
        name = node.get_friendly_name()
        what = f"{path}: layer {name!r} (type {t})"
        srcs = [inp.get_source_output() for inp in node.inputs()]
        vals = [value[key(s)] for s in srcs]
        consts = [v[1] for v in vals if v[0] == "const"]
        tensors = [(v[1], s) for v, s in zip(vals, srcs) if v[0] == "op"]
        out_shape = _partial_shape(node) if node.get_output_size() else ()

        def emit(op: IROp) -> None:
            op.shape = op.shape or out_shape
            ops.append(op)
            for port in range(node.get_output_size()):
                value[(node.get_instance_id(), port)] = ("op", len(ops) - 1)

        def const(arr) -> None:
            value[(node.get_instance_id(), 0)] = ("const", np.asarray(arr))

        if t == "Parameter":
            shape = out_shape
            if ops or len(shape) != 4 or shape[1] != 3 or min(shape[2:]) < 1:
                raise IRError(f"{what}: expected one N x 3 x H x W input, got {shape or 'dynamic'}")
            emit(IROp(name, "input", t))
        elif t == "Constant":
            data = node.get_data()
            precisions.add(str(data.dtype))
            const(np.array(data))
        elif t == "Convert" and not tensors:
            const(np.asarray(consts[0], np.float32))
        elif t in ("Reshape", "Squeeze", "Unsqueeze") and not tensors:
            if -1 in out_shape or not out_shape:
                raise IRError(f"{what}: a constant reshaped to a dynamic shape")
            const(np.asarray(consts[0]).reshape(out_shape))
        elif t in ("Convolution", "GroupConvolution"):
            if len(tensors) != 1 or len(consts) != 1:
                raise IRError(f"{what}: expected a tensor and constant weights")
            a = node.get_attributes()
            if a.get("auto_pad", "explicit") not in ("explicit", "notset"):
                raise IRError(f"{what}: auto_pad {a['auto_pad']!r} is not supported")
            w = np.asarray(consts[0], np.float32)
            group = 1
            if t == "GroupConvolution":
                group = w.shape[0]
                w = w.reshape(w.shape[0] * w.shape[1], *w.shape[2:])
            emit(IROp(name, "conv", t, [tensors[0][0]], weight=w,
                      bias=np.zeros(w.shape[0], np.float32), kernel=tuple(w.shape[2:]),
                      stride=tuple(a["strides"]), pad=tuple(a["pads_begin"]),
                      pad_end=tuple(a["pads_end"]), dilation=tuple(a["dilations"]),
                      group=group))
        elif t in ("Add", "Multiply") and len(tensors) == 1 and len(consts) == 1:
            idx, src = tensors[0]
            c = np.asarray(consts[0], np.float32)
            prev = ops[idx]
            channels = prev.shape[1] if prev.shape else c.size
            full = (1,) * (4 - c.ndim) + c.shape if c.ndim <= 4 else c.shape
            if len(full) != 4 or any(d != 1 for k, d in enumerate(full) if k != 1) or \
                    full[1] not in (1, channels):
                raise IRError(f"{what}: constant of shape {c.shape} is not per-channel")
            c = np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float32)
            # the only reader of a convolution or scale/shift: fold into it (exact)
            foldable = n_users(src) == 1 and prev.kind in ("conv", "scaleshift")
            if foldable and t == "Add":
                prev.bias = prev.bias + c
                value[(node.get_instance_id(), 0)] = ("op", idx)
                prev.name = f"{prev.name}+{name}" if prev.kind == "scaleshift" else prev.name
            elif foldable and t == "Multiply":
                if prev.kind == "conv":
                    prev.weight = prev.weight * c[:, None, None, None]
                else:
                    prev.weight = prev.weight * c
                prev.bias = prev.bias * c
                value[(node.get_instance_id(), 0)] = ("op", idx)
            else:
                one, zero = np.ones(channels, np.float32), np.zeros(channels, np.float32)
                emit(IROp(name, "scaleshift", t, [idx], weight=c if t == "Multiply" else one,
                          bias=c if t == "Add" else zero))
        elif t == "Add" and len(tensors) == 2:
            emit(IROp(name, "sum", t, [tensors[0][0], tensors[1][0]]))
        elif t == "Elu":
            emit(IROp(name, "elu", t, [tensors[0][0]], alpha=float(node.get_attributes()["alpha"])))
        elif t == "Relu":
            emit(IROp(name, "relu", t, [tensors[0][0]]))
        elif t == "MaxPool":
            a = node.get_attributes()
            if a.get("auto_pad", "explicit") not in ("explicit", "notset"):
                raise IRError(f"{what}: auto_pad {a['auto_pad']!r} is not supported")
            if tuple(a.get("dilations", (1, 1))) != (1, 1):
                raise IRError(f"{what}: dilated pooling is not supported")
            emit(IROp(name, "maxpool", t, [tensors[0][0]], kernel=tuple(a["kernel"]),
                      stride=tuple(a["strides"]), pad=tuple(a["pads_begin"]),
                      pad_end=tuple(a["pads_end"]),
                      ceil=str(a.get("rounding_type", "floor")).lower() == "ceil"))
        elif t == "ReduceMax" and len(tensors) == 1:
            axes = sorted(int(v) % 4 for v in np.asarray(consts[0]).reshape(-1))
            if axes != [2, 3] or not node.get_attributes().get("keep_dims", False):
                raise IRError(f"{what}: only a max over both spatial axes, keeping them, is "
                              f"supported (axes {axes})")
            emit(IROp(name, "globalmaxpool", t, [tensors[0][0]]))
        elif t == "Result":
            value[(node.get_instance_id(), 0)] = vals[0]
        else:
            raise IRError(f"{what}: operation {t!r} is not supported by the importer (Parameter, "
                          f"Constant, Convolution, GroupConvolution, Add, Multiply, Elu, Relu, "
                          f"MaxPool, ReduceMax)")
    results = model.get_results()
    if len(results) != 1:
        raise IRError(f"{path}: {len(results)} outputs; a descriptor net has one")
    out = value[key(results[0].input(0).get_source_output())]
    if out[0] != "op":
        raise IRError(f"{path}: the output is a constant")
    prec = "FP16" if "float16" in precisions else "FP32"
    return IRGraph(path, version, prec, ops, int(out[1]))


def _partial_shape(node) -> tuple[int, ...]:
    """A node's first output shape, -1 for dynamic dimensions (the batch), () if unranked."""
    ps = node.get_output_partial_shape(0)
    if ps.rank.is_dynamic:
        return ()
    return tuple(d.get_length() if d.is_static else -1 for d in ps)


# --- numpy forward ----------------------------------------------------------------------------

def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: tuple[int, int],
           pad: tuple[int, int], pad_end: tuple[int, int], group: int,
           dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Grouped 2-D cross-correlation (N, C, H, W) * (O, C/group, kh, kw) + b, zero padding."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad_end[0]), (pad[1], pad_end[1])))
    oh = (h + pad[0] + pad_end[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pad[1] + pad_end[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    xg = xp.reshape(n, group, cg, *xp.shape[2:])
    wg = w.reshape(group, o // group, cg, kh, kw)
    out = np.zeros((n, group, o // group, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            patch = xg[:, :, :, y0:y0 + stride[0] * (oh - 1) + 1:stride[0],
                       x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
            out += np.einsum("goc,ngchw->ngohw", wg[:, :, :, i, j], patch, optimize=True)
    return out.reshape(n, o, oh, ow) + b.reshape(1, -1, 1, 1)


def maxpool2d(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
              pad: tuple[int, int], pad_end: tuple[int, int], ceil: bool) -> np.ndarray:
    """Max pooling; ``ceil`` rounds the output size up (windows may hang over the far edge)."""
    n, c, h, w = x.shape
    sizes = []
    for size, k, s, p0, p1 in ((h, kernel[0], stride[0], pad[0], pad_end[0]),
                               (w, kernel[1], stride[1], pad[1], pad_end[1])):
        span = size + p0 + p1 - k
        sizes.append((-(-span // s) if ceil else span // s) + 1)
    oh, ow = sizes
    extra_h = max(0, (oh - 1) * stride[0] + kernel[0] - (h + pad[0] + pad_end[0]))
    extra_w = max(0, (ow - 1) * stride[1] + kernel[1] - (w + pad[1] + pad_end[1]))
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad_end[0] + extra_h), (pad[1], pad_end[1] + extra_w)),
                constant_values=-np.inf)
    out = np.full((n, c, oh, ow), -np.inf)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            out = np.maximum(out, xp[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0],
                                     j:j + stride[1] * (ow - 1) + 1:stride[1]])
    return out


def forward(g: IRGraph, blob: np.ndarray) -> np.ndarray:
    """The graph's output for an (N, 3, H, W) batch, in float64, flattened to (N, D)."""
    vals: list[np.ndarray | None] = [None] * len(g.ops)
    for i, op in enumerate(g.ops):
        x = vals[op.inputs[0]] if op.inputs else None
        if op.kind == "input":
            y = np.asarray(blob, np.float64)
        elif op.kind == "scaleshift":
            y = x * op.weight.reshape(1, -1, 1, 1) + op.bias.reshape(1, -1, 1, 1)
        elif op.kind == "conv":
            y = conv2d(x, op.weight.astype(np.float64), op.bias.astype(np.float64), op.stride,
                       op.pad, op.pad_end, op.group, op.dilation)
        elif op.kind == "elu":
            y = np.where(x > 0, x, op.alpha * np.expm1(np.minimum(x, 0)))
        elif op.kind == "relu":
            y = np.maximum(x, 0)
        elif op.kind == "sum":
            y = x + vals[op.inputs[1]]
        elif op.kind == "maxpool":
            y = maxpool2d(x, op.kernel, op.stride, op.pad, op.pad_end, op.ceil)
        elif op.kind == "globalmaxpool":
            y = x.max(axis=(2, 3), keepdims=True)
        else:   # pragma: no cover - read_* only emit KINDS
            raise IRError(f"{g.where(op)}: no forward for kind {op.kind!r}")
        vals[i] = y
        for j in op.inputs:   # free what nobody reads any more
            if all(j not in later.inputs for later in g.ops[i + 1:]) and j != g.output:
                vals[j] = None
    out = vals[g.output]
    return out.reshape(out.shape[0], -1)
