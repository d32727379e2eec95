"""Caffe deploy net + caffemodel -> ONNX -> OpenVINO IR, each export checked against pycaffe.

Why our own converter: the deploy nets use a small, fixed set of Caffe layers (the generator's
RMNet nets and the ResNet-50 baseline of ``rmnet.bench.baselines``), and the one thing that matters is
that the exported graph computes exactly what Caffe computes. So this module reads both files
with Caffe's own ``caffe_pb2`` (no pycaffe needed to convert), checks that the caffemodel fits the
prototxt, and writes the graph with ``onnx.helper``; layers it does not know are refused.

``export()`` writes ``<name>.onnx`` (opset 17) and, with ``openvino=True``, ``<name>.xml`` +
``<name>.bin`` (``openvino.convert_model`` of the ONNX file, ``save_model(...,
compress_to_fp16=False)``: FP32 weights). Everything is written into a staging directory inside
``out_dir`` first and verified there: pycaffe runs the original net on a batch of real images
(files from a folder, or crops drawn by ``rmnet.data.synthetic``), ONNX Runtime runs the ONNX file and
OpenVINO the IR, and the largest absolute difference of the output descriptors is reported. Only
when every difference is within the tolerance are the files moved into place, each
atomically (``rmnet.atomic.atomic_path``; the IR's ``.bin`` before its ``.xml``), under an
exclusive lock on ``out_dir``: two exports into one folder at once leave one export's complete
set of files, never one's ``.xml`` with the other's ``.bin``. A failed check raises
``ExportCheckError`` and leaves nothing behind. A Python without the packages an export needs
(``onnx``; ONNX Runtime, or OpenVINO with ``openvino=True``) gets an ``ExportError`` naming the
package once the files and images are read, before pycaffe runs (``check_packages``).

The check is scale-aware by default: max |diff| <= 1e-4 x max(1, max |pycaffe output|), i.e.
absolute for descriptors of magnitude up to 1 and relative above. Float32 rounding grows with the
values, so an untrained or random-weight net whose outputs are in the hundreds (the ResNet-50
speed baseline, a net before its BatchNorm statistics are learned) differs from Caffe by ~1e-4 in
absolute terms while agreeing to ~1e-7 of its scale; an absolute check would reject a correct
export there. Small outputs keep the absolute bound (a relative one would tighten it to nothing
near zero). ``check="absolute"`` or ``"relative"`` applies the tolerance to one of the two alone.

Trackers' conventions (``rmnet.deploy.conventions``): ``input="rgb-imagenet"`` exports a model
that takes RGB ``(x / 255 - mean) / std`` (ImageNet) instead of raw BGR 0..255, the adapter
folded into the net's own input normalisation and first convolution (no operation added);
``normalize=True`` makes the output ``[N, D]`` with each row L2-normalised (named
``descriptor``). The batch axis is dynamic in both files. The check then feeds each runtime's backend the
same raw BGR batch pycaffe gets (the backend converts it to the convention its file names), and compares with pycaffe's
descriptors (L2-normalised first when the export normalises). The convention, mean, std, input
size and output are written into the ONNX ``metadata_props`` and the IR's ``rt_info``
(``rmnet.*`` keys, see ``conventions.metadata``).

``random_caffemodel()`` writes a caffemodel with random but sensible weights (the BatchNorm
statistics of a fresh ``caffe.Net`` are all zero, factor included) for tests and benchmarks.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmnet.atomic import atomic_path, exclusive_lock, write_bytes
from rmnet.caffe import caffemodel
from rmnet.caffe.pycaffe import import_caffe, save_net, without_no_gpu_noise
from rmnet.deploy.backends import OnnxRuntimeBackend, OpenVINOBackend, PycaffeBackend, runtime_available
from rmnet.deploy.conventions import DEFAULT, adapt_graph, convention, metadata
from rmnet.deploy.graph import ExportError, load_graph
from rmnet.deploy.onnx import NORMALIZED_OUTPUT, to_onnx
from rmnet.eval.metrics import l2_normalize

DEFAULT_TOLERANCE = 1e-4  # max abs difference of FP32 descriptors (x max(1, max |output|))
CHECKS = ("scaled", "absolute", "relative")   # what the tolerance bounds (see the module doc)
CHECK_IMAGES = 8          # images in the check batch
MOVE_LOCK_TIMEOUT = 120.0  # seconds an export waits for another one's files to be moved in


class ExportCheckError(RuntimeError):
    """An exported model's outputs differ from pycaffe's by more than the tolerance."""

    def __init__(self, message: str, report: "ExportReport"):
        super().__init__(message)
        self.report = report


# --- verification ------------------------------------------------------------------------------

def check_images(images: str | os.PathLike | None, height: int, width: int,
                 n: int = CHECK_IMAGES, seed: int = 0) -> tuple[np.ndarray, str]:
    """A float32 (n, 3, height, width) raw BGR batch for the checks, and where it came from.

    ``images``: a folder (searched recursively; the first ``n`` image files in sorted order), or
    None for ``n`` person crops drawn by ``rmnet.data.synthetic`` (seeded).
    """
    from rmnet.data.images import is_image_name, load_blob, resize_to, to_blob

    if images is not None:
        root = Path(images)
        if not root.is_dir():
            raise ExportError(f"{root}: not a folder of images")
        files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name)
                       and not p.name.startswith("."))[:n]
        if not files:
            raise ExportError(f"{root}: no image files (.jpg, .jpeg, .png) in the folder")
        return load_blob(files, height, width), f"{len(files)} images from {root}"
    crops = synthetic_crops(n, seed)
    return (to_blob([resize_to(c, height, width) for c in crops]),
            f"{n} synthetic person crops (rmnet.data.synthetic, seed {seed})")


def synthetic_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 BGR person crops (128x64, Market-like) drawn by ``rmnet.data.synthetic``."""
    from rmnet.data import synthetic

    cfg = synthetic.SyntheticConfig(train_ids=max(2, n), test_ids=2, seed=seed)
    plan = synthetic.make_plan(cfg)
    items = [it for it in plan.items if it.split == "train"][:n]
    return [synthetic.render_item(plan, it) for it in items]


def caffe_forward(prototxt: str | os.PathLike, weights: str | os.PathLike,
                  blob: np.ndarray) -> np.ndarray:
    """pycaffe's output (the net's first output blob) for one input batch, flattened to (N, D).

    Call only after ``load_graph`` accepted the pair: Caffe aborts the process on a shape
    mismatch.
    """
    return PycaffeBackend(prototxt, weights).infer(blob)


@dataclass
class ExportReport:
    prototxt: str
    weights: str
    onnx: str | None = None
    openvino_xml: str | None = None
    output: str = ""
    input_hw: tuple[int, int] = (0, 0)
    images: str = ""
    max_abs_diff: dict[str, float] = field(default_factory=dict)   # runtime -> max |diff|
    max_abs_ref: float = 0.0                                        # max |pycaffe output|
    tolerance: float = DEFAULT_TOLERANCE
    check: str = "scaled"      # one of CHECKS: what the tolerance bounds
    folded: int = 0            # BatchNorm/Scale layers folded into convolutions
    convention: str = DEFAULT  # input convention (rmnet.deploy.conventions)
    normalized: bool = False   # output [N, D] with L2-normalised rows
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def relative(self) -> bool:
        return self.check == "relative"

    def measure(self, diff: float) -> float:
        """What the tolerance is compared with: the abs diff divided by max(1, max |output|)
        (scaled), by max |output| (relative) or by nothing (absolute)."""
        if self.check == "absolute":
            return diff
        ref = max(self.max_abs_ref, 1e-30)
        return diff / (ref if self.check == "relative" else max(1.0, ref))

    @property
    def ok(self) -> bool:
        return all(self.measure(d) <= self.tolerance for d in self.max_abs_diff.values())

    def lines(self) -> list[str]:
        out = [f"input {self.input_hw[0]}x{self.input_hw[1]} "
               f"{convention(self.convention).describe()}, output {self.output!r}"
               + (" (rows L2-normalised)" if self.normalized else "")
               + f"; {self.folded} BatchNorm/Scale layers folded into convolutions",
               f"check on {self.images} against pycaffe (max |output| {self.max_abs_ref:.4g}):"]
        kind = {"scaled": "tolerance x max(1, max |output|)", "absolute": "absolute tolerance",
                "relative": "relative tolerance"}[self.check]
        for rt, d in self.max_abs_diff.items():
            verdict = "OK" if self.measure(d) <= self.tolerance else "FAIL"
            rel = d / max(self.max_abs_ref, 1e-30)
            out.append(f"  {rt:12s} max abs diff {d:.3g} (relative {rel:.3g})  "
                       f"({kind} {self.tolerance:g}) {verdict}")
        for path in (self.onnx, self.openvino_xml):
            if path:
                out.append(f"  wrote {path}")
        return out


def export(prototxt: str | os.PathLike, weights: str | os.PathLike, out_dir: str | os.PathLike,
           *, name: str | None = None, openvino: bool = True,
           images: str | os.PathLike | None = None, tolerance: float = DEFAULT_TOLERANCE,
           relative: bool = False, check: str = "scaled",
           n_images: int = CHECK_IMAGES, input: str = DEFAULT,
           normalize: bool = False) -> ExportReport:
    """Export and verify (see the module doc); returns the report, raises on a failed check.

    ``check``: what ``tolerance`` bounds, one of CHECKS (default scale-aware, see the module
    doc); ``relative=True`` is ``check="relative"``. ``input``: the input convention
    (``rmnet.deploy.conventions.CONVENTIONS``); ``normalize``: L2-normalised ``[N, D]`` output.
    """
    convention(input)                          # an unknown name before anything else
    check = "relative" if relative else check
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}, got {check!r}")
    prototxt, weights, out_dir = Path(prototxt), Path(weights), Path(out_dir)
    g = load_graph(prototxt, weights)          # every structural error before any writing
    if len(g.outputs) != 1:
        raise ExportError(f"{prototxt}: the net has {len(g.outputs)} outputs "
                          f"({', '.join(g.outputs)}); a descriptor net has one")
    name = name or weights.stem
    h, w = g.input_hw
    blob, source = check_images(images, h, w, n_images)
    check_packages(openvino)                   # what this Python lacks, before pycaffe runs
    adapt_graph(g, input)
    output = NORMALIZED_OUTPUT if normalize else g.outputs[0]
    dim = int(np.prod(g.shapes[g.outputs[0]][1:]))
    props = metadata(input, (h, w), output, dim, normalize)
    report = ExportReport(str(prototxt), str(weights), output=output, input_hw=(h, w),
                          images=source, tolerance=tolerance, check=check,
                          folded=g.folded_into_convolutions, convention=input,
                          normalized=normalize, metadata=props)
    doc = (f"Exported by rmnet.deploy.export from {prototxt.name} + {weights.name} "
           f"(caffemodel sha256 {caffemodel.sha256_file(weights)[:16]}); input "
           f"{convention(input).describe()}")
    model = to_onnx(g, doc, normalize=normalize, props=props)
    ref = caffe_forward(prototxt, weights, blob)
    if normalize:
        ref = l2_normalize(ref)
    report.max_abs_ref = float(np.abs(ref).max())

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _write_checked(model, blob, ref, report, prototxt, weights, out_dir, name,
                              openvino, check, tolerance, relative)
    except BaseException:
        if created:                      # a failed export leaves no folder it made behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def check_packages(openvino: bool) -> None:
    """ExportError naming the package this Python lacks for an export: ``onnx`` to write the
    model, ONNX Runtime (or OpenVINO, with ``openvino=True``) to check it, OpenVINO for the IR.
    Its cause is the ModuleNotFoundError an import would raise (callers may look for it)."""
    def lacking(module: str, message: str) -> ExportError:
        err = ExportError(message)
        err.__cause__ = ModuleNotFoundError(f"No module named {module!r}", name=module)
        return err

    if importlib.util.find_spec("onnx") is None:
        raise lacking("onnx", "exporting needs the onnx package, which this Python lacks (pip "
                              "install onnx; see requirements.txt)")
    if openvino and not runtime_available("openvino"):
        raise lacking("openvino", "--openvino needs the openvino package (pip install openvino; "
                                  "see requirements.txt)")
    if not openvino and not runtime_available("onnxruntime"):
        raise lacking("onnxruntime", "no runtime to check the ONNX export with: install "
                                     "onnxruntime or openvino (requirements.txt)")


def _write_checked(model, blob, ref, report, prototxt, weights, out_dir, name, openvino, check,
                   tolerance, relative) -> ExportReport:
    """export()'s second half: the files staged in ``out_dir``, checked, moved into place."""
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.export-"))
    try:
        onnx_tmp = stage / f"{name}.onnx"
        write_bytes(onnx_tmp, model.SerializeToString())   # an OSError names the file
        if runtime_available("onnxruntime"):
            got = OnnxRuntimeBackend(onnx_tmp).infer(blob)
            report.max_abs_diff["onnxruntime"] = _max_diff(ref, got)
        if openvino:
            import openvino as ov

            xml_tmp = stage / f"{name}.xml"
            ir = ov.convert_model(str(onnx_tmp))
            for key, value in report.metadata.items():   # read back with get_rt_info
                ir.set_rt_info(value, key.split("."))
            save_ir_files(ir, xml_tmp)
            got = OpenVINOBackend(xml_tmp).infer(blob)
            report.max_abs_diff["openvino"] = _max_diff(ref, got)
        if not report.ok:
            rel = max(report.max_abs_diff.values()) / max(report.max_abs_ref, 1e-30)
            raise ExportCheckError(
                f"export of {prototxt} + {weights} does not match pycaffe: "
                + ", ".join(f"{rt} max abs diff {d:.3g}" for rt, d in
                            report.max_abs_diff.items())
                + f" (max |output| {report.max_abs_ref:.4g}, so {rel:.2g} of it; {check} "
                + f"tolerance {tolerance:g}"
                + ("" if check == "relative"
                   else "; --relative bounds the relative difference alone")
                + "); nothing written", report)
        # verified: move into place, each file atomically (the IR's weights before its xml),
        # the set under the folder's lock (another export's moves wait)
        with exclusive_lock(out_dir, MOVE_LOCK_TIMEOUT):
            _move_in(onnx_tmp, out_dir / onnx_tmp.name)
            report.onnx = str(out_dir / f"{name}.onnx")
            if openvino:
                _move_in(stage / f"{name}.bin", out_dir / f"{name}.bin")
                _move_in(stage / f"{name}.xml", out_dir / f"{name}.xml")
                report.openvino_xml = str(out_dir / f"{name}.xml")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _move_in(src: Path, dst: Path) -> None:
    """Move a finished file onto ``dst`` atomically (fsynced, via ``rmnet.atomic.atomic_path``)."""
    with atomic_path(dst) as tmp:
        os.replace(src, tmp)


def save_ir_files(model, xml_path: Path) -> None:
    """``openvino.save_model`` (FP32 kept), whose write errors (a full disk) come as a bare
    RuntimeError from C++ ("basic_ios::clear: iostream error"): here an OSError naming the file,
    ENOSPC when the disk has no room left."""
    import openvino as ov

    try:
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except RuntimeError as e:
        full = shutil.disk_usage(xml_path.parent).free < 1 << 20
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      os.strerror(errno.ENOSPC) if full else f"OpenVINO could not write it ({e})",
                      str(xml_path)) from None


def save_openvino(model, xml_path: str | os.PathLike) -> Path:
    """Write an ``openvino.Model`` as IR (``.xml`` + ``.bin``, weights as they are: FP32 stays
    FP32) atomically: both files are written in a staging folder next to ``xml_path``, then
    moved into place, the ``.bin`` before the ``.xml`` that names the model, under the folder's
    lock (as ``export``'s files)."""
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=xml_path.parent, prefix=f".{xml_path.stem}.ir-"))
    try:
        save_ir_files(model, stage / xml_path.name)
        with exclusive_lock(xml_path.parent, MOVE_LOCK_TIMEOUT):
            _move_in(stage / xml_path.with_suffix(".bin").name, xml_path.with_suffix(".bin"))
            _move_in(stage / xml_path.name, xml_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return xml_path


def _max_diff(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.shape != got.shape:
        raise ExportError(f"output shapes differ: pycaffe {ref.shape}, export {got.shape}")
    return float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())


# --- random weights for tests and benchmarks ---------------------------------------------------

def random_caffemodel(prototxt: str | os.PathLike, out: str | os.PathLike,
                      seed: int = 0) -> Path:
    """Write a caffemodel for ``prototxt`` with random, numerically sensible weights.

    A fresh ``caffe.Net`` fills convolutions from their fillers but leaves every BatchNorm blob at
    zero, scale factor included, which Caffe reads as mean 0 and variance 0 (then divides by
    sqrt(eps)): activations explode along the net. Here, with Caffe's RNG seeded, convolutions
    keep their fillers' weights; BatchNorm gets mean N(0, 0.1), variance U(0.5, 2) and factor 1;
    Scale weight U(0.5, 1) and bias N(0, 0.1). Written atomically. For tests and benchmarks.

    (Setting the BatchNorm statistics from real activations instead was tried: random filters
    then leave some channels nearly constant, e.g. ELU outputs stuck near -1, and normalising
    those amplifies float32 rounding ~25x; every runtime then differs from Caffe by ~1e-4 on
    RMNet, which measures the random net's conditioning, not the export.)
    """
    caffe = import_caffe()
    with without_no_gpu_noise():
        caffe.set_random_seed(seed)
    net = caffe.Net(str(prototxt), caffe.TEST)
    rng = np.random.default_rng(seed)
    for layer, lname in zip(net.layers, net._layer_names):
        blobs = net.params[lname] if lname in net.params else []
        if layer.type == "BatchNorm":
            c = blobs[0].data.shape[0]
            blobs[0].data[...] = rng.normal(0, 0.1, c)
            blobs[1].data[...] = rng.uniform(0.5, 2.0, c)
            blobs[2].data[...] = 1.0
        elif layer.type == "Scale":
            c = blobs[0].data.shape[0]
            blobs[0].data[...] = rng.uniform(0.5, 1.0, c)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0, 0.1, c)
    out = Path(out)
    with atomic_path(out) as tmp:
        save_net(net, tmp)
    return out
