#!/usr/bin/env python3
"""INT8 post-training quantization (OpenVINO NNCF): speed-up and accuracy change side by side.

    .venv/bin/python tools/quantize.py --prototxt prototxt/light/deploy.prototxt \\
        --weights snapshots/light.caffemodel --data data/synthetic --out exported/
    .venv/bin/python tools/quantize.py --model exported/light.xml --data data/market1501 \
        --out exported/

1. The FP32 model: an OpenVINO IR or ONNX file (``--model``), or a Caffe deploy net + caffemodel,
   exported first with ``rmnet.deploy.export`` (checked against pycaffe, 1e-4).
2. Calibration: ``--calib`` training crops (default 300) of the dataset (``bounding_box_train/``,
   an evenly spaced selection over the sorted file list, so every identity and camera is
   represented), at the model's input size, raw BGR as always. A dataset without a training
   split (query and gallery only, an evaluation set) calibrates on its gallery images instead,
   chosen the same way, and says so: the ranges then come from the images the accuracy is
   measured on (no labels are used; calibration only needs the activation ranges of this kind
   of image), so the accuracy change is a slightly optimistic one. ``--calib-data DIR`` takes
   the calibration crops from another dataset (its training split, else its gallery).
3. ``nncf.quantize`` on the OpenVINO model (``--accuracy-control``:
   ``nncf.quantize_with_accuracy_control`` with rank-1 on ``--data`` as the metric and
   ``--max-rank1-drop`` as the bound), fast bias correction, preset PERFORMANCE
   (symmetric weights and activations; ``--preset mixed``: asymmetric activations, slower
   here), activation ranges from the extremes over all calibration images (``--ranges minmax``;
   NNCF's default averages per-image extremes and cost 1-2 points of rank-1, see ``quantize``).
4. Accuracy: query and gallery descriptors from both models, cosine distance, Market-1501
   protocol (``rmnet.eval.metrics.evaluate_rank``): rank-1, mAP (non-interpolated) and official mAP,
   and the mean cosine similarity of each image's FP32 and INT8 descriptors.
5. Speed: images/s of both in OpenVINO's THROUGHPUT mode (AsyncInferQueue) at each batch of
   ``--batches`` (default 16) and in the synchronous latency mode at batch 1 (warm-up, repeats
   interleaved between the two models, median: tools/benchmark.py's timers). ``--profile`` adds
   the time per network part (rmnet.deploy.profile): which layers INT8 speeds up and which it does
   not.

The result is always printed, the accuracy change included: quantization is never silent. The
INT8 IR (``<out>/<name>-int8.xml/.bin``) is written (atomically) only if rank-1 drops by at most
``--max-rank1-drop`` points (default 1.0); otherwise nothing is written and
the exit status is 1 (``--force`` writes it anyway, still reporting the drop). ``--json OUT``
saves every number. Targets printed with PASS/FAIL: INT8 >= 1.5x FP32 images/s (THROUGHPUT mode;
with several ``--batches``, each precision at its best batch) with rank-1 within 1 point.
``--profile`` shows where the speed-up goes: the parts dominated by ELU (an exponential per
value, computed in float in both precisions) and the depthwise convolutions gain little from
INT8; see rmnet/deploy/profile.py. Measured numbers are in results/ and the README.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")

from rmnet.deploy.backends import OpenVINOBackend  # noqa: E402
from rmnet.deploy.export import ExportCheckError, export, save_openvino  # noqa: E402
from rmnet.deploy.graph import ExportError  # noqa: E402
from rmnet.atomic import atomic_write_text  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402
from rmnet.data.datasets import FORMATS  # noqa: E402

TARGET_SPEEDUP = 1.5
TARGET_RANK1_DROP = 1.0   # points


def fp32_model(args, workdir: Path) -> Path:
    """Path of the FP32 OpenVINO IR or ONNX model to quantize (exported first if Caffe)."""
    if args.model:
        if args.model.suffix.lower() not in (".xml", ".onnx") or not args.model.is_file():
            raise ExportError(f"{args.model}: expected an existing OpenVINO .xml or .onnx file")
        return args.model
    report = export(args.prototxt, args.weights, workdir, name="fp32", openvino=True)
    for line in report.lines():
        print(f"  {line}")
    return Path(report.openvino_xml)


def calibration_records(ds) -> tuple[list, str]:
    """The images to calibrate on and what they are: the training split, or the gallery of a
    dataset without one (see the module doc)."""
    if ds.train:
        return ds.train, "training crops"
    return ds.gallery, "gallery crops (no training split)"


def calibration_blob(records, n: int, hw: tuple[int, int]) -> np.ndarray:
    """``n`` training images spread evenly over the sorted list, (n, 3, H, W) raw BGR."""
    from rmnet.data.images import load_blob

    n = min(n, len(records))
    picks = np.linspace(0, len(records) - 1, n).round().astype(int)
    return load_blob([records[i].path for i in picks], *hw)


class CompiledBackend:
    """An NNCF-compiled OpenVINO model as a backend (``infer``), one image at a time: the
    model is compiled for the static batch 1 it was calibrated with."""

    def __init__(self, compiled, hw: tuple[int, int]):
        self.compiled, self.input_hw = compiled, hw

    def infer(self, blob: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self.compiled(blob[i:i + 1])[0]).reshape(1, -1)
                               for i in range(len(blob))])


def rank1_validator(ds, hw: tuple[int, int]):
    """``validation_fn(compiled_model, data) -> rank-1`` (fraction) on ``ds``'s query/gallery,
    for NNCF's accuracy control (the one evaluation, ``rmnet.eval.evaluate``)."""
    from rmnet.eval.evaluate import evaluate

    def validate(compiled, _data=None) -> float:
        return float(evaluate(CompiledBackend(compiled, hw), ds, progress=False).result.rank(1))
    return validate


RANGES = ("minmax", "mean_minmax", "mean_quantile")


def quantize(fp32_path: Path, calib: np.ndarray, preset: str, fast_bias: bool = True,
             keep_fp32: list[str] | None = None, accuracy_control=None,
             max_drop: float = 0.01, ranges: str = "minmax"):
    """The NNCF-quantized ``openvino.Model`` (static batch 1, as calibrated); operations whose
    names match a ``keep_fp32`` regular expression stay in floating point. With
    ``accuracy_control`` (a validation function, see ``rank1_validator``) NNCF returns layers to
    FP32, most harmful first, until the metric drops by at most ``max_drop``.

    ``ranges``: how each activation quantizer's range is estimated over the calibration images
    (one image per sample). "minmax": the smallest minimum and largest maximum seen; NNCF's own
    default, "mean_minmax", averages the per-image extremes, so every image's largest values
    are clipped, and RMNet's head takes exactly those (global MAX pooling); the README compares
    the two on trained models."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if ranges not in RANGES:
        raise ValueError(f"ranges must be one of {', '.join(RANGES)}, got {ranges!r}")
    model = ov.Core().read_model(str(fp32_path))
    model.reshape([1, *calib.shape[1:]])
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    ignored = nncf.IgnoredScope(patterns=list(keep_fp32)) if keep_fp32 else None
    extra = {"ignored_scope": ignored} if ignored else {}
    estimator = getattr(RangeEstimatorParametersSet, ranges.upper())
    presets = {"mixed": nncf.QuantizationPreset.MIXED,
               "performance": nncf.QuantizationPreset.PERFORMANCE}
    if accuracy_control is not None:
        return nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset([calib[:1]]), validation_fn=accuracy_control,
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib),
            preset=presets[preset], **extra,
            advanced_quantization_parameters=AdvancedQuantizationParameters(
                activations_range_estimator_params=estimator))
    return nncf.quantize(model, dataset, subset_size=len(calib), fast_bias_correction=fast_bias,
                         preset=presets[preset], **extra,
                         advanced_parameters=AdvancedQuantizationParameters(
                             activations_range_estimator_params=estimator))


def accuracy(backend: OpenVINOBackend, ds, batch: int) -> tuple[dict, np.ndarray]:
    """Market-1501 metrics of one model, and its (query + gallery) descriptors."""
    from rmnet.eval.evaluate import evaluate

    ev = evaluate(backend, ds, batch=batch, progress=False)
    res = ev.result
    return ({"rank1": 100 * res.rank(1), "mAP": 100 * res.mAP,
             "mAP_official": 100 * res.mAP_official},
            np.concatenate([ev.query.features, ev.gallery.features]))


def speed(models: dict[str, Path], hw: tuple[int, int], batches: list[int], args
          ) -> dict[str, dict]:
    """images/s of each model: THROUGHPUT mode at each of ``batches`` and LATENCY mode at batch
    1, timed interleaved (tools/benchmark.py's timers) so machine load affects FP32 and INT8
    alike. Keys: ``throughput_b<B>`` and ``latency_b1``."""
    from rmnet.deploy.export import check_images
    from rmnet.bench.timing import async_timer, run_interleaved, sync_timer

    blob, _ = check_images(None, *hw, max(batches))
    timers = {}
    for name, path in models.items():
        for b in batches:
            timers[name, f"throughput_b{b}"] = async_timer(f"{name} tput b{b}",
                                                           OpenVINOBackend(path), blob[:b])
        timers[name, "latency_b1"] = sync_timer(f"{name} sync b1", OpenVINOBackend(path),
                                                blob[:1])
    run_interleaved(list(timers.values()), args.warmup, args.repeats, args.min_time)
    out: dict[str, dict] = {name: {} for name in models}
    for (name, mode), t in timers.items():
        out[name][mode] = t.stats()
    return out


def best_throughput(sp: dict[str, dict]) -> tuple[str, float]:
    """The THROUGHPUT-mode entry with the highest median images/s: (key, images/s)."""
    key = max((k for k in sp if k.startswith("throughput_")), key=lambda k: sp[k]["median"])
    return key, sp[key]["median"]


def profile_lines(fp32: Path, int8: Path, hw: tuple[int, int], batch: int = 16) -> list[str]:
    """Per-part FP32 vs INT8 time table (rmnet.deploy.profile) at ``batch``, one thread."""
    from rmnet.deploy.profile import compare, format_comparison, layer_times

    a, b = layer_times([fp32, int8], batch, *hw)
    return [f"time per part (OpenVINO performance counters, batch {batch}, 1 thread, ms per "
            "batch):", *format_comparison(compare(a, b))]


def parse_batches(text: str) -> list[int]:
    """``"16,64"`` -> [16, 64]: positive batch sizes, each once, in order."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batches: expected comma-separated integers, "
                                         f"got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--batches: expected positive batch sizes, got {text!r}")
    return list(dict.fromkeys(values))


@command('quantize')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("FP32 model: --model, or --prototxt with --weights")
    src.add_argument("--model", type=Path, help="FP32 OpenVINO .xml or .onnx")
    src.add_argument("--prototxt", type=Path)
    src.add_argument("--weights", type=Path)
    ap.add_argument("--data", type=Path, required=True,
                    help="dataset root in any supported layout (calibration from its train "
                         "split, or its gallery without one; accuracy on its query/gallery), "
                         "e.g. from `python -m rmnet.data.synthetic`")
    ap.add_argument("--format", choices=FORMATS,
                    help="the dataset layout of --data (default: detected)")
    ap.add_argument("--calib-data", type=Path, metavar="DIR",
                    help="calibrate on this dataset instead of --data (its training split, "
                         "else its gallery); --calib-format its layout")
    ap.add_argument("--calib-format", choices=FORMATS,
                    help="the dataset layout of --calib-data (default: detected)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the INT8 IR")
    ap.add_argument("--name", help="output stem (default: the model's or caffemodel's stem)")
    ap.add_argument("--calib", type=int, default=300, help="calibration crops (%(default)s)")
    ap.add_argument("--preset", choices=("performance", "mixed"), default="performance")
    ap.add_argument("--ranges", choices=RANGES, default="minmax",
                    help="activation range estimate over the calibration images: minmax "
                         "(default: extremes over all images), mean_minmax (NNCF's default: "
                         "mean of per-image extremes, clips what max pooling picks), "
                         "mean_quantile")
    ap.add_argument("--keep-fp32", action="append", metavar="REGEX",
                    help="keep operations whose names match in FP32 (layer names, e.g. "
                         "'head/.*'); repeatable")
    ap.add_argument("--accuracy-control", action="store_true",
                    help="NNCF accuracy control: keep layers in FP32 until rank-1 on --data "
                         "drops by at most --max-rank1-drop. Slow when layers must be returned "
                         "to FP32: NNCF first ranks every quantized operation with one "
                         "validation each (150 for light)")
    ap.add_argument("--bias-correction", choices=("fast", "full"), default="fast",
                    help="NNCF's bias correction: fast, or full (slower, more accurate)")
    ap.add_argument("--max-rank1-drop", type=float, default=TARGET_RANK1_DROP,
                    help="largest rank-1 drop (points) for which the INT8 model is written")
    ap.add_argument("--force", action="store_true", help="write the INT8 model whatever the drop")
    ap.add_argument("--batches", type=parse_batches, default=[16], metavar="B[,B...]",
                    help="THROUGHPUT-mode batch sizes to time (default 16). With several, the "
                         "speed-up target compares each precision at its best batch")
    ap.add_argument("--profile", action="store_true",
                    help="also print FP32 vs INT8 time per network part (batch 16, 1 thread): "
                         "which layers INT8 speeds up and which it does not")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per timed repeat")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    if args.calib < 1 or args.warmup < 0 or args.repeats < 1 or args.min_time < 0:
        ap.error("--calib and --repeats must be >= 1, --warmup and --min-time >= 0")
    check_output(args.out, '--out', folder=True)
    check_output(args.json, '--json')
    if args.calib_format and not args.calib_data:
        ap.error("--calib-format applies only with --calib-data")
    if (args.model and (args.prototxt or args.weights)) or \
            (not args.model and not (args.prototxt and args.weights)):
        ap.error("give --model, or both --prototxt and --weights")

    from rmnet.data.datasets import load_dataset
    from rmnet.data.market import DatasetError

    try:
        ds = load_dataset(args.data, args.format)
        calib_root = args.calib_data or args.data
        calib_ds = load_dataset(args.calib_data, args.calib_format) if args.calib_data else ds
    except (DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.name or (args.model.stem if args.model else args.weights.stem)
    with tempfile.TemporaryDirectory(prefix="rmnet-quant-") as tmp:
        tmp = Path(tmp)
        try:
            fp32 = fp32_model(args, tmp)
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except ExportCheckError as e:   # the exported FP32 model does not reproduce pycaffe
            print(f"error: {e}", file=sys.stderr)
            return 1
        fp32_backend = OpenVINOBackend(fp32)
        hw = fp32_backend.input_hw
        t0 = time.perf_counter()
        calib_records, calib_kind = calibration_records(calib_ds)
        if not calib_ds.train:
            same = calib_ds is ds
            print(f"note: {calib_root} has no training split: calibrating on its gallery "
                  f"images{' (the accuracy is measured on them too)' if same else ''}"
                  f"{'; --calib-data DIR takes them from another dataset' if same else ''}")
        calib = calibration_blob(calib_records, args.calib, hw)
        print(f"quantizing {fp32} with NNCF ({args.preset} preset, {args.ranges} ranges) on "
              f"{len(calib)} {calib_kind} of {calib_root} ...")
        control = rank1_validator(ds, hw) if args.accuracy_control else None
        int8_model = quantize(fp32, calib, args.preset, args.bias_correction == "fast",
                              args.keep_fp32, control, args.max_rank1_drop / 100, args.ranges)
        int8_tmp = save_openvino(int8_model, tmp / "int8.xml")
        print(f"  {time.perf_counter() - t0:.1f} s")

        print(f"accuracy on {args.data}: {len(ds.query)} queries, {len(ds.gallery)} gallery")
        acc32, f32 = accuracy(fp32_backend, ds, 16)
        acc8, f8 = accuracy(OpenVINOBackend(int8_tmp), ds, 16)
        agreement = float(np.mean(np.sum(f32 * f8, axis=1)))
        print("speed (OpenVINO CPU) ...")
        sp = speed({"FP32": fp32, "INT8": int8_tmp}, hw, args.batches, args)
        sp32, sp8 = sp["FP32"], sp["INT8"]
        best32, best8 = best_throughput(sp32), best_throughput(sp8)
        prof = profile_lines(fp32, int8_tmp, hw) if args.profile else []

        change = acc8["rank1"] - acc32["rank1"]   # +0.0 when equal (prints "+0.00")
        drop = -change
        ratio = best8[1] / best32[1]
        tput_keys = [f"throughput_b{b}" for b in args.batches]
        at_best = ("" if len(args.batches) == 1 else
                   f" (each at its best batch: FP32 {best32[0].split('_b')[1]}, "
                   f"INT8 {best8[0].split('_b')[1]})")
        lines = [
            "",
            f"{'':24s} {'FP32':>10s} {'INT8':>10s} {'change':>10s}",
            *(f"{label:24s} {acc32[k]:10.2f} {acc8[k]:10.2f} {acc8[k] - acc32[k]:+10.2f}"
              for label, k in (("rank-1 (%)", "rank1"), ("mAP (%)", "mAP"),
                               ("mAP official (%)", "mAP_official"))),
            *(f"{label:24s} {sp32[k]['median']:10.1f} {sp8[k]['median']:10.1f} "
              f"{sp8[k]['median'] / sp32[k]['median']:9.2f}x"
              for label, k in [*((f"images/s tput, batch {k.split('_b')[1]}", k)
                                 for k in tput_keys),
                               ("images/s sync, batch 1", "latency_b1")]),
            f"mean cosine(FP32, INT8 descriptor) over {len(f32)} images: {agreement:.4f}",
            f"ACCURACY CHANGE: rank-1 {change:+.2f} points, mAP "
            f"{acc8['mAP'] - acc32['mAP']:+.2f} points",
            f"target INT8 >= {TARGET_SPEEDUP}x FP32 images/s (throughput mode{at_best}): "
            f"{ratio:.3f}x "
            f"{'PASS' if ratio >= TARGET_SPEEDUP else 'FAIL'}",
            f"target rank-1 within {TARGET_RANK1_DROP:g} point: {change:+.2f} "
            f"{'PASS' if drop <= TARGET_RANK1_DROP else 'FAIL'}",
        ]
        if prof:
            lines += ["", *prof]
        print("\n".join(lines))
        written = None
        if drop <= args.max_rank1_drop or args.force:
            written = save_openvino(int8_model, args.out / f"{name}-int8.xml")
            print(f"wrote {written}")
        else:
            print(f"not written: rank-1 drops {drop:.2f} points, more than --max-rank1-drop "
                  f"{args.max_rank1_drop:g} (--force writes it anyway)", file=sys.stderr)
    if args.json:
        data = {"fp32": {"model": str(args.model or args.weights), "accuracy": acc32,
                         "speed": sp32},
                "int8": {"model": str(written) if written else None, "accuracy": acc8,
                         "speed": sp8},
                "calibration": {"images": len(calib), "preset": args.preset,
                                "ranges": args.ranges,
                                "bias_correction": args.bias_correction,
                                "keep_fp32": args.keep_fp32 or [],
                                "accuracy_control": args.accuracy_control,
                                "data": str(calib_root), "images_from": calib_kind},
                "descriptor_cosine_mean": agreement, "rank1_drop": drop,
                "throughput_speedup": ratio,
                "throughput_best": {"fp32": best32[0], "int8": best8[0]},
                "profile": prof}
        atomic_write_text(args.json, json.dumps(data, indent=1) + "\n")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
