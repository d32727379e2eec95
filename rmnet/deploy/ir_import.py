"""An OpenVINO IR of RMNet -> a caffemodel for this project's deploy net, checked before writing.

Intel's published RMNet models (person-reidentification-retail-0079, 160x64 = ``light``; -0076,
384x128 = ``strong``) are the project's deploy graph with every BatchNorm + Scale folded into the
convolution before it. The import goes the other way:

- **Which net**: ``prototxt/<variant>/deploy.prototxt``, the variant found from the IR's input
  size (``VARIANTS_BY_SIZE``), or any deploy prototxt given. The Caffe side is read with
  ``rmnet.deploy.graph.build_graph`` (the exporter's own reading and folding rule), so each
  Caffe convolution comes with the BatchNorm/Scale layers folded into it.
- **Matching by position in the graph**, not by name (names differ between IR versions): both
  graphs are walked from the input in topological order; each Caffe operation is paired with
  the not yet paired IR operation of the same kind that reads the same (already paired)
  inputs, the first in the IR's order when several do. Then kernel shapes, groups, strides,
  pads, pooling windows, activation types and output shapes must agree, and every IR operation
  must have been paired. Anything else is refused with ``IRImportError`` naming the IR layer
  and the Caffe layer.
- **Values**: each convolution gets the IR's (folded) weights; its BatchNorm is set to the
  identity (mean 0, factor 1, variance ``1 - eps`` rounded so that Caffe's float32
  ``var + eps`` is exactly 1: see ``identity_variance``); the first Scale after it gets weight
  1 and the IR's folded bias; any further Scale folded into the same convolution (the
  ``calibration`` layer after ``head/embedding``, which Intel's models ship without) gets
  weight 1 and bias 0. The input normalisation (``input_norm/bn`` + ``input_norm/scale``) gets
  the IR's first ScaleShift (or Multiply/Add by constants), identity if the IR has none.
  So ``embedding_calibrated`` equals ``embedding``: Intel's descriptor.
- **Check before writing**: pycaffe runs the imported model on real decoded images (a folder,
  or synthetic person crops JPEG-encoded and decoded) against a forward of the IR itself:
  OpenVINO for v10/v11, ``rmnet.deploy.ir.forward`` (independent numpy, float64) for v5-v7,
  which OpenVINO cannot read. The largest absolute difference of the L2-normalised
  descriptors must be within the tolerance (1e-4); only then is the caffemodel moved into place
  (``rmnet.atomic``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmnet.atomic import atomic_path
from rmnet.caffe.protos import ProtoError, read_net
from rmnet.deploy.export import check_images
from rmnet.deploy.graph import (AffineRecord, ConvRecord, ExportError, Graph, OpRecord,
                                load_graph)
from rmnet.deploy.ir import NEW_VERSIONS, IRError, IRGraph, forward, read_ir
from rmnet.paths import REPO

DEFAULT_TOLERANCE = 1e-4
CHECK_IMAGES = 8
VARIANTS_BY_SIZE = {(160, 64): "light", (384, 128): "strong"}
_OP_KINDS = {"Relu": "relu", "Elu": "elu", "Sum": "sum", "MaxPool": "maxpool",
             "GlobalMaxPool": "globalmaxpool"}


class IRImportError(ValueError):
    """The IR does not fit the net (or cannot be read); the message names the layers."""


class IRImportCheckError(RuntimeError):
    """The imported caffemodel's descriptors differ from the IR's by more than the tolerance."""


# --- the Caffe side as a list of operations ---------------------------------------------------

@dataclass
class CaffeNode:
    name: str          # the Caffe layer (a convolution: its name; folded layers in ``folded``)
    kind: str          # as rmnet.deploy.ir.KINDS
    inputs: list[int]
    record: object | None
    shape: tuple[int, ...] = ()
    folded: list[str] = field(default_factory=list)


def caffe_nodes(g: Graph, prototxt: str | os.PathLike) -> list[CaffeNode]:
    """The folded Caffe graph as nodes with input indices (index 0 is the input)."""
    nodes = [CaffeNode(g.input_name, "input", [], None, g.input_shape)]
    producer = {g.input_name: 0}
    for rec in g.records:
        if isinstance(rec, ConvRecord):
            kind, srcs = "conv", [rec.src]
        elif isinstance(rec, AffineRecord):
            kind, srcs = "scaleshift", [rec.src]
        elif isinstance(rec, OpRecord) and rec.op_type in _OP_KINDS:
            kind, srcs = _OP_KINDS[rec.op_type], list(rec.srcs)
        else:
            raise IRImportError(f"{prototxt}: layer {rec.name!r} ({getattr(rec, 'op_type', '?')}) "
                                f"has no counterpart in RMNet IRs")
        nodes.append(CaffeNode(rec.name, kind, [producer[s] for s in srcs], rec,
                               g.shapes.get(rec.dst, ()), list(getattr(rec, "folded", []))))
        producer[rec.dst] = len(nodes) - 1
    return nodes


# --- matching ---------------------------------------------------------------------------------

def _describe(ir: IRGraph, idx: int) -> str:
    op = ir.ops[idx]
    return f"{op.name!r} ({op.ir_type})"


def match(ir: IRGraph, nodes: list[CaffeNode], prototxt: str | os.PathLike) -> dict[int, int | None]:
    """Caffe node index -> IR op index (None: the input normalisation the IR does not have)."""
    xml = ir.path
    bad = f"{xml} does not match {prototxt}"
    ih, iw = ir.input_hw
    ch, cw = nodes[0].shape[2:]
    if (ih, iw) != (ch, cw):
        raise IRImportError(f"{bad}: the IR's input {ir.input.name!r} is {ih}x{iw}, the net's "
                            f"{nodes[0].name!r} is {ch}x{cw}")
    mapping: dict[int, int | None] = {0: 0}
    value = {0: 0}          # caffe node -> IR op index holding its output value
    used = {0}
    consumers = {i: ir.consumers(i) for i in range(len(ir.ops))}
    for k, node in enumerate(nodes[1:], start=1):
        ins = [value[i] for i in node.inputs]
        cands = [j for j in consumers[ins[0]] if j not in used
                 and sorted(ir.ops[j].inputs) == sorted(ins)]
        same = [j for j in cands if ir.ops[j].kind == node.kind]
        if not same and node.kind == "scaleshift" and node.inputs == [0]:
            mapping[k], value[k] = None, ins[0]   # no input normalisation in the IR: identity
            continue
        if not same:
            found = ", ".join(_describe(ir, j) for j in cands) or "nothing more"
            raise IRImportError(f"{bad}: Caffe layer {node.name!r} ({node.kind}) has no "
                                f"counterpart: after IR layer {_describe(ir, ins[0])} the IR "
                                f"has {found}")
        j = same[0]
        _check_pair(ir, j, node, bad)
        mapping[k], value[k] = j, j
        used.add(j)
    left = [j for j in range(len(ir.ops)) if j not in used]
    if left:
        raise IRImportError(f"{bad}: IR layer {_describe(ir, left[0])} has no counterpart in the "
                            f"net ({len(left)} IR layer(s) left over; the net has "
                            f"{len(nodes)} operations, the IR {len(ir.ops)})")
    last = max(k for k in mapping)
    if value[last] != ir.output:
        raise IRImportError(f"{bad}: the IR's output is {_describe(ir, ir.output)}, the net's "
                            f"is {nodes[last].name!r}")
    return mapping


def _check_pair(ir: IRGraph, j: int, node: CaffeNode, bad: str) -> None:
    op = ir.ops[j]
    where = f"{bad}: IR layer {op.name!r} ({op.ir_type}) vs Caffe layer {node.name!r}"
    rec = node.record
    if node.kind == "conv":
        checks = [("weights", tuple(op.weight.shape), tuple(rec.weight.shape)),
                  ("group", op.group, rec.group), ("stride", tuple(op.stride), tuple(rec.stride)),
                  ("pads_begin", tuple(op.pad), tuple(rec.pad)),
                  ("pads_end", tuple(op.pad_end), tuple(rec.pad)),
                  ("dilation", tuple(op.dilation), tuple(rec.dilation))]
    elif node.kind == "maxpool":
        a = rec.attrs
        checks = [("kernel", tuple(op.kernel), tuple(a["kernel_shape"])),
                  ("stride", tuple(op.stride), tuple(a["strides"])),
                  ("pads_begin", tuple(op.pad), tuple(a["pads"][:2]))]
    elif node.kind == "elu":
        checks = [("alpha", round(op.alpha, 6), round(float(rec.attrs["alpha"]), 6))]
    elif node.kind == "scaleshift":
        checks = [("channels", op.weight.size, rec.scale.size)]
    else:
        checks = []
    if op.shape and node.shape:
        checks.append(("output shape (C, H, W)", tuple(op.shape[1:]), tuple(node.shape[1:])))
    for what, got, want in checks:
        if got != want:
            raise IRImportError(f"{where}: {what} {got} in the IR, {want} in the net")


# --- values -----------------------------------------------------------------------------------

def identity_variance(eps: float) -> np.float32:
    """The float32 variance v with float32(v + eps) == 1 exactly (Caffe adds eps in float32),
    so that a BatchNorm with mean 0, factor 1 and this variance is the identity."""
    e = np.float32(eps)
    v = np.float32(1) - e
    for _ in range(8):
        s = np.float32(v + e)
        if s == np.float32(1):
            return v
        v = np.nextafter(v, np.float32(2) if s < 1 else np.float32(0), dtype=np.float32)
    raise ValueError(f"no float32 variance makes var + {eps} exactly 1")


def layer_types(prototxt: str | os.PathLike) -> dict[str, object]:
    """Layer name -> its LayerParameter."""
    return {layer.name: layer for layer in read_net(prototxt).layer}


def fill_net(net, ir: IRGraph, nodes: list[CaffeNode], mapping: dict[int, int | None],
             layers: dict[str, object], prototxt: str | os.PathLike) -> int:
    """Write the IR's values into a pycaffe Net (see the module doc); returns convolutions set."""
    n_conv = 0
    for k, node in enumerate(nodes):
        if node.kind not in ("conv", "scaleshift"):
            continue
        j = mapping[k]
        op = ir.ops[j] if j is not None else None
        if node.kind == "conv":
            net.params[node.name][0].data[...] = op.weight
            chain = node.folded
            scale, shift = None, op.bias
            if len(net.params[node.name]) > 1:      # a convolution with its own bias
                net.params[node.name][1].data[...] = shift
                shift = np.zeros_like(shift)
            n_conv += 1
        else:
            chain = [node.name] + node.folded
            c = node.record.scale.size
            scale = op.weight if op is not None else np.ones(c, np.float32)
            shift = op.bias if op is not None else np.zeros(c, np.float32)
        first_scale = True
        for name in chain:
            layer = layers[name]
            blobs = net.params[name]
            if layer.type == "BatchNorm":
                blobs[0].data[...] = 0
                blobs[1].data[...] = identity_variance(layer.batch_norm_param.eps)
                blobs[2].data[...] = 1
            elif layer.type == "Scale":
                if first_scale and len(blobs) < 2 and np.any(shift):
                    raise IRImportError(f"{prototxt}: Scale layer {name!r} has no bias term for "
                                        f"the IR's folded bias")
                blobs[0].data[...] = scale if (first_scale and scale is not None) else 1
                if len(blobs) > 1:
                    blobs[1].data[...] = shift if first_scale else 0
                first_scale = False
            else:   # pragma: no cover - build_graph folds only BatchNorm and Scale
                raise IRImportError(f"{prototxt}: cannot set folded layer {name!r} ({layer.type})")
        if first_scale and (scale is not None or np.any(shift)):
            raise IRImportError(f"{prototxt}: layer {node.name!r} has no Scale to hold the IR's "
                                f"scale/bias")
    return n_conv


# --- check images and the reference forward ---------------------------------------------------

def decoded_images(images: str | os.PathLike | None, height: int, width: int,
                   n: int = CHECK_IMAGES, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 3, H, W) raw BGR from image files: a folder's, or synthetic person crops encoded as
    JPEG and decoded again (so the check sees what a decoder gives, not the rendered array)."""
    if images is not None:
        try:
            return check_images(images, height, width, n)
        except ExportError as e:
            raise IRImportError(str(e)) from None
    import cv2

    from rmnet.data.images import decode_bgr, resize_to, to_blob
    from rmnet.deploy.export import synthetic_crops

    crops = []
    for i, crop in enumerate(synthetic_crops(n, seed)):
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        crops.append(resize_to(decode_bgr(data.tobytes(), f"<synthetic crop {i}>"), height, width))
    return to_blob(crops), f"{n} synthetic person crops (seed {seed}), JPEG-encoded and decoded"


def ir_reference(ir: IRGraph, blob: np.ndarray) -> tuple[np.ndarray, str]:
    """The IR's own output for the batch: OpenVINO for v10/v11, the numpy forward for v5-v7."""
    if ir.version in NEW_VERSIONS:
        from rmnet.deploy.backends import OpenVINOBackend

        return OpenVINOBackend(ir.path).infer(blob).astype(np.float64), "OpenVINO"
    return forward(ir, blob), "numpy forward of the parsed IR"


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --- the import -------------------------------------------------------------------------------

@dataclass
class ImportReport:
    xml: str
    prototxt: str
    out: str = ""
    variant: str | None = None
    summary: str = ""
    convolutions: int = 0
    input_norm: str = ""
    reference: str = ""
    images: str = ""
    max_abs_diff: float = float("nan")      # L2-normalised descriptors
    max_abs_diff_raw: float = float("nan")  # raw outputs
    output: str = ""
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def lines(self) -> list[str]:
        return [self.summary,
                f"net: {self.prototxt}" + (f" (variant {self.variant})" if self.variant else ""),
                f"{self.convolutions} convolutions matched by position; BatchNorm set to "
                f"identity, folded biases in the Scale layers; input normalisation: "
                f"{self.input_norm}",
                f"output blob {self.output!r}"
                + (" (calibration set to identity: equals 'embedding', Intel's descriptor)"
                   if self.output == "embedding_calibrated" else ""),
                f"check on {self.images}: pycaffe vs {self.reference}: max abs diff "
                f"{self.max_abs_diff:.3g} on L2-normalised descriptors (raw outputs "
                f"{self.max_abs_diff_raw:.3g}; tolerance {self.tolerance:g}) "
                + ("OK" if self.ok else "FAIL")]


def default_prototxt(ir: IRGraph) -> tuple[Path, str]:
    """The committed deploy net of the variant the IR's input size belongs to."""
    hw = ir.input_hw
    variant = VARIANTS_BY_SIZE.get(hw)
    if variant is None:
        sizes = ", ".join(f"{h}x{w} ({v})" for (h, w), v in VARIANTS_BY_SIZE.items())
        raise IRImportError(f"{ir.path}: input {hw[0]}x{hw[1]} is not an RMNet variant's size "
                            f"({sizes}); give the net with --prototxt")
    return REPO / "prototxt" / variant / "deploy.prototxt", variant


def import_ir(xml: str | os.PathLike, out: str | os.PathLike, *,
              prototxt: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
              n_images: int = CHECK_IMAGES, tolerance: float = DEFAULT_TOLERANCE,
              seed: int = 0) -> ImportReport:
    """Read, match, fill, check, write (see the module doc). Raises IRImportError on a graph or
    file problem, IRImportCheckError (nothing written) when the check fails."""
    from rmnet.caffe.pycaffe import import_caffe, save_net

    caffe = import_caffe()
    try:
        ir = read_ir(xml)
    except IRError as e:
        raise IRImportError(str(e)) from None
    variant = None
    if prototxt is None:
        prototxt, variant = default_prototxt(ir)
    prototxt = Path(prototxt)
    try:
        g = load_graph(prototxt, None)
    except (ExportError, ProtoError) as e:
        raise IRImportError(str(e)) from None
    if len(g.outputs) != 1:
        raise IRImportError(f"{prototxt}: {len(g.outputs)} outputs; a descriptor net has one")
    nodes = caffe_nodes(g, prototxt)
    mapping = match(ir, nodes, prototxt)
    report = ImportReport(str(xml), str(prototxt), str(out), variant, ir.summary(),
                          output=g.outputs[0], tolerance=tolerance)
    has_norm = any(n.kind == "scaleshift" and n.inputs == [0] and mapping[k] is not None
                   for k, n in enumerate(nodes))
    report.input_norm = ("the IR's " + ir.ops[1].name if has_norm else
                         "identity (the IR has none)")
    net = caffe.Net(str(prototxt), caffe.TEST)
    report.convolutions = fill_net(net, ir, nodes, mapping, layer_types(prototxt), prototxt)
    h, w = ir.input_hw
    blob, report.images = decoded_images(images, h, w, n_images, seed)
    ref, report.reference = ir_reference(ir, blob)
    out = Path(out)
    with atomic_path(out) as tmp:
        save_net(net, tmp)
        from rmnet.deploy.backends import PycaffeBackend

        got = PycaffeBackend(prototxt, tmp).infer(blob).astype(np.float64)
        if got.shape != ref.shape:
            raise IRImportCheckError(f"output shapes differ: pycaffe {got.shape}, IR {ref.shape}")
        report.max_abs_diff_raw = float(np.abs(got - ref).max())
        report.max_abs_diff = float(np.abs(l2n(got) - l2n(ref)).max())
        if not report.ok:
            raise IRImportCheckError(
                f"import of {xml} into {prototxt} does not match the IR: max abs diff "
                f"{report.max_abs_diff:.3g} on L2-normalised descriptors (tolerance "
                f"{tolerance:g}); nothing written")
    return report
