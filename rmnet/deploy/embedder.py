"""The embedding API: person crops in, L2-normalised descriptors out, on the fastest runtime.

For tracking pipelines and evaluation: load a model once, embed batches of BGR crops of any size,
compare by cosine.

    from rmnet.deploy.embedder import Embedder, search
    emb = Embedder.load(["prototxt/light/deploy.prototxt", "model.caffemodel"])   # runtime="auto"
    feats = emb.embed(crops)                 # list of uint8 BGR (h, w, 3) crops -> (N, 256) float32
    idx, sims = search(feats[:5], feats, k=10)
    gallery = emb.embed_paths(paths)         # image files, decoded in background threads

What can be loaded (``Embedder.load(path_or_paths, runtime=...)``):

- a Caffe deploy prototxt + caffemodel (two paths, any order): every runtime. For ``openvino``
  and ``onnxruntime`` the model is exported first (``rmnet.deploy.export``, verified against pycaffe on
  synthetic crops) into a cache folder ``.rmnet-export/<caffemodel stem>-<hash>/`` next to the
  caffemodel (``cache_dir=`` to put it elsewhere). The hash covers both files, so a changed model
  is exported again and a cached export is never stale. We chose auto-export over "require
  exported files" because it makes the fast path the default: nobody has to remember a separate
  export step to get the fast pipeline, and the check against pycaffe still runs once.
- an exported ``.onnx``: ``openvino``, ``onnxruntime`` or ``opencv`` (cv2.dnn's ONNX importer).
- an exported OpenVINO ``.xml`` (with its ``.bin``): ``openvino``.

``runtime="auto"`` picks the first installed one that can run the files, in the order
``openvino > onnxruntime > opencv > pycaffe`` (fastest first, as measured by tools/benchmark.py).
Asking for a runtime that is not installed, or that cannot read the given files, is an error
naming it. With ``"auto"`` and Caffe files, a model the exporter cannot convert (a layer it does
not know, padded ceil-mode pooling) or whose export fails its check against pycaffe runs on
pycaffe instead, with one ``ExportFallbackWarning`` saying why; asked for by name, the fast
runtime's failure is the error.

Preprocessing is the nets' own: raw BGR 0..255, resized with ``cv2.INTER_LINEAR`` to the model's
input height x width (read from the model), no mean or scale (the net normalises its input). An export for another input convention
(``tools/export.py --input rgb-imagenet``) says so in its metadata, and its backend converts the
raw BGR blob to it (``rmnet.deploy.backends``): callers never change.
Crops whose aspect ratio is more than ``max_aspect_change`` (2) times off the input's, which
``tools/eval_market.py`` refuses as not pedestrian boxes, are embedded all the same, but the first
call that meets any gives one ``AspectRatioWarning`` naming how many and the expected ratio (once
per Embedder, so a tracking loop is not flooded).

Backends (also used by rmnet.deploy.export's checks and tools/benchmark.py) share one method,
``infer(blob) -> (N, D) float32``: the raw output for a float32 (N, 3, H, W) blob.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rmnet.caffe.caffemodel import sha256_file
from rmnet.data.images import MAX_ASPECT_CHANGE, aspect_off, iter_blobs, resize_to, to_blob
from rmnet.deploy.backends import (RUNTIMES, Backend, OnnxRuntimeBackend, OpenCVBackend,
                                   OpenVINOBackend, PycaffeBackend, RuntimeUnavailable,
                                   available_runtimes, opencv_reads_caffe, runtime_available)
from rmnet.deploy.export import ExportCheckError, export
from rmnet.deploy.graph import ExportError
from rmnet.eval.metrics import l2_normalize

CACHE_DIRNAME = ".rmnet-export"


class AspectRatioWarning(UserWarning):
    """Crops were embedded whose aspect ratio evaluation would refuse (see the module doc)."""


class ExportFallbackWarning(UserWarning):
    """``Embedder.load(runtime="auto")`` runs a Caffe model on pycaffe because its export to the
    fast runtime failed (the message says why)."""


# --- loading -----------------------------------------------------------------------------------

def _classify(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    kinds: dict[str, Path] = {}
    for p in map(Path, paths):
        kind = {".prototxt": "prototxt", ".caffemodel": "caffemodel", ".onnx": "onnx",
                ".xml": "xml"}.get(p.suffix.lower())
        if kind is None:
            raise ValueError(f"{p}: not a model file this loader knows (.prototxt + .caffemodel, "
                             f".onnx, or OpenVINO .xml)")
        if kind in kinds:
            raise ValueError(f"two {kind} files given: {kinds[kind]} and {p}")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such model file")
        kinds[kind] = p
    if ("prototxt" in kinds) != ("caffemodel" in kinds):
        have = kinds.get("prototxt") or kinds.get("caffemodel")
        raise ValueError(f"{have}: a Caffe model needs both the deploy .prototxt and the "
                         f".caffemodel")
    if not kinds:
        raise ValueError("no model file given")
    if len(kinds) > 1 and set(kinds) != {"prototxt", "caffemodel"}:
        raise ValueError(f"give one model: a .prototxt + .caffemodel pair, an .onnx or an "
                         f".xml file, not {', '.join(str(p) for p in kinds.values())}")
    return kinds


def _runs(runtime: str, kinds: dict[str, Path]) -> bool:
    """Whether ``runtime`` can run the given files (caffe files: via auto-export for some)."""
    if "xml" in kinds:
        return runtime == "openvino"
    if "onnx" in kinds:
        return runtime in ("openvino", "onnxruntime", "opencv")
    if runtime in ("openvino", "onnxruntime"):   # caffe files, exported on first use
        return runtime_available(runtime) and importlib.util.find_spec("onnx") is not None
    if runtime == "opencv":                      # caffe files, read by OpenCV's importer
        return opencv_reads_caffe()
    return True


def _export_cache(prototxt: Path, weights: Path, cache_dir: str | os.PathLike | None,
                  openvino: bool) -> tuple[Path, Path | None]:
    """The exported .onnx (and .xml) of a Caffe model, exported and verified on first use."""
    h = hashlib.sha256("".join(sha256_file(p) for p in (prototxt, weights)).encode())
    folder = Path(cache_dir) if cache_dir else weights.parent / CACHE_DIRNAME
    folder = folder / f"{weights.stem}-{h.hexdigest()[:12]}"
    onnx_path, xml_path = folder / "model.onnx", folder / "model.xml"
    if not onnx_path.exists() or (openvino and not xml_path.exists()):
        export(prototxt, weights, folder, name="model", openvino=openvino)
    return onnx_path, (xml_path if xml_path.exists() else None)


def open_backend(paths: str | os.PathLike | Sequence[str | os.PathLike], runtime: str,
                 cache_dir: str | os.PathLike | None = None) -> Backend:
    """A backend for the model files on ``runtime`` (one of RUNTIMES, not "auto")."""
    kinds = _classify([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)} or auto")
    if not runtime_available(runtime):
        raise RuntimeUnavailable(f"runtime {runtime!r} is not installed (its Python package "
                                 f"cannot be imported); installed: "
                                 f"{', '.join(available_runtimes()) or 'none'}")
    if not _runs(runtime, kinds):
        given = ", ".join(str(p) for p in kinds.values())
        raise RuntimeUnavailable(f"runtime {runtime!r} cannot run {given}")
    if "xml" in kinds:
        return OpenVINOBackend(kinds["xml"])
    if "onnx" in kinds:
        cls = {"openvino": OpenVINOBackend, "onnxruntime": OnnxRuntimeBackend,
               "opencv": OpenCVBackend}[runtime]
        return cls(kinds["onnx"])
    prototxt, weights = kinds["prototxt"], kinds["caffemodel"]
    if runtime == "pycaffe":
        return PycaffeBackend(prototxt, weights)
    if runtime == "opencv":
        return OpenCVBackend(prototxt, weights)
    onnx_path, xml_path = _export_cache(prototxt, weights, cache_dir,
                                        openvino=runtime == "openvino")
    if runtime == "openvino":
        return OpenVINOBackend(xml_path)
    return OnnxRuntimeBackend(onnx_path)


def model_sha256(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """The identity of a model's files: hex sha256 over the sha256 of each file (Caffe: the
    prototxt then the caffemodel; OpenVINO: the .xml then its .bin; ONNX: the one file).

    It names the files, not the maths: the same net exported to ONNX has another hash. A
    gallery stores it to refuse descriptors of another model (rmnet.gallery)."""
    kinds = _classify([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))
    files = [kinds[k] for k in ("prototxt", "caffemodel", "onnx", "xml") if k in kinds]
    if "xml" in kinds and kinds["xml"].with_suffix(".bin").is_file():
        files.append(kinds["xml"].with_suffix(".bin"))
    return hashlib.sha256("".join(sha256_file(p) for p in files).encode()).hexdigest()


class Embedder:
    """A loaded descriptor model: ``embed(crops)`` -> (N, D) L2-normalised float32.

    ``model_sha256``: the model files' identity (``model_sha256()``), set by ``load``; None for
    an Embedder made from a bare backend."""

    def __init__(self, backend: Backend, batch_size: int = 16,
                 model_sha256: str | None = None,
                 max_aspect_change: float = MAX_ASPECT_CHANGE):
        self.backend = backend
        self.batch_size = int(batch_size)
        self.model_sha256 = model_sha256
        self.max_aspect_change = float(max_aspect_change)   # 0: no warning
        self._dim: int | None = None
        self._aspect_warned = False

    def _check_aspects(self, sizes: Sequence[tuple[int, int]], what: str,
                       stacklevel: int) -> None:
        """One AspectRatioWarning, the first time crops evaluation would refuse are seen."""
        if self._aspect_warned or not self.max_aspect_change:
            return
        h, w = self.input_size
        n = sum(aspect_off(ch, cw, h, w, self.max_aspect_change) for ch, cw in sizes)
        if n:
            self._aspect_warned = True
            warnings.warn(f"{n} of {len(sizes)} {what} have an aspect ratio (height / width) "
                          f"more than {self.max_aspect_change:g}x off the model's {h / w:.2f} "
                          f"({h}x{w}): not pedestrian boxes, their descriptors are unreliable "
                          f"(tools/eval_market.py refuses such images); warned once per "
                          f"Embedder", AspectRatioWarning, stacklevel=stacklevel + 1)

    @classmethod
    def load(cls, path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
             runtime: str = "auto", *, cache_dir: str | os.PathLike | None = None,
             batch_size: int = 16, max_aspect_change: float = MAX_ASPECT_CHANGE) -> "Embedder":
        """Load model files on ``runtime`` ("auto": the fastest installed that can run them).
        ``max_aspect_change``: see the module doc (0: no aspect-ratio warning)."""
        paths = ([path_or_paths] if isinstance(path_or_paths, (str, os.PathLike))
                 else list(path_or_paths))
        if runtime == "auto":
            kinds = _classify(paths)
            usable = [r for r in RUNTIMES if runtime_available(r) and _runs(r, kinds)]
            if not usable:
                raise RuntimeUnavailable(f"no installed runtime can run "
                                         f"{', '.join(map(str, paths))} (installed: "
                                         f"{', '.join(available_runtimes()) or 'none'})")
            runtime = usable[0]
            if "prototxt" in kinds and runtime in ("openvino", "onnxruntime", "opencv"):
                try:
                    backend = open_backend(paths, runtime, cache_dir)
                except (ExportCheckError, ExportError) as e:
                    backend = PycaffeBackend(kinds["prototxt"], kinds["caffemodel"])
                    why = " ".join(str(e).split())
                    warnings.warn(f"{runtime} cannot run {kinds['caffemodel'].name}, falling "
                                  f"back to pycaffe (slower): {why}", ExportFallbackWarning,
                                  stacklevel=2)
                return cls(backend, batch_size, model_sha256=model_sha256(paths),
                           max_aspect_change=max_aspect_change)
        return cls(open_backend(paths, runtime, cache_dir), batch_size,
                   model_sha256=model_sha256(paths), max_aspect_change=max_aspect_change)

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input (height, width); crops are resized to it."""
        return tuple(self.backend.input_hw)

    @property
    def dim(self) -> int:
        """Descriptor length (runs the model once on a black image the first time)."""
        if self._dim is None:
            h, w = self.input_size
            self._dim = self.backend.infer(np.zeros((1, 3, h, w), np.float32)).shape[1]
        return self._dim

    def embed_blob(self, blob: np.ndarray) -> np.ndarray:
        """L2-normalised descriptors of a ready float32 (N, 3, H, W) raw BGR blob."""
        outs = [self.backend.infer(blob[i:i + self.batch_size])
                for i in range(0, len(blob), self.batch_size)]
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.concatenate(outs))

    def preprocess(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """uint8 BGR crops of any size -> float32 (N, 3, H, W) at the model's input size.

        ``crops``: a list (or other iterable) of (H, W, 3) arrays, or one (N, H, W, 3) array."""
        if crops is None or isinstance(crops, (str, os.PathLike)):
            what = "None" if crops is None else f"a path ({crops})"
            raise TypeError(f"crops must be a list of uint8 BGR (H, W, 3) images, got {what}"
                            + ("; embed_paths() reads image files" if crops is not None else ""))
        if isinstance(crops, np.ndarray) and crops.ndim == 3:
            raise TypeError(f"crops must be a list of images, got one array of shape "
                            f"{crops.shape}: pass [crop] for a single crop")
        h, w = self.input_size
        resized, sizes = [], []
        for i, crop in enumerate(crops):
            crop = np.asarray(crop)
            if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] < 1 or crop.shape[1] < 1:
                raise ValueError(f"crop {i}: expected a BGR (H, W, 3) image, got shape "
                                 f"{crop.shape}")
            if crop.dtype != np.uint8:
                raise ValueError(f"crop {i}: expected uint8 BGR pixels, got {crop.dtype}")
            sizes.append(crop.shape[:2])
            resized.append(resize_to(crop, h, w))
        self._check_aspects(sizes, "crops", stacklevel=3)    # the caller of embed()
        if not resized:
            return np.zeros((0, 3, h, w), np.float32)
        return to_blob(resized)

    def embed(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """(N, D) float32 L2-normalised descriptors of uint8 BGR crops of any size."""
        return self.embed_blob(self.preprocess(crops))

    def embed_paths(self, paths: Sequence[str | os.PathLike], batch: int = 64,
                    workers: int = 2) -> np.ndarray:
        """Descriptors of image files, in order; decoding runs in threads ahead of inference
        (``rmnet.data.images.iter_blobs``). Unreadable files raise ``ImageError`` naming the
        file."""
        h, w = self.input_size
        sizes: list[tuple[int, int]] = []
        out = [self.embed_blob(blob) for _, blob in iter_blobs(paths, batch, h, w,
                                                                workers=workers, sizes=sizes)]
        self._check_aspects(sizes, "images", stacklevel=2)   # the caller of embed_paths()
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def search(query_feats: np.ndarray, gallery_feats: np.ndarray, k: int,
           chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery items per query by cosine similarity.

    Both sets are L2-normalised here (so raw descriptors work too). Returns ``indices`` (Q, k')
    int64 and ``similarities`` (Q, k') float32, best first, with k' = min(k, gallery size);
    equal similarities are ordered by gallery index.
    """
    q = l2_normalize(np.atleast_2d(query_feats))
    g = l2_normalize(np.atleast_2d(gallery_feats))
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"descriptor lengths differ: queries {q.shape[1]}, gallery "
                         f"{g.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(g))
    idx = np.zeros((len(q), k), np.int64)
    sims = np.zeros((len(q), k), np.float32)
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ g.T
        if k < len(g):   # candidates: the k best plus everything tied with the k-th
            kth = np.partition(sim, len(g) - k, axis=1)[:, len(g) - k][:, None]
        else:
            kth = np.full((len(sim), 1), -np.inf, np.float32)
        for r in range(len(sim)):
            cand = np.flatnonzero(sim[r] >= kth[r])
            order = cand[np.lexsort((cand, -sim[r, cand]))][:k]
            idx[s + r] = order
            sims[s + r] = sim[r, order]
    return idx, sims
