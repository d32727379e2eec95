"""Descriptors of image files on any backend (``rmnet.deploy.backends``: pycaffe, OpenCV, ONNX
Runtime, OpenVINO): the one extraction loop of the evaluation, the demo and the INT8 tool.

Every image is loaded with ``rmnet.data.images.load_for_input`` (corrupt or truncated files, and
images whose aspect ratio is more than ``max_aspect_change`` times off the net input's, raise
``ImageError`` naming the file), resized bilinearly to the backend's input size and fed as raw
BGR 0..255 float32 NCHW, as the nets were trained; the next batch decodes while the net runs.
The descriptor is the backend's output, flattened and L2-normalised. With ``flip=True`` the
horizontally mirrored image is run too and the two normalised descriptors are concatenated and
normalised again (the flip test of the RMNet paper): the dimension doubles, both views weigh the
same.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from rmnet.data.images import iter_blobs
from rmnet.data.market import pids_camids
from rmnet.eval.features import FeatureSet
from rmnet.eval.metrics import l2_normalize


def extract(backend, paths: Sequence[str | os.PathLike], batch: int = 32, flip: bool = False,
            progress: bool | Callable[[int], None] = False, max_aspect_change: float = 2.0,
            desc: str = "features") -> np.ndarray:
    """L2-normalised float32 (N, D) descriptors of the images (2D with ``flip``; module doc).

    ``backend``: anything with ``infer(blob) -> (n, D)`` and ``input_hw``. ``progress``: True
    for a tqdm bar on stderr, or a callable given the number of images done after each batch.
    Raises ``ImageError`` for an unusable image, ``ValueError`` if the net outputs NaN or
    infinity for an image.
    """
    paths = list(paths)
    height, width = backend.input_hw

    def forward(data: np.ndarray) -> np.ndarray:
        return np.asarray(backend.infer(data), np.float32).reshape(data.shape[0], -1)

    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True)
    parts = []
    try:
        for start, data in iter_blobs(paths, batch, height, width, max_aspect_change):
            f = forward(data)
            if flip:
                g = forward(np.ascontiguousarray(data[..., ::-1]))
                f = np.concatenate([_normalize_checked(f, paths, start),
                                    _normalize_checked(g, paths, start)], axis=1)
            parts.append(_normalize_checked(f, paths, start))
            if bar is not None:
                bar.update(data.shape[0])
            elif callable(progress):
                progress(start + data.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts)


def _normalize_checked(f: np.ndarray, paths: Sequence, start: int) -> np.ndarray:
    bad = ~np.isfinite(f).all(axis=1)
    if bad.any():
        i = start + int(np.flatnonzero(bad)[0])
        raise ValueError(f"{paths[i]}: the net's output is NaN or infinite for this image "
                         f"(broken weights, e.g. BatchNorm statistics never set?)")
    return l2_normalize(f)


def describe(backend, dataset, *, batch: int = 32, flip: bool = False,
             max_aspect_change: float = 2.0, progress: bool = True,
             desc: str = "features") -> tuple[FeatureSet, FeatureSet]:
    """Query and gallery ``FeatureSet``s of a parsed dataset (``rmnet.data.market.Dataset``),
    paths relative to its root; ``FeatureSet.seconds`` holds each split's wall time."""
    out = []
    for split in ("query", "gallery"):
        records = dataset.split(split)
        t = time.perf_counter()
        feats = extract(backend, [r.path for r in records], batch=batch, flip=flip,
                        progress=progress, max_aspect_change=max_aspect_change,
                        desc=f"{desc} ({split})")
        pids, camids = pids_camids(records)
        out.append(FeatureSet(feats, pids, camids,
                              [str(r.path.relative_to(dataset.root)) for r in records],
                              seconds=time.perf_counter() - t))
    return out[0], out[1]
