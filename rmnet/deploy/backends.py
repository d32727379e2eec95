"""The runtimes a descriptor model runs on, behind one method: ``infer(blob) -> (N, D)`` float32
raw outputs for a float32 (N, 3, H, W) raw BGR blob. An exported model that takes another input
convention (``rmnet.deploy.conventions``; read from the ONNX ``metadata_props`` or the IR's
``rt_info``) gets the raw BGR blob converted to it, so every caller keeps feeding raw BGR. Used by the embedding API
(``rmnet.deploy.embedder``), the exporter's checks, the evaluation and the benchmarks.

- ``PycaffeBackend``: Caffe's own forward (TEST phase), the reference every export is checked
  against; the caffemodel is checked to fit first.
- ``OpenCVBackend``: OpenCV's DNN module (Caffe importer, or ONNX importer).
- ``OnnxRuntimeBackend``: ONNX Runtime's CPU provider.
- ``OpenVINOBackend``: OpenVINO's CPU plugin, forced to f32.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from rmnet.caffe.pycaffe import input_size, load_net, output_blob
from rmnet.deploy.conventions import DEFAULT, to_convention
from rmnet.deploy.graph import load_graph

RUNTIMES = ("openvino", "onnxruntime", "opencv", "pycaffe")   # auto order: fastest first


class RuntimeUnavailable(RuntimeError):
    """The requested runtime is not installed or cannot run the given model files."""


def runtime_available(runtime: str) -> bool:
    """Whether the Python package behind ``runtime`` can be imported (without importing it)."""
    module = {"openvino": "openvino", "onnxruntime": "onnxruntime", "opencv": "cv2",
              "pycaffe": "caffe"}.get(runtime)
    if module is None:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    return importlib.util.find_spec(module) is not None


def opencv_reads_caffe() -> bool:
    """Whether the installed OpenCV's DNN module has its Caffe importer (OpenCV 5 dropped it;
    its ONNX importer remains)."""
    if not runtime_available("opencv"):
        return False
    import cv2

    return hasattr(cv2.dnn, "readNetFromCaffe")


def available_runtimes() -> list[str]:
    return [r for r in RUNTIMES if runtime_available(r)]


# --- backends ----------------------------------------------------------------------------------

class Backend:
    """One loaded model on one runtime: ``infer(blob)`` -> (N, D) float32 raw descriptors."""
    runtime = ""
    input_hw: tuple[int, int] = (0, 0)
    convention: str = DEFAULT     # what the model takes; infer() converts raw BGR to it

    def infer(self, blob: np.ndarray) -> np.ndarray:   # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, blob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if blob.ndim != 4 or blob.shape[1] != 3 or tuple(blob.shape[2:]) != tuple(hw):
            raise ValueError(f"expected a float32 (N, 3, {hw[0]}, {hw[1]}) blob, got "
                             f"{blob.shape}")
        if self.convention != DEFAULT:
            return to_convention(blob, self.convention)
        return np.ascontiguousarray(blob, dtype=np.float32)


class PycaffeBackend(Backend):
    """Caffe's own forward pass (TEST phase), the reference every export is checked against."""
    runtime = "pycaffe"

    def __init__(self, prototxt: str | os.PathLike, weights: str | os.PathLike,
                 blob: str | None = None):
        # load_net checks the caffemodel fits (Caffe would abort or keep random layers)
        self.net = load_net(prototxt, weights)
        self.input, h, w = input_size(self.net)
        self.output = output_blob(self.net, blob)
        self.input_hw = (h, w)

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
            # The graph check refuses a caffemodel that does not fit, naming the layer (OpenCV
            # would load it anyway and keep whatever it could not match).
            if not opencv_reads_caffe():
                raise RuntimeUnavailable(
                    f"OpenCV {cv2.__version__} has no Caffe importer (cv2.dnn.readNetFromCaffe; "
                    f"OpenCV 5 dropped it): it cannot run {weights}; export it to ONNX "
                    f"(tools/export.py) or use another runtime")
            graph = load_graph(model, weights)
            self.net = cv2.dnn.readNetFromCaffe(str(model), str(weights))
            if input_hw is None:
                input_hw = graph.input_hw
        else:
            self.net = cv2.dnn.readNetFromONNX(str(model))
            self.convention = onnx_convention(model)
            if input_hw is None:
                input_hw = onnx_input_hw(model)
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
        meta = self.session.get_modelmeta().custom_metadata_map
        self.convention = meta.get("rmnet.input_convention", DEFAULT)
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
    plugin otherwise runs in bfloat16 (about 3 significant digits, far from the FP32
    descriptors the exports are checked against).
    """
    runtime = "openvino"

    def __init__(self, model_path: str | os.PathLike, hint: str = "LATENCY",
                 precision: str = "f32", config: dict | None = None):
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(model_path))
        if self.model.has_rt_info(["rmnet", "input_convention"]):
            self.convention = self.model.get_rt_info(["rmnet", "input_convention"]).astype(str)
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





def onnx_input_hw(path: str | os.PathLike) -> tuple[int, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def onnx_convention(path: str | os.PathLike) -> str:
    """The input convention an exported ONNX file names in its metadata (default raw BGR)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return props.get("rmnet.input_convention", DEFAULT)
