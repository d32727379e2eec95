"""Input conventions of exported models: what pixels a tracker feeds, folded into the graph.

The Caffe nets take raw BGR 0..255 (``bgr255``): the net normalises its own input with a learned
BatchNorm+Scale pair (``input_norm``), which the exporter keeps as one per-channel ``Mul`` +
``Add`` (``rmnet.deploy.graph``). Trackers that bring their own re-id backends (BoxMOT's ONNX /
OpenVINO / TorchScript loaders) feed ``rgb-imagenet`` instead: RGB, ``(x / 255 - mean) / std``
with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), NCHW float32.
OpenVINO's own demos feed ``bgr255``.

``adapt_graph(g, "rgb-imagenet")`` rewrites the graph so that it takes the tracker's input and
computes exactly what the Caffe net computes on the corresponding raw BGR image, at no cost:

- the per-channel part (``x * 255 * std + 255 * mean``) composes with the net's own input map
  (``y = A * b + S`` on raw BGR ``b``) into new factors of that same ``Mul`` + ``Add``;
- the RGB <-> BGR swap is a channel permutation, folded by reordering the map's factors and
  the input channels of the convolution(s) that read the map's output (weights reordered, not
  computed on): no operation is added.

A net without an input map (e.g. the ResNet-50 speed baseline starts with a convolution) gets
one ``Mul`` + ``Add`` in front, because folding an affine into a zero-padded convolution would
change its borders (``rmnet.deploy.graph``'s note); the permutation still folds into that
convolution. A grouped convolution (or any other layer) reading the input cannot take the
permutation, and is refused with an ``ExportError`` naming it.

``to_convention(blob, name)`` turns a raw BGR blob into the convention's input (for the checks
against pycaffe); ``metadata(name, ...)`` are the key/value pairs written into the ONNX model's
``metadata_props`` and the OpenVINO IR's ``rt_info`` so a tracker can read how to feed it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmnet.deploy.graph import AffineRecord, ConvRecord, ExportError, Graph, OpRecord

BGR_TO_RGB = (2, 1, 0)   # its own inverse


@dataclass(frozen=True)
class Convention:
    """How pixels reach the model: channel order, scale, mean and std (in that channel order)."""
    name: str
    order: str                          # "BGR" or "RGB"
    scale: float                        # pixels are multiplied by this first (1/255 or 1)
    mean: tuple[float, float, float]    # subtracted after scaling, in ``order``
    std: tuple[float, float, float]     # divided by after the mean

    def describe(self) -> str:
        if self.scale == 1 and not any(self.mean) and self.std == (1.0, 1.0, 1.0):
            return f"raw {self.order} 0..255, N x 3 x H x W float32"
        return (f"{self.order}, (x / 255 - mean) / std with mean {self.mean} and std "
                f"{self.std}, N x 3 x H x W float32")


CONVENTIONS = {
    "bgr255": Convention("bgr255", "BGR", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "rgb-imagenet": Convention("rgb-imagenet", "RGB", 1.0 / 255,
                               (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DEFAULT = "bgr255"


def convention(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise ValueError(f"unknown input convention {name!r}; one of "
                         f"{', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def to_convention(blob: np.ndarray, name: str) -> np.ndarray:
    """A raw BGR 0..255 float (N, 3, H, W) blob as the convention's input (float32)."""
    c = convention(name)
    x = np.asarray(blob, np.float64)
    if c.order == "RGB":
        x = x[:, list(BGR_TO_RGB)]
    mean = np.asarray(c.mean)[None, :, None, None]
    std = np.asarray(c.std)[None, :, None, None]
    return ((x * c.scale - mean) / std).astype(np.float32)


def _srcs(rec) -> list[str]:
    return list(rec.srcs) if isinstance(rec, OpRecord) else [rec.src]


def _readers(g: Graph, start: int, blob: str) -> list[int]:
    """Indices of the records after ``start`` that read this version of ``blob`` (up to the
    next record that writes it, which reads it too when in place)."""
    out = []
    for i in range(start + 1, len(g.records)):
        rec = g.records[i]
        if blob in _srcs(rec):
            out.append(i)
        if rec.dst == blob:
            break
    return out


def adapt_graph(g: Graph, name: str) -> Graph:
    """Rewrite ``g`` in place to take convention ``name``'s input (see the module doc)."""
    c = convention(name)
    if c.name == "bgr255":
        return g
    # raw BGR channel k, in terms of the new input channel perm[k]: b = x * f + o
    perm = list(BGR_TO_RGB) if c.order == "RGB" else [0, 1, 2]
    f = np.array([c.std[perm[k]] / c.scale for k in range(3)])
    o = np.array([c.mean[perm[k]] / c.scale for k in range(3)])
    first = next((i for i, r in enumerate(g.records) if g.input_name in _srcs(r)), None)
    if first is None:
        raise ExportError(f"net {g.name!r}: nothing reads the input {g.input_name!r}")
    rec = g.records[first]
    if isinstance(rec, AffineRecord) and len(_readers(g, -1, g.input_name)) == 1:
        amap = rec
    else:   # no input map: an identity one in front, then composed like the net's own
        amap = AffineRecord(f"{g.input_name}/{c.name}", g.input_name,
                            f"{g.input_name}/{c.name}", np.ones(3), np.zeros(3), 4)
        for r in g.records:
            if isinstance(r, OpRecord):
                r.srcs = [amap.dst if s == g.input_name else s for s in r.srcs]
            elif r.src == g.input_name:
                r.src = amap.dst
        g.records.insert(0, amap)
        first = 0
        g.shapes[amap.dst] = g.shapes[g.input_name]
    # y_k = A_k b_k + S_k = A_k f_k x_perm[k] + (A_k o_k + S_k); reindexed by new channel j
    inv = np.argsort(perm)
    scale = (amap.scale * f)[inv]
    shift = (amap.scale * o + amap.shift)[inv]
    readers = _readers(g, first, amap.dst)
    for i in readers:
        r = g.records[i]
        if not isinstance(r, ConvRecord) or r.group != 1:
            what = f"convolution with group {r.group}" if isinstance(r, ConvRecord) else \
                type(r).__name__
            raise ExportError(f"net {g.name!r}: layer {r.name!r} ({what}) reads the input "
                              f"normalisation {amap.dst!r}; the {c.name} input's channel swap "
                              f"folds only into ungrouped convolutions")
    if perm != [0, 1, 2]:
        for i in readers:
            g.records[i].weight = g.records[i].weight[:, inv]
    amap.scale, amap.shift = scale, shift
    amap.folded = amap.folded + [f"input convention {c.name}"]
    return g


def metadata(name: str, input_hw: tuple[int, int], output: str, dim: int,
             normalized: bool) -> dict[str, str]:
    """What a tracker needs to feed the model and read its output, as string key/values."""
    c = convention(name)
    h, w = input_hw
    return {
        "rmnet.input": c.describe(),
        "rmnet.input_convention": c.name,
        "rmnet.channel_order": c.order,
        "rmnet.pixel_scale": repr(c.scale),
        "rmnet.mean": ",".join(repr(v) for v in c.mean),
        "rmnet.std": ",".join(repr(v) for v in c.std),
        "rmnet.input_height": str(h),
        "rmnet.input_width": str(w),
        "rmnet.output": output,
        "rmnet.output_dim": str(dim),
        "rmnet.output_l2_normalized": "true" if normalized else "false",
        "rmnet.distance": "cosine",
    }
