"""Caffe's own shape rules, applied to a ``NetParameter`` without instantiating it.

Caffe checks a net's shapes while it builds it, and a failed check (glog CHECK) aborts the whole
process with a C++ stack, which no caller can catch: an Eltwise over blobs of different shapes, a
Concat whose other axes differ, a convolution whose group does not divide its channels, a pooling
whose padding is not smaller than its kernel, a bottom no earlier layer produces. ``check_shapes``
walks the net as Caffe would (the same phase rules, the same output-size arithmetic, C++ integer
division included) and raises ``ShapeError`` naming the prototxt, the layer and both shapes first.

It refuses only what Caffe itself would abort on, so anything Caffe runs passes: padded
ceil-mode pooling (which the ONNX exporter refuses, ``rmnet.deploy.graph``) is fine here. A layer
type whose shape rule is not written here (a Python layer, a data layer, ...) is not checked and
its tops are of unknown shape, so nothing downstream of it is checked either. The size
arithmetic (``conv_output_size``, ``pool_output_size``) is the one the exporter's graph uses too.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable

from rmnet.caffe.protos import caffe_pb2

Shape = tuple[int, ...]

# Layers whose top has the bottom's shape (one bottom, one top, in place or not).
SAME_SHAPE = frozenset({"ReLU", "ELU", "PReLU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power",
                        "Exp", "Log", "Threshold", "Dropout", "BatchNorm", "LRN", "MVN",
                        "Softmax", "Bias", "Clip", "Swish"})


class ShapeError(ValueError):
    """A shape inconsistency Caffe would abort the process on; the message names the prototxt
    and the layer."""


def cdiv(a: int, b: int) -> int:
    """C++ integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """A convolution's output size along one axis, as Caffe computes it (``conv_layer.cpp``)."""
    extent = dilation * (kernel - 1) + 1
    return cdiv(size + 2 * pad - extent, stride) + 1


def pool_output_size(size: int, kernel: int, stride: int, pad: int,
                     ceil_mode: bool = True) -> tuple[int, int]:
    """(floor rounding's size, Caffe's size) of a pooling along one axis
    (``pooling_layer.cpp``): Caffe rounds up by default and, with padding, drops a last window
    that would start in the right padding."""
    floor_out = int(math.floor((size + 2 * pad - kernel) / stride)) + 1
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1 if ceil_mode else floor_out
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return floor_out, out


def state_meets_rule(rule, phase: int) -> bool:
    """Caffe's ``Net::StateMeetsRule`` for the default net state (no stages, level 0)."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    return not len(rule.stage)          # a required stage is never met; not_stage always is


def included(layer, phase: int) -> bool:
    """Whether Caffe's ``FilterNet`` keeps the layer in ``phase``."""
    if len(layer.include):
        return any(state_meets_rule(r, phase) for r in layer.include)
    return not any(state_meets_rule(r, phase) for r in layer.exclude)


def _pair(repeated: Iterable[int], h: int, w: int, has_hw: bool, default: int) -> tuple[int, int]:
    if has_hw:
        return int(h), int(w)
    vals = [int(v) for v in repeated]
    return (default, default) if not vals else (vals[0], vals[-1]) if len(vals) <= 2 else None


def check_shapes(net, prototxt: str | os.PathLike, phase: str = "TEST",
                 known_types: Iterable[str] | None = None) -> dict[str, Shape | None]:
    """Blob -> shape (None: not known here) of the net in ``phase``, or ``ShapeError`` for the
    first layer Caffe would abort on (see the module doc). ``known_types``: the layer types this
    Caffe has (``caffe.layer_type_list()``); a layer of another type is refused too."""
    pb2 = caffe_pb2()
    ph = getattr(pb2, phase)
    known = set(known_types) if known_types is not None else None
    shapes: dict[str, Shape | None] = {}
    for i, name in enumerate(net.input):         # legacy input fields
        if i < len(net.input_shape):
            shapes[name] = tuple(int(d) for d in net.input_shape[i].dim)
        elif len(net.input_dim) >= 4 * (i + 1):
            shapes[name] = tuple(int(d) for d in net.input_dim[4 * i:4 * i + 4])
        else:
            shapes[name] = None
    for layer in net.layer:
        if not included(layer, ph):
            continue
        where = f"{prototxt}: layer {layer.name!r} (type {layer.type})"
        if known is not None and layer.type not in known:
            raise ShapeError(f"{where}: Caffe has no layer type {layer.type!r}")
        for b in layer.bottom:
            if b not in shapes:
                raise ShapeError(f"{where}: reads blob {b!r}, which no earlier layer produces")
        ins = [shapes[b] for b in layer.bottom]
        rule = RULES.get(layer.type)
        outs = rule(layer, ins, where) if rule is not None and all(s is not None for s in ins) \
            else None
        for i, top in enumerate(layer.top):
            shapes[top] = outs[i] if outs is not None and i < len(outs) else None
    return shapes


# --- one rule per layer type: (layer, bottom shapes, where) -> top shapes -----------------------

def _input(layer, ins, where):
    ps = list(layer.input_param.shape)
    if len(ps) not in (1, len(layer.top)):
        raise ShapeError(f"{where}: {len(ps)} input shapes for {len(layer.top)} tops (one, or "
                         f"one per top)")
    return [tuple(int(d) for d in ps[min(i, len(ps) - 1)].dim) for i in range(len(layer.top))]


def _same(layer, ins, where):
    return [ins[0]] * len(layer.top) if ins else None


def _convolution(layer, ins, where):
    p = layer.convolution_param
    shape = ins[0]
    if p.axis != 1 or len(shape) != 4 or any(s != shape for s in ins):
        return None                              # N-d or several bottoms: Caffe's own checks
    k = _pair(p.kernel_size, p.kernel_h, p.kernel_w,
              p.HasField("kernel_h") or p.HasField("kernel_w"), 0)
    s = _pair(p.stride, p.stride_h, p.stride_w,
              p.HasField("stride_h") or p.HasField("stride_w"), 1)
    pad = _pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), 0)
    d = _pair(p.dilation, 1, 1, False, 1)
    if None in (k, s, pad, d):
        return None
    c_in, c_out, group = shape[1], int(p.num_output), int(p.group)
    if min(k) < 1 or min(s) < 1 or c_out < 1 or group < 1:
        raise ShapeError(f"{where}: kernel {k[0]}x{k[1]}, stride {s[0]}x{s[1]} and "
                         f"num_output {c_out} must all be positive")
    if c_in % group or c_out % group:
        raise ShapeError(f"{where}: group {group} does not divide the {c_in} input channels "
                         f"(bottom {layer.bottom[0]!r} {shape}) and {c_out} outputs")
    hw = [conv_output_size(shape[2 + i], k[i], s[i], pad[i], d[i]) for i in range(2)]
    if min(hw) < 1:                              # Caffe aborts on an empty blob too
        raise ShapeError(f"{where}: the bottom {layer.bottom[0]!r} {shape} is too small for a "
                         f"{k[0]}x{k[1]} kernel (output {hw[0]}x{hw[1]})")
    return [(shape[0], c_out, hw[0], hw[1])] * len(layer.top)


def _pooling(layer, ins, where):
    p = layer.pooling_param
    shape = ins[0]
    if len(shape) != 4:
        raise ShapeError(f"{where}: the bottom {layer.bottom[0]!r} has shape {shape}; pooling "
                         f"needs 4 axes (N, C, H, W)")
    pad = _pair([p.pad] if p.HasField("pad") else [], p.pad_h, p.pad_w,
                p.HasField("pad_h") or p.HasField("pad_w"), 0)
    n, c, h, w = shape
    if p.global_pooling:
        if (p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
                or pad != (0, 0) or p.stride != 1 or p.stride_h > 1 or p.stride_w > 1):
            raise ShapeError(f"{where}: global pooling takes no kernel size, padding or stride")
        return [(n, c, 1, 1)] * len(layer.top)
    k = _pair([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h, p.kernel_w,
              p.HasField("kernel_h") or p.HasField("kernel_w"), 0)
    s = _pair([p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w,
              p.HasField("stride_h") or p.HasField("stride_w"), 1)
    if min(k) < 1 or min(s) < 1:
        raise ShapeError(f"{where}: pooling needs a positive kernel size and stride (or "
                         f"global_pooling)")
    if pad[0] >= k[0] or pad[1] >= k[1]:
        raise ShapeError(f"{where}: padding {pad[0]}x{pad[1]} must be smaller than the kernel "
                         f"{k[0]}x{k[1]}")
    ceil_mode = round_mode_name(p) == "CEIL"
    out = [pool_output_size(size, k[i], s[i], pad[i], ceil_mode)[1]
           for i, size in enumerate((h, w))]
    if min(out) < 1:
        raise ShapeError(f"{where}: the bottom {layer.bottom[0]!r} {shape} is too small for a "
                         f"{k[0]}x{k[1]} pooling (output {out[0]}x{out[1]})")
    return [(n, c, out[0], out[1])] * len(layer.top)


def round_mode_name(pooling_param) -> str:
    """"CEIL" or "FLOOR" (Caffe builds without ``round_mode`` always round up)."""
    field = pooling_param.DESCRIPTOR.fields_by_name.get("round_mode")
    if field is None:
        return "CEIL"
    return field.enum_type.values_by_number[pooling_param.round_mode].name


def _eltwise(layer, ins, where):
    ep = layer.eltwise_param
    if len(ins) < 2:
        raise ShapeError(f"{where}: Eltwise needs at least two bottoms, got {len(ins)}")
    if len(ep.coeff) and len(ep.coeff) != len(ins):
        raise ShapeError(f"{where}: {len(ep.coeff)} coefficients for {len(ins)} bottoms (one "
                         f"per bottom)")
    if len(ep.coeff) and ep.operation != type(ep).SUM:
        raise ShapeError(f"{where}: coefficients are only allowed with operation SUM")
    if any(s != ins[0] for s in ins):
        raise ShapeError(f"{where}: bottoms have different shapes "
                         f"({', '.join(f'{b} {s}' for b, s in zip(layer.bottom, ins))}); "
                         f"Eltwise needs them equal")
    return [ins[0]]


def _concat(layer, ins, where):
    p = layer.concat_param
    rank = len(ins[0])
    axis = int(p.concat_dim) if p.HasField("concat_dim") else int(p.axis)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise ShapeError(f"{where}: axis {axis} is out of range for bottoms of {rank} axes")
    for b, s in zip(layer.bottom, ins):
        if len(s) != rank or any(s[j] != ins[0][j] for j in range(rank) if j != axis):
            raise ShapeError(f"{where}: bottoms differ outside the concatenation axis {axis} "
                             f"({', '.join(f'{b2} {s2}' for b2, s2 in zip(layer.bottom, ins))})")
    out = list(ins[0])
    out[axis] = sum(s[axis] for s in ins)
    return [tuple(out)]


def _inner_product(layer, ins, where):
    p = layer.inner_product_param
    shape = ins[0]
    axis = int(p.axis) + (len(shape) if p.axis < 0 else 0)
    if not 0 <= axis < len(shape):
        raise ShapeError(f"{where}: axis {p.axis} is out of range for the bottom {shape}")
    return [tuple(shape[:axis]) + (int(p.num_output),)]


def _flatten(layer, ins, where):
    shape = ins[0]
    p = layer.flatten_param
    start = int(p.axis) + (len(shape) if p.axis < 0 else 0)
    end = int(p.end_axis) + (len(shape) if p.end_axis < 0 else 0)
    if not 0 <= start <= end < len(shape):
        return None
    return [tuple(shape[:start]) + (math.prod(shape[start:end + 1]),) + tuple(shape[end + 1:])]


def _split(layer, ins, where):
    return [ins[0]] * len(layer.top)


def _scale(layer, ins, where):
    if len(ins) == 1:
        return [ins[0]]
    p = layer.scale_param
    x, sc = ins[0], ins[1]
    axis = int(p.axis) + (len(x) if p.axis < 0 else 0)
    if axis + len(sc) > len(x) or tuple(x[axis:axis + len(sc)]) != tuple(sc):
        raise ShapeError(f"{where}: the scale {layer.bottom[1]!r} {sc} does not match the "
                         f"bottom {layer.bottom[0]!r} {x} from axis {axis}")
    return [x]


RULES = {"Input": _input, "Convolution": _convolution, "Pooling": _pooling,
         "Eltwise": _eltwise, "Concat": _concat, "InnerProduct": _inner_product,
         "Flatten": _flatten, "Split": _split, "Scale": _scale,
         **{t: _same for t in SAME_SHAPE}}
