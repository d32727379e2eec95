"""Descriptor extraction with pycaffe and the HDF5 features file, shared by the evaluation,
demos and benchmarks.

Extraction (``extract``): every image is loaded with ``rmnet.data.images.load_bgr`` (corrupt or
truncated files raise ``ImageError`` naming the file), resized bilinearly to the net's input
size (taken from the deploy prototxt's Input layer) and fed as raw BGR 0..255 float32 NCHW, as
the nets were trained. The descriptor is the output blob (the net's last output unless named),
flattened and L2-normalised. With ``flip=True`` the horizontally mirrored image is run too and
the two normalised descriptors are concatenated and normalised again (the flip test of the
RMNet paper): the dimension doubles and both views weigh the same.

Image size policy: images of any size are resized (Market-1501's are 128x64, the nets take 160x64
or 384x128), but an image whose aspect ratio (height / width) differs from the net input's by
more than ``max_aspect_change`` times (default 2) is refused with ``ImageError``: a landscape
picture or a strip is not a pedestrian box and would silently produce a meaningless descriptor.

Weights check (``check_weights``): Caffe's own loader ignores caffemodel layers the net does not
have and leaves net layers the caffemodel lacks at their random initial values, and it aborts the
whole process (glog CHECK) on a shape mismatch. Both are caught before loading by comparing the
caffemodel (parsed with ``caffe_pb2.NetParameter``) with the net's parameter blobs.

Features file (HDF5), groups ``query`` and ``gallery``, each with

- ``features``: float32 (N, D), the descriptors;
- ``pids``: int64 (N,), person ids (-1 junk, 0 distractor);
- ``camids``: int64 (N,), camera ids;
- ``paths``: (N,) UTF-8 strings, image paths (relative to the root attribute ``data_root`` when
  written by ``tools/eval_market.py``).

File attributes describe where the features come from (``tools/eval_market.py`` stores the
sha256 of the prototxt and the caffemodel, the flip flag and the output blob, and reuses a cache
only when they all match). ``read_features`` checks the whole layout and raises
``FeaturesFileError`` naming the file and what is wrong.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmnet.caffe.caffemodel import WeightsError, check_fit, sha256_file  # noqa: F401 (re-exported)
from rmnet.data.images import ImageError, load_bgr, resize_to, to_blob
from rmnet.atomic import atomic_path
from rmnet.eval.metrics import l2_normalize

GROUPS = ("query", "gallery")
DATASETS = ("features", "pids", "camids", "paths")


class FeaturesFileError(ValueError):
    """A features HDF5 file that does not have the documented layout."""


# --- the net ------------------------------------------------------------------------------------

def parse_prototxt(path: str | os.PathLike):
    """The prototxt as a ``caffe_pb2.NetParameter``; ``ValueError`` naming the file if it does
    not parse (Caffe itself would abort the process)."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    net = caffe_pb2.NetParameter()
    try:
        text_format.Merge(Path(path).read_text(), net)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a Caffe prototxt: {e}") from None
    return net


def check_weights(net, prototxt: str | os.PathLike, weights: str | os.PathLike) -> None:
    """Raise ``WeightsError`` unless every parameter blob of ``net`` is in the caffemodel with
    the same shape (what ``net.copy_from`` needs to load all weights without aborting)."""
    params = {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}
    check_fit(params, prototxt, weights, require_all=True)


def load_net(prototxt: str | os.PathLike, weights: str | os.PathLike):
    """A TEST-phase ``caffe.Net`` with the caffemodel's weights, checked first (see module)."""
    import caffe

    for p, what in ((prototxt, "prototxt"), (weights, "caffemodel")):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: no such {what} file")
    parse_prototxt(prototxt)
    net = caffe.Net(str(prototxt), caffe.TEST)
    if not net.inputs:
        raise ValueError(f"{prototxt}: the net has no Input layer (a deploy prototxt is needed)")
    check_weights(net, prototxt, weights)
    net.copy_from(str(weights))
    return net


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


# --- extraction ---------------------------------------------------------------------------------

def load_for_net(path: str | os.PathLike, height: int, width: int,
                 max_aspect_change: float = 2.0) -> np.ndarray:
    """One image as uint8 (height, width, 3) BGR; ``ImageError`` if corrupt or of the wrong shape
    (aspect ratio off by more than ``max_aspect_change`` times; 0 disables the check)."""
    img = load_bgr(path)
    h, w = img.shape[:2]
    if max_aspect_change:
        change = (h / w) / (height / width)
        if not 1 / max_aspect_change <= change <= max_aspect_change:
            raise ImageError(path, f"image is {w}x{h} (width x height), aspect ratio {h / w:.2f}; "
                                   f"the net takes {width}x{height} ({height / width:.2f}), more "
                                   f"than {max_aspect_change:g}x off: not a pedestrian box")
    return resize_to(img, height, width)


def _batches(paths: Sequence, batch: int, height: int, width: int, max_aspect_change: float):
    """Yield (start, blob) for consecutive batches; the next batch decodes in a thread while
    the net runs on the current one (OpenCV releases the GIL)."""
    def load(start: int) -> np.ndarray:
        return to_blob([load_for_net(p, height, width, max_aspect_change)
                        for p in paths[start:start + batch]])

    starts = range(0, len(paths), batch)
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, starts[0])
        for i, start in enumerate(starts):
            data = pending.result()   # re-raises the loader's ImageError
            if i + 1 < len(starts):
                pending = pool.submit(load, starts[i + 1])
            yield start, data


def _caffe_forward(net, in_name: str, out_name: str, data: np.ndarray) -> np.ndarray:
    blob = net.blobs[in_name]
    if blob.data.shape != data.shape:
        blob.reshape(*data.shape)
        net.reshape()
    blob.data[...] = data
    net.forward()
    return np.array(net.blobs[out_name].data, dtype=np.float32).reshape(data.shape[0], -1)


def extract(net, paths: Sequence[str | os.PathLike], batch: int = 32, flip: bool = False,
            progress: bool | Callable[[int], None] = False, blob: str | None = None,
            max_aspect_change: float = 2.0, desc: str = "features") -> np.ndarray:
    """L2-normalised float32 (N, D) descriptors of the images (2D with ``flip``; module doc).

    ``progress``: True for a tqdm bar on stderr, or a callable given the number of images done
    after each batch. Raises ``ImageError`` for an unusable image, ``ValueError`` if the net
    outputs NaN or infinity for an image.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    paths = list(paths)
    if hasattr(net, "backend"):       # an rmnet.deploy.embedder.Embedder: ONNX Runtime, OpenVINO, ...
        if blob:
            raise ValueError("blob applies to pycaffe nets only")
        height, width = net.input_size
        infer = net.backend.infer

        def _forward(_net, _in, _out, data):      # noqa: F811 - the Embedder's forward
            return np.asarray(infer(data), np.float32).reshape(data.shape[0], -1)
        in_name = out_name = ""
    else:
        in_name, height, width = input_size(net)
        out_name = output_blob(net, blob)
        _forward = _caffe_forward
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True)
    parts = []
    try:
        for start, data in _batches(paths, batch, height, width, max_aspect_change):
            f = _forward(net, in_name, out_name, data)
            if flip:
                g = _forward(net, in_name, out_name, np.ascontiguousarray(data[..., ::-1]))
                f = np.concatenate([_normalize_checked(f, paths, start),
                                    _normalize_checked(g, paths, start)], axis=1)
            parts.append(_normalize_checked(f, paths, start))
            done = start + data.shape[0]
            if bar is not None:
                bar.update(data.shape[0])
            elif callable(progress):
                progress(done)
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


def extract_split_features(prototxt: str | os.PathLike, weights: str | os.PathLike,
                           root: str | os.PathLike, *, batch: int = 32, flip: bool = False,
                           blob: str | None = None, max_aspect_change: float = 2.0,
                           progress: bool = True, desc: str = "features",
                           dataset=None, runtime: str = "pycaffe") -> tuple[FeatureSet, FeatureSet]:
    """Query and gallery ``FeatureSet``s of a Market-1501-layout ``root`` (paths relative to
    it), extracted with the checked caffemodel (``load_net``) as in ``extract``.

    ``runtime``: ``pycaffe`` (the reference), or any runtime of ``rmnet.deploy.embedder`` (``auto``:
    the fastest installed; the model is exported once and checked against pycaffe).

    ``dataset``: an already parsed ``rmnet.data.market.Dataset`` of ``root`` (else it is parsed;
    ``DatasetError`` for a bad root). ``FeatureSet.seconds`` holds each split's wall time.
    """
    import caffe

    from rmnet.data.market import load_market, pids_camids

    ds = dataset if dataset is not None else load_market(root)
    caffe.set_mode_cpu()
    net = load_net(prototxt, weights)
    if runtime != "pycaffe":
        from rmnet.deploy.embedder import Embedder
        net = Embedder.load([prototxt, weights], runtime=runtime)
    out = []
    for split in ("query", "gallery"):
        records = ds.split(split)
        t = time.perf_counter()
        feats = extract(net, [r.path for r in records], batch=batch, flip=flip,
                        progress=progress, blob=blob, max_aspect_change=max_aspect_change,
                        desc=f"{desc} ({split})")
        pids, camids = pids_camids(records)
        out.append(FeatureSet(feats, pids, camids,
                              [str(r.path.relative_to(ds.root)) for r in records],
                              seconds=time.perf_counter() - t))
    return out[0], out[1]


# --- features file ------------------------------------------------------------------------------

@dataclass
class FeatureSet:
    """Descriptors of one split and what they describe (one row per image)."""
    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]
    seconds: float = 0.0          # extraction wall time, when extracted in this process

    def __post_init__(self):
        n = len(self.features)
        for name in ("pids", "camids", "paths"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FeatureSet: {len(getattr(self, name))} {name} for "
                                 f"{n} feature rows")

    def __len__(self) -> int:
        return len(self.features)


def write_features(path: str | os.PathLike, query: FeatureSet, gallery: FeatureSet,
                   attrs: dict | None = None) -> Path:
    """Write the HDF5 features file atomically (module doc); ``attrs`` become file attributes."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, fs in (("query", query), ("gallery", gallery)):
                g = f.create_group(name)
                g.create_dataset("features", data=np.asarray(fs.features, np.float32))
                g.create_dataset("pids", data=np.asarray(fs.pids, np.int64))
                g.create_dataset("camids", data=np.asarray(fs.camids, np.int64))
                g.create_dataset("paths", data=[str(p) for p in fs.paths],
                                 dtype=h5py.string_dtype("utf-8"))
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
    return Path(path)


def read_features(path: str | os.PathLike) -> tuple[FeatureSet, FeatureSet, dict]:
    """(query, gallery, attrs) of a features file; ``FeaturesFileError`` naming the file and
    the problem for anything that does not follow the layout of the module doc."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FeaturesFileError(f"{path}: no such features file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FeaturesFileError(f"{path}: not an HDF5 file ({e})") from None
    with f:
        sets = []
        for name in GROUPS:
            if name not in f or not isinstance(f[name], h5py.Group):
                raise FeaturesFileError(f"{path}: no group '{name}' (expected groups "
                                        f"{', '.join(GROUPS)})")
            g = f[name]
            missing = [d for d in DATASETS if d not in g]
            if missing:
                raise FeaturesFileError(f"{path}: group '{name}' lacks the dataset(s) "
                                        f"{', '.join(missing)} (expected {', '.join(DATASETS)})")
            feats = g["features"]
            if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
                raise FeaturesFileError(f"{path}: {name}/features must be a 2-D float array, "
                                        f"is {feats.shape} {feats.dtype}")
            n = feats.shape[0]
            for d in DATASETS[1:]:
                if g[d].shape != (n,):
                    raise FeaturesFileError(f"{path}: {name}/{d} has shape {g[d].shape}, but "
                                            f"{name}/features has {n} rows")
            for d in ("pids", "camids"):
                if not np.issubdtype(g[d].dtype, np.integer):
                    raise FeaturesFileError(f"{path}: {name}/{d} must be integers, is "
                                            f"{g[d].dtype}")
            if g["paths"].dtype.kind not in "OSU":
                raise FeaturesFileError(f"{path}: {name}/paths must be strings, is "
                                        f"{g['paths'].dtype}")
            x = np.asarray(feats[()], np.float32)
            if not np.isfinite(x).all():
                row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
                raise FeaturesFileError(f"{path}: {name}/features row {row} is NaN or infinite")
            paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in g["paths"][()]]
            sets.append(FeatureSet(x, np.asarray(g["pids"][()], np.int64),
                                   np.asarray(g["camids"][()], np.int64), paths))
        if sets[0].features.shape[1] != sets[1].features.shape[1]:
            raise FeaturesFileError(f"{path}: query features have {sets[0].features.shape[1]} "
                                    f"dimensions, gallery features {sets[1].features.shape[1]}")
        if len(sets[0]) == 0 or len(sets[1]) == 0:
            raise FeaturesFileError(f"{path}: no query or no gallery features")
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    return sets[0], sets[1], attrs


def _plain(v):
    """An HDF5 attribute as a plain Python value (str, int, float, bool or list)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
