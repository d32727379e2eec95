#!/usr/bin/env python3
"""Table 3 on this machine: images/s of RMNet light/strong and a ResNet-50 baseline per runtime.

    .venv/bin/python tools/benchmark.py --json bench.json --png bench.png
    .venv/bin/python tools/benchmark.py --quick                     # smoke run, ~1 minute
    .venv/bin/python tools/benchmark.py --models light --runtimes onnxruntime,openvino-sync

Models (random weights: speed does not depend on their values):

- ``light``, ``strong``: ``prototxt/<variant>/deploy.prototxt`` (160x64, 384x128);
- ``resnet50``: the ResNet-50 re-ID baseline of ``rmnet.bench.baselines`` at 384x128 (the paper's
  8-GFLOP baselines).

Each gets a random caffemodel (``rmnet.deploy.export.random_caffemodel``, seeded) and is exported to
ONNX and OpenVINO IR with ``rmnet.deploy.export`` (checked against pycaffe: max abs difference 1e-4;
for ResNet-50, whose random-weight outputs reach the hundreds, 1e-4 relative to the output).

Runtimes (absent ones are skipped, saying so): ``pycaffe``; ``opencv`` (cv2.dnn's Caffe importer
on the prototxt + caffemodel); ``onnxruntime`` (CPU provider, all graph optimisations);
``openvino-sync`` (one synchronous infer request, PERFORMANCE_HINT LATENCY); ``openvino-async``
(PERFORMANCE_HINT THROUGHPUT, an ``AsyncInferQueue`` with the plugin's optimal number of
requests kept full). All FP32 (OpenVINO's INFERENCE_PRECISION_HINT f32: on this CPU it would
otherwise run bfloat16). Every runtime uses its default threading over all cores.

Timing, per (model, runtime, batch size) cell, each with its own loaded model: warm-up calls (at
least ``--warmup`` and 0.2 s), then ``--repeats`` timed repeats of ``n`` calls each, ``n``
chosen from the warm-up so a repeat lasts about ``--min-time`` seconds. The repeats are
interleaved round-robin over all cells (repeat 1 of every cell, then repeat 2, ...), so other
work on the shared machine slows every cell alike instead of spoiling a few. Reported: the
median images/s over the repeats, with min, max and the interquartile range. The machine's
SGEMM rate is measured in the same run: numpy's float32 2048x2048 matmul (OpenBLAS),
2 x 2048^3 flops, median of the repeats, half of them before and half after the models (so a
load change during the run shows), and the load average at start and end is recorded.

Table columns: GFLOPs = 2 x convolution multiply-adds (the paper's convention, from
rmnet.deploy.graph's counting), MParams with BatchNorm/Scale folded into the convolutions;
per runtime the median images/s and the speed-up over ResNet-50 in the same runtime and batch;
``%SGEMM`` = images/s / (SGEMM GFLOP/s / model GFLOPs) of the model's best runtime, i.e. how much
of the throughput a model running at the machine's matrix-multiply rate would reach.

Targets, checked for the light variant in its best runtime and batch: at least 20x the
ResNet-50 images/s in the same runtime and batch, and at least 50% of SGEMM-bound; printed as
PASS/FAIL (exit status 0 either way: these are measurements, not tests).

``--json OUT`` writes every number (repeats included); ``--png OUT`` a bar chart.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from rmnet.paths import REPO  # noqa: E402
os.environ.setdefault("GLOG_minloglevel", "2")

from rmnet.atomic import atomic_path, atomic_write_text  # noqa: E402
from rmnet.bench.timing import (Timer, async_timer, measure_sgemm, run_interleaved,  # noqa: E402
                                spread, sync_timer)
from rmnet.caffe.protos import read_net  # noqa: E402
from rmnet.deploy.backends import (OnnxRuntimeBackend, OpenCVBackend, OpenVINOBackend,  # noqa: E402
                                   PycaffeBackend, runtime_available)
from rmnet.deploy.export import check_images, export, random_caffemodel  # noqa: E402
from rmnet.deploy.graph import conv_macs, count_params, load_graph  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402

MODELS = ("light", "strong", "resnet50")
BASELINE = "resnet50"
RUNTIMES = ("pycaffe", "opencv", "onnxruntime", "openvino-sync", "openvino-async")
PACKAGE = {"pycaffe": "pycaffe", "opencv": "opencv", "onnxruntime": "onnxruntime",
           "openvino-sync": "openvino", "openvino-async": "openvino"}
# Table 3 of the paper: OpenVINO on an Intel Core i7-6700K (4 cores), frames per second
PAPER_FPS = {"light": 923, "strong": 268, "resnet50": 64}
TARGET_SPEEDUP = 20.0
TARGET_SGEMM = 0.5


# --- models ------------------------------------------------------------------------------------

def model_stats(prototxt: Path) -> dict:
    """GFLOPs (2 x conv MACs) and folded parameter count, from rmnet.deploy.graph's counting."""
    g = load_graph(prototxt, None)
    net = read_net(prototxt)
    macs = conv_macs(net, g.shapes)
    params = count_params(net, g.param_sizes)["params_folded"]
    return {"input": list(g.input_hw), "gflops": 2 * macs / 1e9, "mparams": params / 1e6}


def prepare(name: str, workdir: Path, seed: int, check_images_n: int) -> dict:
    """Prototxt, random caffemodel and verified exports of one model (cached in workdir)."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == BASELINE:
        from rmnet.bench.baselines import write_resnet50
        prototxt = folder / "deploy.prototxt"
        if not prototxt.exists():
            write_resnet50(prototxt)
    else:
        prototxt = REPO / "prototxt" / name / "deploy.prototxt"
        if not prototxt.is_file():
            raise SystemExit(f"error: {prototxt}: no such deploy net (run `make prototxt`)")
    weights = folder / "random.caffemodel"
    if not weights.exists():
        random_caffemodel(prototxt, weights, seed=seed)
    info = {"name": name, "prototxt": str(prototxt), "weights": str(weights),
            **model_stats(prototxt)}
    onnx_path, xml_path = folder / "random.onnx", folder / "random.xml"
    can_export = runtime_available("onnxruntime") or runtime_available("openvino")
    if can_export and not (onnx_path.exists() and (xml_path.exists()
                                                   or not runtime_available("openvino"))):
        report = export(prototxt, weights, folder, name="random",
                        openvino=runtime_available("openvino"), relative=name == BASELINE,
                        n_images=check_images_n)
        info["export_check"] = {"max_abs_diff": report.max_abs_diff,
                                "max_abs_output": report.max_abs_ref,
                                "relative": report.relative, "tolerance": report.tolerance}
        for line in report.lines():
            print(f"    {line}")
    info["onnx"] = str(onnx_path) if onnx_path.exists() else None
    info["xml"] = str(xml_path) if xml_path.exists() else None
    return info


def public_info(m: dict) -> dict:
    """What the JSON keeps of a model (no temporary paths)."""
    source = ("rmnet.bench.baselines.resnet50_net" if m["name"] == BASELINE
              else str(Path(m["prototxt"]).relative_to(REPO)))
    return {k: v for k, v in m.items() if k not in ("prototxt", "weights", "onnx", "xml")} | {
        "source": source}


def open_runtime(runtime: str, m: dict):
    if runtime == "pycaffe":
        return PycaffeBackend(m["prototxt"], m["weights"])
    if runtime == "opencv":
        return OpenCVBackend(m["prototxt"], m["weights"], input_hw=tuple(m["input"]))
    if runtime == "onnxruntime":
        return OnnxRuntimeBackend(m["onnx"])
    return OpenVINOBackend(m["xml"], hint="LATENCY")


# --- report ------------------------------------------------------------------------------------

def cell(results: list[dict], model: str, runtime: str, batch: int) -> dict | None:
    for r in results:
        if (r["model"], r["runtime"], r["batch"]) == (model, runtime, batch):
            return r
    return None


def evaluate_targets(results: list[dict], models: dict, sgemm: float) -> dict:
    light = [r for r in results if r["model"] == "light"]
    if not light:
        return {"checked": False, "why": "light variant not benchmarked"}
    best = max(light, key=lambda r: r["images_per_s"]["median"])
    ips = best["images_per_s"]["median"]
    bound = sgemm / models["light"]["gflops"]
    out = {"checked": True, "runtime": best["runtime"], "batch": best["batch"],
           "images_per_s": ips, "sgemm_bound_images_per_s": bound,
           "fraction_of_sgemm_bound": ips / bound,
           "sgemm_pass": ips / bound >= TARGET_SGEMM}
    base = cell(results, BASELINE, best["runtime"], best["batch"])
    if base is not None:
        out["speedup_over_resnet50"] = ips / base["images_per_s"]["median"]
        out["speedup_pass"] = out["speedup_over_resnet50"] >= TARGET_SPEEDUP
    return out


def format_report(data: dict) -> str:
    models, results = data["models"], data["results"]
    runtimes = [rt for rt in RUNTIMES if any(r["runtime"] == rt for r in results)]
    sg = data["sgemm"]
    lines = [f"SGEMM (numpy float32 {sg['size']}x{sg['size']} matmul"
             + (f", OpenBLAS {sg['blas']['version']} {sg['blas']['architecture']}, "
                f"{sg['blas']['num_threads']} threads" if sg.get("blas") else "")
             + f"): {sg['median']:.1f} GFLOP/s (median of {len(sg['repeats'])} repeats, half "
             f"before and half after the models: medians {sg['median_before']:.1f} and "
             f"{sg['median_after']:.1f}; min {sg['min']:.1f}, max {sg['max']:.1f})",
             "images/s: median of the repeats [interquartile range]; (Nx) = speed-up over "
             "ResNet-50 in the same runtime and batch; %SGEMM: best runtime's images/s / "
             "(SGEMM GFLOP/s / GFLOPs)"]
    mach = data["machine"]
    lines.append(f"machine: {mach['cpu']}, {mach['cores']} cores; load average (1, 5, 15 min) "
                 f"at start {' '.join(f'{x:.2f}' for x in mach['loadavg_start'])}, at end "
                 f"{' '.join(f'{x:.2f}' for x in mach['loadavg_end'])}")
    lines.append("paper, Table 3 (OpenVINO, i7-6700K): " + ", ".join(
        f"{n} {fps} fps" + (f" ({fps / PAPER_FPS[BASELINE]:.1f}x)" if n != BASELINE else "")
        for n, fps in PAPER_FPS.items()) + " (ResNet-50: the 8-GFLOP baselines)")
    for batch in data["batches"]:
        head = f"{'batch ' + str(batch):10s} {'input':>8s} {'GFLOPs':>7s} {'MParams':>7s}"
        head += "".join(f" | {rt:>27s}" for rt in runtimes) + " | best runtime    %SGEMM"
        lines += ["", head, "-" * len(head)]
        for name, m in models.items():
            row = (f"{name:10s} {m['input'][0]:>4d}x{m['input'][1]:<3d} {m['gflops']:7.3f} "
                   f"{m['mparams']:7.3f}")
            best = None
            for rt in runtimes:
                r = cell(results, name, rt, batch)
                if r is None:
                    row += f" | {'-':>27s}"
                    continue
                s = r["images_per_s"]
                base = cell(results, BASELINE, rt, batch)
                ratio = (f"({s['median'] / base['images_per_s']['median']:.1f}x)"
                         if base is not None and name != BASELINE else "")
                iqr = f"[{s['q1']:.0f}-{s['q3']:.0f}]"
                row += f" | {s['median']:7.1f} {iqr:<11s} {ratio:>7s}"
                if best is None or s["median"] > best[1]:
                    best = (rt, s["median"])
            if best is not None:
                pct = 100 * best[1] / (sg["median"] / m["gflops"])
                row += f" | {best[0]:15s} {pct:5.1f}%"
            lines.append(row)
    if data["skipped"]:
        lines += [""] + [f"skipped {rt}: {why}" for rt, why in data["skipped"].items()]
    t = data["targets"]
    lines.append("")
    if not t.get("checked"):
        lines.append(f"targets not checked: {t.get('why')}")
    else:
        where = f"light in {t['runtime']} at batch {t['batch']}: {t['images_per_s']:.1f} images/s"
        if "speedup_over_resnet50" in t:
            lines.append(f"target speed-up over ResNet-50 >= {TARGET_SPEEDUP:.0f}x: "
                         f"{t['speedup_over_resnet50']:.1f}x ({where}) "
                         f"{'PASS' if t['speedup_pass'] else 'FAIL'}")
        else:
            lines.append(f"target speed-up over ResNet-50: not measured (no ResNet-50 result in "
                         f"{t['runtime']} at batch {t['batch']})")
        lines.append(f"target >= {100 * TARGET_SGEMM:.0f}% of SGEMM-bound: "
                     f"{100 * t['fraction_of_sgemm_bound']:.1f}% ({where}; SGEMM-bound "
                     f"{t['sgemm_bound_images_per_s']:.0f} images/s) "
                     f"{'PASS' if t['sgemm_pass'] else 'FAIL'}")
    return "\n".join(lines)


def plot(data: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, models = data["results"], list(data["models"])
    runtimes = [rt for rt in RUNTIMES if any(r["runtime"] == rt for r in results)]
    fig, axes = plt.subplots(1, len(data["batches"]), figsize=(6 * len(data["batches"]), 4.5),
                             squeeze=False)
    width = 0.8 / max(1, len(models))
    for ax, batch in zip(axes[0], data["batches"]):
        for i, name in enumerate(models):
            xs, ys, lo, hi = [], [], [], []
            for j, rt in enumerate(runtimes):
                r = cell(results, name, rt, batch)
                if r is None:
                    continue
                s = r["images_per_s"]
                xs.append(j + (i - (len(models) - 1) / 2) * width)
                ys.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name)
        ax.set_xticks(range(len(runtimes)), runtimes, rotation=20)
        ax.set_yscale("log")
        ax.set_ylabel("images/s (median, min-max)")
        ax.set_title(f"batch {batch}; SGEMM {data['sgemm']['median']:.0f} GFLOP/s")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("RMNet vs ResNet-50 re-ID, FP32 CPU throughput (tools/benchmark.py)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------

def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("cv2", "onnxruntime", "openvino", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@command('benchmark')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated, from %(default)s")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES),
                    help="comma-separated, from %(default)s")
    ap.add_argument("--batches", default="1,16", help="batch sizes (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up calls (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (default %(default)s)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="seconds per timed repeat (default %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: light + resnet50, batch 1 and 4, 1 warm-up, 3 short repeats")
    ap.add_argument("--workdir", type=Path,
                    help="keep the random models and exports here (reused next time); "
                         "default: a temporary folder")
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--png", type=Path, help="write a bar chart here")
    args = ap.parse_args(argv)
    check_output(args.json, '--json')
    check_output(args.png, '--png')

    if args.quick:
        if args.models == ",".join(MODELS):
            args.models = f"light,{BASELINE}"
        if args.batches == "1,16":
            args.batches = "1,4"
        args.warmup, args.repeats, args.min_time = 1, 3, 0.1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    bad = [m for m in models if m not in MODELS] + [r for r in runtimes if r not in RUNTIMES]
    if bad:
        ap.error(f"unknown model/runtime: {', '.join(bad)} (models {', '.join(MODELS)}; "
                 f"runtimes {', '.join(RUNTIMES)})")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if args.repeats < 1 or any(b < 1 for b in batches):
        ap.error("--repeats and batch sizes must be >= 1")

    load_start = list(os.getloadavg())   # other work on the machine skews every number
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)}")
    skipped = {}
    for rt in runtimes:
        if not runtime_available(PACKAGE[rt]):
            skipped[rt] = f"not installed (the {PACKAGE[rt]} Python package cannot be imported)"
            print(f"skipping {rt}: {skipped[rt]}")
    runtimes = [rt for rt in runtimes if rt not in skipped]

    sgemm_repeats = max(args.repeats, 3)
    print(f"SGEMM: numpy float32 2048x2048 matmul, {sgemm_repeats} repeats ...")
    sgemm_before = measure_sgemm(sgemm_repeats)
    print(f"  {sgemm_before['median']:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory(prefix="rmnet-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        infos: dict[str, dict] = {}
        for name in models:
            print(f"preparing {name} (random weights, ONNX/OpenVINO export and check) ...")
            infos[name] = prepare(name, workdir, args.seed, 2 if args.quick else 8)
        timers: list[Timer] = []
        keys: list[tuple[str, str, int]] = []
        for name in models:
            m = infos[name]
            h, w = m["input"]
            for rt in runtimes:
                if rt not in ("pycaffe", "opencv") and not (m["xml"] if "openvino" in rt
                                                            else m["onnx"]):
                    skipped.setdefault(rt, "no exported model")
                    continue
                for batch in batches:   # one backend per batch size: no re-allocation
                    blob, _ = check_images(None, h, w, batch, seed=args.seed)
                    label = f"{name}/{rt}/b{batch}"
                    if rt == "openvino-async":
                        timers.append(async_timer(label, open_runtime("openvino-sync", m),
                                                  blob))
                    else:
                        timers.append(sync_timer(label, open_runtime(rt, m), blob))
                    keys.append((name, rt, batch))
        print(f"timing {len(timers)} (model, runtime, batch) cells, interleaved: warm-up, then "
              f"{args.repeats} repeats of ~{args.min_time:g} s each ...")
        run_interleaved(timers, args.warmup, args.repeats, args.min_time)
        results = []
        for (name, rt, batch), t in zip(keys, timers):
            stats = t.stats()
            if hasattr(t, "infer_requests"):
                stats["infer_requests"] = t.infer_requests
            results.append({"model": name, "runtime": rt, "batch": batch,
                            "images_per_s": stats})
            print(f"  {name:9s} {rt:15s} batch {batch:3d}: {stats['median']:9.1f} "
                  f"images/s [{stats['min']:.1f}-{stats['max']:.1f}]")
        del timers
    print(f"SGEMM again, {sgemm_repeats} repeats ...")
    sgemm_after = measure_sgemm(sgemm_repeats)
    print(f"  {sgemm_after['median']:.1f} GFLOP/s")
    sgemm = {**sgemm_before, **spread(sgemm_before["repeats"] + sgemm_after["repeats"]),
             "median_before": sgemm_before["median"], "median_after": sgemm_after["median"]}

    data = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "versions": versions(),
                        "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
            "settings": {"warmup": args.warmup, "repeats": args.repeats,
                         "min_time_s": args.min_time, "quick": args.quick, "seed": args.seed},
            "sgemm": sgemm, "batches": batches,
            "models": {n: public_info(m) for n, m in infos.items()},
            "results": results, "skipped": skipped}
    data["targets"] = (evaluate_targets(results, data["models"], sgemm["median"])
                       if "light" in data["models"] else {"checked": False,
                                                          "why": "light not benchmarked"})
    print()
    print(format_report(data))
    if args.json:
        atomic_write_text(args.json, json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.png:
        plot(data, args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
