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
  export step to get a 10x faster pipeline, and the check against pycaffe still runs once.
- an exported ``.onnx``: ``openvino``, ``onnxruntime`` or ``opencv`` (cv2.dnn's ONNX importer).
- an exported OpenVINO ``.xml`` (with its ``.bin``): ``openvino``.

``runtime="auto"`` picks the first installed one that can run the files, in the order
``openvino > onnxruntime > opencv > pycaffe`` (fastest first, as measured by tools/benchmark.py).
Asking for a runtime that is not installed, or that cannot read the given files, is an error
naming it.

Preprocessing is the nets' own: raw BGR 0..255, resized with ``cv2.INTER_LINEAR`` to the model's
input height x width (read from the model), no mean or scale (the net normalises its input).

Backends (also used by rmnet.deploy.export's checks and tools/benchmark.py) share one method,
``infer(blob) -> (N, D) float32``: the raw output for a float32 (N, 3, H, W) blob.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rmnet.data.images import load_bgr, resize_to, to_blob
from rmnet.eval.metrics import l2_normalize

RUNTIMES = ("openvino", "onnxruntime", "opencv", "pycaffe")   # auto order: fastest first
CACHE_DIRNAME = ".rmnet-export"


class RuntimeUnavailable(RuntimeError):
    """The requested runtime is not installed or cannot run the given model files."""


def runtime_available(runtime: str) -> bool:
    """Whether the Python package behind ``runtime`` can be imported (without importing it)."""
    module = {"openvino": "openvino", "onnxruntime": "onnxruntime", "opencv": "cv2",
              "pycaffe": "caffe"}.get(runtime)
    if module is None:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    return importlib.util.find_spec(module) is not None


def available_runtimes() -> list[str]:
    return [r for r in RUNTIMES if runtime_available(r)]


# --- backends ----------------------------------------------------------------------------------

class Backend:
    """One loaded model on one runtime: ``infer(blob)`` -> (N, D) float32 raw descriptors."""
    runtime = ""
    input_hw: tuple[int, int] = (0, 0)

    def infer(self, blob: np.ndarray) -> np.ndarray:   # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _check(blob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if blob.ndim != 4 or blob.shape[1] != 3 or tuple(blob.shape[2:]) != tuple(hw):
            raise ValueError(f"expected a float32 (N, 3, {hw[0]}, {hw[1]}) blob, got "
                             f"{blob.shape}")
        return np.ascontiguousarray(blob, dtype=np.float32)


class PycaffeBackend(Backend):
    """Caffe's own forward pass (TEST phase), the reference every export is checked against."""
    runtime = "pycaffe"

    def __init__(self, prototxt: str | os.PathLike, weights: str | os.PathLike):
        from rmnet.deploy.export import _import_caffe

        from rmnet.eval.features import check_weights, output_blob

        caffe = _import_caffe()
        self.net = caffe.Net(str(prototxt), caffe.TEST)
        check_weights(self.net, prototxt, weights)   # Caffe would abort or keep random layers
        self.net.copy_from(str(weights))
        self.input = self.net.inputs[0]
        self.output = output_blob(self.net)
        self.input_hw = tuple(self.net.blobs[self.input].data.shape[2:])

    def infer(self, blob: np.ndarray) -> np.ndarray:
        blob = self._check(blob, self.input_hw)
        data = self.net.blobs[self.input]
        if data.data.shape[0] != blob.shape[0]:
            data.reshape(*blob.shape)
            self.net.reshape()
        data.data[...] = blob
        out = self.net.forward()[self.output]
        return np.array(out.reshape(len(blob), -1), dtype=np.float32)


class OpenCVBackend(Backend):
    """OpenCV's DNN module: the Caffe importer (prototxt + caffemodel) or the ONNX importer."""
    runtime = "opencv"

    def __init__(self, model: str | os.PathLike, weights: str | os.PathLike | None = None,
                 input_hw: tuple[int, int] | None = None):
        import cv2

        if weights is not None:
            from rmnet.deploy.export import load_graph
            # The graph check refuses a caffemodel that does not fit, naming the layer (OpenCV
            # would load it anyway and keep whatever it could not match).
            graph = load_graph(model, weights)
            self.net = cv2.dnn.readNetFromCaffe(str(model), str(weights))
            if input_hw is None:
                input_hw = graph.input_hw
        else:
            self.net = cv2.dnn.readNetFromONNX(str(model))
            if input_hw is None:
                input_hw = _onnx_input_hw(model)
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.input_hw = tuple(input_hw)

    def infer(self, blob: np.ndarray) -> np.ndarray:
        blob = self._check(blob, self.input_hw)
        self.net.setInput(blob)
        out = self.net.forward()
        return np.array(out.reshape(len(blob), -1), dtype=np.float32)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime's CPU execution provider, all graph optimisations on."""
    runtime = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), opts,
                                            providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input = inp.name
        self.input_hw = (int(inp.shape[2]), int(inp.shape[3]))

    def infer(self, blob: np.ndarray) -> np.ndarray:
        blob = self._check(blob, self.input_hw)
        out = self.session.run(None, {self.input: blob})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(blob), -1)


class OpenVINOBackend(Backend):
    """OpenVINO on the CPU, one synchronous infer request (latency mode by default).

    The model is compiled for a static batch size (faster than dynamic shapes on the CPU
    plugin); a batch of a new size compiles once more and is cached. ``hint`` is OpenVINO's
    PERFORMANCE_HINT ("LATENCY" or "THROUGHPUT"). ``precision`` is the CPU plugin's
    INFERENCE_PRECISION_HINT: "f32" by default, because on CPUs with AVX-512 BF16 or AMX the
    plugin otherwise runs in bfloat16 (about 3 significant digits: descriptors off by ~0.1,
    measured on this machine).
    """
    runtime = "openvino"

    def __init__(self, model_path: str | os.PathLike, hint: str = "LATENCY",
                 precision: str = "f32", config: dict | None = None):
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(model_path))
        shape = self.model.inputs[0].get_partial_shape()
        self.input_hw = (shape[2].get_length(), shape[3].get_length())
        self.config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision,
                       **(config or {})}
        self._compiled: dict[int, object] = {}

    def compiled(self, batch: int):
        """The model compiled for ``batch`` images (cached)."""
        if batch not in self._compiled:
            model = self.model.clone()
            model.reshape([batch, 3, *self.input_hw])
            self._compiled[batch] = self.core.compile_model(model, "CPU", self.config)
        return self._compiled[batch]

    def infer(self, blob: np.ndarray) -> np.ndarray:
        blob = self._check(blob, self.input_hw)
        n = len(blob)
        # pad a short batch to an already compiled larger size rather than compiling again
        sizes = [b for b in self._compiled if b >= n]
        size = min(sizes) if sizes and n not in self._compiled else n
        if size != n:
            blob = np.concatenate([blob, np.zeros((size - n, *blob.shape[1:]), np.float32)])
        out = self.compiled(size)(blob)[0]
        return np.asarray(out, dtype=np.float32).reshape(size, -1)[:n]


def _onnx_input_hw(path: str | os.PathLike) -> tuple[int, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


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
    return True


def _export_cache(prototxt: Path, weights: Path, cache_dir: str | os.PathLike | None,
                  openvino: bool) -> tuple[Path, Path | None]:
    """The exported .onnx (and .xml) of a Caffe model, exported and verified on first use."""
    from rmnet.caffe.caffemodel import sha256_file
    from rmnet.deploy.export import export

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


class Embedder:
    """A loaded descriptor model: ``embed(crops)`` -> (N, D) L2-normalised float32."""

    def __init__(self, backend: Backend, batch_size: int = 16):
        self.backend = backend
        self.batch_size = int(batch_size)
        self._dim: int | None = None

    @classmethod
    def load(cls, path_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
             runtime: str = "auto", *, cache_dir: str | os.PathLike | None = None,
             batch_size: int = 16) -> "Embedder":
        """Load model files on ``runtime`` ("auto": the fastest installed that can run them)."""
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
        return cls(open_backend(paths, runtime, cache_dir), batch_size)

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
        """uint8 BGR crops of any size -> float32 (N, 3, H, W) at the model's input size."""
        h, w = self.input_size
        resized = []
        for i, crop in enumerate(crops):
            crop = np.asarray(crop)
            if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] < 1 or crop.shape[1] < 1:
                raise ValueError(f"crop {i}: expected a BGR (H, W, 3) image, got shape "
                                 f"{crop.shape}")
            if crop.dtype != np.uint8:
                raise ValueError(f"crop {i}: expected uint8 BGR pixels, got {crop.dtype}")
            resized.append(resize_to(crop, h, w))
        if not resized:
            return np.zeros((0, 3, h, w), np.float32)
        return to_blob(resized)

    def embed(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """(N, D) float32 L2-normalised descriptors of uint8 BGR crops of any size."""
        return self.embed_blob(self.preprocess(crops))

    def embed_paths(self, paths: Sequence[str | os.PathLike], batch: int = 64,
                    workers: int = 2) -> np.ndarray:
        """Descriptors of image files, in order; decoding runs in threads ahead of inference.

        Unreadable files raise ``rmnet.data.images.ImageError`` naming the file.
        """
        paths = list(paths)
        h, w = self.input_size
        load = lambda p: resize_to(load_bgr(p), h, w)   # noqa: E731  (OpenCV frees the GIL)
        chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
        if not chunks:
            return np.zeros((0, self.dim), np.float32)
        out = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending = [pool.map(load, chunks[0])]
            for i in range(len(chunks)):
                if i + 1 < len(chunks):   # decode the next chunk while this one runs
                    pending.append(pool.map(load, chunks[i + 1]))
                out.append(self.embed_blob(to_blob(list(pending.pop(0)))))
        return np.concatenate(out)


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
