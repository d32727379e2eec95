"""Caffemodel files read with Caffe's own schema, without loading them into a net: their blobs,
their shapes, whether they fit a net, and a content hash. Shared by training, evaluation and
export, so that a model that does not fit is refused with a message naming both files and the
layer before Caffe would abort the process (or silently keep random weights).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from rmnet.caffe.protos import caffe_pb2

BlobInfo = tuple[tuple[int, ...], bool, int]   # (shape, stored in the legacy 4-D form, values)


class WeightsError(ValueError):
    """A caffemodel that cannot be read, or cannot be loaded into the net of a prototxt."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (to tell whether a cache made from it is stale)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such caffemodel")
    net = caffe_pb2().NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except Exception as e:   # protobuf's DecodeError, or a message type mismatch
        raise WeightsError(f"{path}: not a caffemodel (binary NetParameter): {e}") from None
    layers = [layer for layer in list(net.layer) + list(net.layers) if layer.blobs]
    if not layers:
        raise WeightsError(f"{path}: the file holds no layer with weights (not a trained "
                           f"caffemodel?)")
    return layers


def _shape(blob) -> tuple[tuple[int, ...], bool]:
    if blob.shape.dim:
        return tuple(int(x) for x in blob.shape.dim), False
    return (blob.num, blob.channels, blob.height, blob.width), True


def caffemodel_shapes(path: str | os.PathLike) -> dict[str, list[BlobInfo]]:
    """Layer name -> [(shape, legacy, value count)] of every parameter blob in a caffemodel."""
    return {layer.name: [(*_shape(b), max(len(b.data), len(b.double_data))) for b in layer.blobs]
            for layer in _parse(path)}


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> the float32 arrays of its blobs (legacy 4-D shapes as stored)."""
    out = {}
    for layer in _parse(path):
        arrays = []
        for i, b in enumerate(layer.blobs):
            values = np.asarray(b.data if len(b.data) else b.double_data, np.float32)
            shape = _shape(b)[0]
            if values.size != int(np.prod(shape)):
                raise WeightsError(f"{path}: layer {layer.name!r} blob {i} holds {values.size} "
                                   f"values but its shape is {shape}")
            arrays.append(values.reshape(shape))
        out[layer.name] = arrays
    return out


def fit_problems(params: dict[str, list[tuple[int, ...]]], have: dict[str, list[BlobInfo]],
                 require_all: bool) -> list[str]:
    """What keeps a caffemodel (``have``) from loading into a net's params ({layer: shapes}).

    ``require_all``: every layer of the net must be in the caffemodel (evaluation, export);
    otherwise layers only the net has keep their initialisation (training: losses, counters).
    """
    problems = []
    for name, shapes in params.items():
        if name not in have:
            if require_all:
                problems.append(f"layer {name!r} is missing")
            continue
        src = have[name]
        if len(src) != len(shapes):
            problems.append(f"layer {name!r} has {len(src)} blobs, the net {len(shapes)}")
            continue
        for i, (want, (shape, legacy, count)) in enumerate(zip(shapes, src)):
            want = tuple(want)
            if not (shape == want or (legacy and shape == (1,) * (4 - len(want)) + want)):
                problems.append(f"layer {name!r} blob {i} has shape {shape}, the net {want}")
            elif count != int(np.prod(want)):
                problems.append(f"layer {name!r} blob {i} holds {count} values for shape {want}")
    if not require_all and not any(name in have for name in params):
        problems.append("no layer name in common (a model of another net?)")
    return problems


def check_fit(params: dict[str, list[tuple[int, ...]]], prototxt: str | os.PathLike,
              weights: str | os.PathLike, require_all: bool = True) -> None:
    """Raise ``WeightsError`` naming both files and the first problems (see ``fit_problems``)."""
    problems = fit_problems(params, caffemodel_shapes(weights), require_all)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsError(f"{weights} does not match {prototxt}: " + "; ".join(problems[:5])
                           + more)
