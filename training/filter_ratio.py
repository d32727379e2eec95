"""Filter statistics for the paper's Figure 4: how many filters of a layer are still "alive".

Figure 4 compares, per convolution layer, the ratio w_max / w_min "between absolute values of
filter weights": a high ratio means some filters have collapsed towards zero (the ReLU model
"has more than half of noisy filters"). The paper does not say which magnitude of a filter it
takes; this project uses, per output filter, the L2 norm of its weights by default (``l2``), or
the largest absolute weight (``max``), or the mean absolute weight (``l1``), and the layer's ratio
is the largest filter magnitude over the smallest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rmnet.caffe.protos import caffe_pb2

NORMS = ("l2", "max", "l1")


def filter_magnitudes(w: np.ndarray, norm: str = "l2") -> np.ndarray:
    """Magnitude of each output filter of a conv weight blob (out, in, kh, kw)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    flat = np.abs(np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1))
    if norm == "l2":
        return np.sqrt((flat ** 2).sum(axis=1))
    if norm == "max":
        return flat.max(axis=1)
    return flat.mean(axis=1)


def filter_ratio(w: np.ndarray, norm: str = "l2") -> float:
    """Largest over smallest filter magnitude (inf when a filter is exactly zero)."""
    m = filter_magnitudes(w, norm)
    lo = m.min()
    return float("inf") if lo == 0 else float(m.max() / lo)


def conv_weights(caffemodel: str | Path) -> dict[str, np.ndarray]:
    """Weights of every Convolution layer in a caffemodel, in net order, read with caffe_pb2
    (no prototxt needed)."""
    path = Path(caffemodel)
    net = caffe_pb2().NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{path}: not a caffemodel ({e})") from e
    out: dict[str, np.ndarray] = {}
    for layer in net.layer:
        if layer.type == "Convolution" and layer.blobs:
            b = layer.blobs[0]
            shape = tuple(b.shape.dim) if b.shape.dim else (b.num, b.channels, b.height, b.width)
            out[layer.name] = np.asarray(b.data, dtype=np.float32).reshape(shape)
    if not out:
        raise ValueError(f"{path}: no Convolution layers with weights")
    return out
