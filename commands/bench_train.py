"""Benchmark: the real RMNet training step on stock Caffe and on the project's patched Caffe.

    .venv/bin/python tools/bench_train.py                        # batch 64, 3 rounds
    .venv/bin/python tools/bench_train.py --rounds 5 --steps 8 --out results/DATE

What is measured: the generated light train net (``prototxt/light``'s template, rendered for a
synthetic Market-1501-shaped dataset written to a temporary folder, or ``--data``) at
``--batch``, with its data layer, both losses and the hard-sample-mining feedback, driven by
Caffe's SGD solver from the same initial weights. Each timed iteration is one ``solver.step(1)``:
forward, backward and the weight update.

Two builds run the same steps, in separate subprocesses that alternate (stock, patched, stock,
...), so load from other jobs on the machine hits both alike:

- stock: Debian's Caffe source with only the patches needed to build (``scripts/setup.sh
  --stock-caffe`` builds it on first use and caches it like the main build). Stock Caffe has no
  scheduled-Dropout option, so its net uses the project's Python ``ScheduledDropoutLayer`` with
  the same schedule (what the train nets used before the option existed).
- patched: the build ``make setup`` wired into the venv.

Reported: ms per iteration (median over all timed steps of all rounds) and the ratio; the
share of the SGEMM bound, i.e. (3 x the forward FLOPs of the convolutions and inner products per
step / time) against a float32 matrix multiply measured in the same run (numpy's OpenBLAS,
2048 x 2048); hours for 150k iterations on this machine, and in core-hours; forward + backward
time per layer type (medians of a layer-by-layer pass; the layers that the patched Caffe runs as
one pass, BatchNorm -> Scale -> ELU or Dropout and Eltwise -> ELU, are timed as one unit, and a
row adds up those five types in both builds); and the loss curve of the first
iterations on both builds from the same weights and batches. The builds draw dropout masks
differently and hard-sample mining turns float noise into different batches, so the curves are
compared with dropout switched off and mining off (``--curve-dropout``/``--curve-mining`` keep
them on). Numbers only: nothing is asserted.

The command line of tools/bench_train.py, also installed as the console script
`rmnet-bench-train`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

from rmnet.atomic import atomic_write_text, check_output  # noqa: E402
from commands.errors import command  # noqa: E402
from rmnet.paths import REPO  # noqa: E402

PAPER_ITERS = 150_000
NUDGE = 1e-7          # relative perturbation of the weights for the loss-curve noise floor


# --- nets -------------------------------------------------------------------------------------

def python_dropout(net_param):
    """A copy of the NetParameter whose scheduled Dropout layers (dropout_param.switch_off_iter)
    are the project's Python ScheduledDropoutLayer with the same ratio, switch, iter_size and
    seed: the same net for a Caffe without the option."""
    from caffe.proto import caffe_pb2
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer in out.layer:
        if layer.type != "Dropout" or not layer.dropout_param.HasField("switch_off_iter"):
            continue
        d = layer.dropout_param
        cfg = {"ratio": round(d.dropout_ratio, 6), "switch_off_iter": d.switch_off_iter,
               "iter_size": d.iter_size, "seed": d.seed}
        layer.ClearField("dropout_param")
        layer.type = "Python"
        layer.python_param.module = "layers.dropout"
        layer.python_param.layer = "ScheduledDropoutLayer"
        layer.python_param.param_str = json.dumps(cfg)
    return out


def prepare(workdir: Path, data: Path | None, batch: int, switch_off_iter: int | None,
            mining: bool, log) -> dict[str, str]:
    """Render the light train net and a test-free solver for both builds; initial weights."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    from rmnet.data.synthetic import SyntheticConfig, generate
    from training.run import init_weights, prepare_run

    if data is None:
        data = workdir / "market"
        log(f"writing a synthetic dataset to {data}")
        generate(data, SyntheticConfig(seed=0))
    extra: dict = {} if mining else {"hsm": {"enabled": False, "weighted": False}}
    if switch_off_iter is not None:
        extra["dropout"] = {"switch_off_iter": switch_off_iter}
    paths = prepare_run("light", data, workdir / "run", None, batch_size=batch, extra=extra,
                        log=log)
    init = workdir / "init.caffemodel"
    init_weights(paths["deploy"], init, seed=0, log=lambda m: None)
    train = text_format.Parse(Path(paths["train"]).read_text(), caffe_pb2.NetParameter())
    out = {"init": str(init)}
    for build, net in (("patched", train), ("stock", python_dropout(train))):
        net_path = workdir / f"train_{build}.prototxt"
        net_path.write_text(text_format.MessageToString(net))
        solver = text_format.Parse(Path(paths["solver"]).read_text(), caffe_pb2.SolverParameter())
        solver.net = str(net_path)
        for field in ("test_net", "test_iter"):
            solver.ClearField(field)
        solver.test_interval = 10 ** 9
        solver.test_initialization = False
        solver.snapshot = 0
        solver.max_iter = 10 ** 6
        solver.display = 0
        solver_path = workdir / f"solver_{build}.prototxt"
        solver_path.write_text(text_format.MessageToString(solver))
        out[build] = str(solver_path)
    return out


def layer_kind(layer) -> str:
    """Layer type for the per-type table; convolutions split into 1x1, depthwise and others."""
    if layer.type == "Convolution":
        p = layer.convolution_param
        k = list(p.kernel_size) or [p.kernel_h or 1]
        if p.group > 1:
            return "Convolution depthwise"
        if all(x == 1 for x in k):
            return "Convolution 1x1"
        return "Convolution " + "x".join(str(x) for x in (k * 2 if len(k) == 1 else k))
    if layer.type == "Python":
        return f"Python {layer.python_param.layer}"
    return layer.type


def timing_units(kinds: list[str], chains) -> list[tuple[int, int, str]]:
    """(first layer, last layer, kind) for the per-type timing: one unit per layer, except the
    layers a patched Caffe runs as one (``Net._fused_chains``: (first, count) pairs), which are
    one unit of kind "BatchNorm+Scale+ELU (one pass)" and the like, since timed alone each
    of them would take the unfused path."""
    starts = {first: count for first, count in chains}
    units, i = [], 0
    while i < len(kinds):
        count = starts.get(i, 1)
        kind = kinds[i] if count == 1 else "+".join(kinds[i:i + count]) + " (one pass)"
        units.append((i, i + count - 1, kind))
        i += count
    return units


def forward_flops(net, net_param) -> float:
    """Multiply-adds x 2 of the convolutions and inner products of one forward pass."""
    total = 0.0
    for layer in net_param.layer:
        if layer.type not in ("Convolution", "InnerProduct") or layer.name not in net.layer_dict:
            continue
        w = net.params[layer.name][0].data
        top = net.blobs[layer.top[0]].data
        if layer.type == "Convolution":       # weight: Cout x Cin/g x KH x KW; top: N x Cout x OH x OW
            total += 2.0 * top.size * w[0].size
        else:
            total += 2.0 * top.shape[0] * w.size
    return total


# --- worker (runs in a subprocess, on one build) ------------------------------------------------

def worker(args) -> int:
    import caffe
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    caffe.set_mode_cpu()
    where = str(Path(caffe.__file__).resolve())
    if not where.startswith(str(Path(args.prefix).resolve())):
        raise SystemExit(f"bench_train worker: imported caffe from {where}, not {args.prefix}")
    solver = caffe.SGDSolver(args.solver)
    net = solver.net
    net.copy_from(args.init)
    if args.nudge:
        # every weight times (1 + nudge * N(0, 1)): a float32-rounding-sized perturbation
        rng = np.random.default_rng(1)
        for blobs in net.params.values():
            for blob in blobs:
                blob.data[...] *= (1 + args.nudge * rng.standard_normal(blob.data.shape)
                                   ).astype(np.float32)
    sp = text_format.Parse(Path(args.solver).read_text(), caffe_pb2.SolverParameter())
    net_param = text_format.Parse(Path(sp.net).read_text(), caffe_pb2.NetParameter())
    outputs = list(net.outputs)
    curve, times = [], []
    for it in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        solver.step(1)
        dt = time.perf_counter() - t0
        curve.append({o: float(np.asarray(net.blobs[o].data).ravel()[0]) for o in outputs})
        if it >= args.warmup:
            times.append(dt)
    by_name = {l.name: l for l in net_param.layer}
    kinds = [layer_kind(by_name[name]) if name in by_name else net.layers[i].type
             for i, name in enumerate(net._layer_names)]
    units = timing_units(kinds, getattr(net, "_fused_chains", []))
    per_layer: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.layer_passes):
        sums: dict[str, float] = defaultdict(float)
        for first, last, kind in units:
            t0 = time.perf_counter()
            net._forward(first, last)
            sums[kind] += time.perf_counter() - t0
        for first, last, kind in reversed(units):
            t0 = time.perf_counter()
            net._backward(last, first)
            sums[kind] += time.perf_counter() - t0
        for k, v in sums.items():
            per_layer[k].append(v)
    result = {"caffe": where, "times": times, "curve": curve,
              "per_layer": {k: statistics.median(v) for k, v in per_layer.items()},
              "forward_flops": forward_flops(net, net_param),
              "batch": int(net.blobs["data"].data.shape[0])}
    Path(args.result).write_text(json.dumps(result))
    return 0


# --- main process -------------------------------------------------------------------------------

def measure_sgemm(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 size x size matrix multiply rate of numpy's BLAS, GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def stock_prefix(log) -> str:
    """The stock build's prefix, building it first if the cache lacks it."""
    log("stock Caffe: scripts/setup.sh --stock-caffe (builds once, about 7 minutes on 2 cores)")
    out = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--stock-caffe"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_train: building stock Caffe failed:\n{out.stderr}{out.stdout}")
    return out.stdout.strip().splitlines()[-1]


def patched_prefix() -> str:
    marker = REPO / ".venv" / ".rmnet-caffe-prefix"
    if not marker.exists():
        raise SystemExit(f"bench_train: {marker} not found: run make setup first")
    return marker.read_text().strip()


def run_worker(build: str, prefix: str, solver: str, init: str, steps: int, warmup: int,
               layer_passes: int, tmp: Path, threads: int | None = None,
               nudge: float = 0.0) -> dict:
    result = tmp / f"result_{build}_{time.monotonic_ns()}.json"
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(prefix) / "lib" / "python3" / "dist-packages"), str(REPO)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["LD_LIBRARY_PATH"] = str(Path(prefix) / "lib")
    cmd = [sys.executable, "-m", "commands.bench_train", "--worker", "--prefix", prefix,
           "--solver", solver, "--init", init, "--result", str(result), "--steps", str(steps),
           "--warmup", str(warmup), "--layer-passes", str(layer_passes), "--nudge", str(nudge)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_train: the {build} worker failed ({prefix}):\n"
                         f"{out.stderr[-4000:]}")
    return json.loads(result.read_text())


def curve_deviation(a: list[dict], b: list[dict]) -> list[float]:
    """Per iteration: the largest relative difference over the loss outputs."""
    out = []
    for x, y in zip(a, b):
        out.append(max(abs(x[k] - y[k]) / max(abs(x[k]), abs(y[k]), 1e-12) for k in x))
    return out


ELEMENTWISE_TYPES = ("BatchNorm", "Scale", "ELU", "Dropout", "Eltwise")


def elementwise_time(per_layer: dict[str, float]) -> float:
    """The per-type times of BatchNorm, Scale, ELU, Dropout and Eltwise layers, fused or not:
    the part of the step that the two builds split differently into rows."""
    return sum(v for k, v in per_layer.items() if any(t in k for t in ELEMENTWISE_TYPES))


def report(data: dict) -> str:
    s, p = data["stock"], data["patched"]
    lines = [
        f"RMNet light train step, batch {data['batch']}, {data['input']}, CPU Caffe on "
        f"{data['cores']} cores ({data['cpu']}), {data['date']}; load average before: "
        f"{data['load_before']}, after: {data['load_after']}",
        f"median of {len(s['times'])} timed iterations per build ({data['rounds']} alternating "
        f"rounds of {data['steps']} after {data['warmup']} warm-up), solver.step(1) each, "
        "dropout on",
        "",
        f"{'':28s}{'stock':>12s}{'patched':>12s}",
        f"{'ms / iteration':28s}{s['ms']:12.1f}{p['ms']:12.1f}",
        f"{'speed-up (stock / patched)':28s}{'':12s}{data['speedup']:11.2f}x",
        f"{'GFLOP/s (conv + fc, x3)':28s}{s['gflops']:12.2f}{p['gflops']:12.2f}",
        f"{'share of SGEMM bound':28s}{100 * s['sgemm_share']:11.1f}%{100 * p['sgemm_share']:11.1f}%",
        f"{'hours for 150k iterations':28s}{s['hours_150k']:12.1f}{p['hours_150k']:12.1f}",
        f"{'core-hours for 150k':28s}{s['core_hours_150k']:12.1f}{p['core_hours_150k']:12.1f}",
        "",
        f"SGEMM (numpy float32 2048^2, best of 5, measured {len(data['sgemm_runs'])} times in this "
        f"run): {data['sgemm_gflops']:.1f} GFLOP/s; step = {data['step_gflop']:.1f} GFLOP "
        "(3 x forward of convolutions and inner products)",
        "",
        "forward + backward per layer type (ms, median of layer-by-layer passes):",
        f"  {'layer type':34s}{'stock':>10s}{'patched':>10s}{'ratio':>8s}",
    ]
    kinds = sorted(set(s["per_layer"]) | set(p["per_layer"]),
                   key=lambda k: -s["per_layer"].get(k, 0))
    for k in kinds:
        a, b = 1e3 * s["per_layer"].get(k, 0), 1e3 * p["per_layer"].get(k, 0)
        ratio = f"{a / b:7.1f}x" if a and b else ""
        lines.append(f"  {k:34s}{a:10.1f}{b:10.1f}{ratio:>8s}")
    lines.append(f"  {'sum':34s}{1e3 * sum(s['per_layer'].values()):10.1f}"
                 f"{1e3 * sum(p['per_layer'].values()):10.1f}")
    a, b = 1e3 * elementwise_time(s["per_layer"]), 1e3 * elementwise_time(p["per_layer"])
    ratio = f"{a / b:7.1f}x" if a and b else ""
    lines.append(f"  {'of which BN/Scale/ELU/Drop/Eltwise':34s}{a:10.1f}{b:10.1f}{ratio:>8s}")
    lines += ["", f"loss curve, first {len(data['curve_stock'])} iterations from the same weights "
              f"and batches ({data['curve_note']}):",
              f"  {'iter':>4s}  {'stock total':>12s}  {'patched total':>13s}  {'max rel. diff':>13s}"
              f"  {'noise':>9s}"]
    for i, (a, b, d, n) in enumerate(zip(data["curve_stock"], data["curve_patched"],
                                         data["curve_rel_diff"], data["curve_noise"])):
        lines.append(f"  {i:4d}  {sum(a.values()):12.6f}  {sum(b.values()):13.6f}  {d:13.2e}"
                     f"  {n:9.2e}")
    lines.append(f"  noise: the patched build against itself from the same weights times "
                 f"(1 + {NUDGE:g} N(0, 1)), i.e. how far float32 rounding alone moves the curve")
    return "\n".join(lines) + "\n"


@command("bench_train")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating stock/patched rounds")
    ap.add_argument("--steps", type=int, default=6, help="timed iterations per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first iterations per round")
    ap.add_argument("--layer-passes", type=int, default=2,
                    help="layer-by-layer forward+backward passes per round (per-type times)")
    ap.add_argument("--data", type=Path, help="a Market-1501 layout (default: synthetic)")
    ap.add_argument("--curve-iters", type=int, default=8,
                    help="iterations of the loss-curve comparison")
    ap.add_argument("--curve-dropout", action="store_true",
                    help="keep dropout on for the loss-curve comparison too")
    ap.add_argument("--curve-mining", action="store_true",
                    help="keep hard-sample mining on for the loss-curve comparison too")
    ap.add_argument("--threads", type=int,
                    help="OpenMP and OpenBLAS threads of both builds (default: their own)")
    ap.add_argument("--stock-prefix", help="a stock Caffe build (default: setup.sh --stock-caffe)")
    ap.add_argument("--patched-prefix", help="the patched build (default: the venv's)")
    ap.add_argument("--out", type=Path, help="write bench-train.txt and bench-train.json here")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--solver", help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--nudge", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    for name in ("batch", "rounds", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    check_output(args.out, "--out", folder=True)

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    stock = args.stock_prefix or stock_prefix(log)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    patched = args.patched_prefix or patched_prefix()
    log(f"stock build {stock}\npatched build {patched}")
    runs: dict[str, list[dict]] = {"stock": [], "patched": []}
    sgemm_runs = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp_name:
        tmp = Path(tmp_name)
        # Timed runs: dropout on (the variant's switch-off is far beyond the iterations run).
        # The loss curve: dropout off from iteration 0 (the builds draw masks differently).
        time_files = prepare(tmp / "time", args.data, args.batch, None, True, log)
        curve_files = prepare(tmp / "curve", args.data or tmp / "time" / "market", args.batch,
                              None if args.curve_dropout else 0, args.curve_mining, log)
        curves = {}
        for build, prefix in (("stock", stock), ("patched", patched)):
            log(f"loss curve: {build}, {args.curve_iters} iterations")
            curves[build] = run_worker(build, prefix, curve_files[build], curve_files["init"],
                                       args.curve_iters, 0, 0, tmp, args.threads)["curve"]
        log(f"loss curve: patched from nudged weights (noise floor), {args.curve_iters} iterations")
        curves["noise"] = run_worker("patched", patched, curve_files["patched"],
                                     curve_files["init"], args.curve_iters, 0, 0, tmp,
                                     args.threads, nudge=NUDGE)["curve"]
        for r in range(args.rounds):
            sgemm_runs.append(measure_sgemm())
            for build, prefix in (("stock", stock), ("patched", patched)):
                log(f"round {r + 1}/{args.rounds}: {build}")
                runs[build].append(run_worker(build, prefix, time_files[build], time_files["init"],
                                              args.steps, args.warmup, args.layer_passes, tmp,
                                              args.threads))
                log(f"  {1e3 * statistics.median(runs[build][-1]['times']):.0f} ms/iteration")
    cores = args.threads or os.cpu_count() or 1
    sgemm = statistics.median(sgemm_runs)
    first = runs["stock"][0]
    step_flop = 3 * first["forward_flops"]
    data = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
            "cores": cores, "batch": first["batch"], "input": "160x64",
            "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
            "sgemm_runs": sgemm_runs, "sgemm_gflops": sgemm, "step_gflop": step_flop / 1e9,
            "builds": {"stock": stock, "patched": patched}, "load_before": load_before,
            "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "threads": args.threads}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                data["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for build in ("stock", "patched"):
        times = [t for r in runs[build] for t in r["times"]]
        ms = 1e3 * statistics.median(times)
        per_layer: dict[str, list[float]] = defaultdict(list)
        for r in runs[build]:
            for k, v in r["per_layer"].items():
                per_layer[k].append(v)
        gflops = step_flop / (ms / 1e3) / 1e9
        data[build] = {"ms": ms, "times": times, "gflops": gflops, "sgemm_share": gflops / sgemm,
                       "hours_150k": ms * PAPER_ITERS / 3.6e6,
                       "core_hours_150k": ms * PAPER_ITERS / 3.6e6 * cores,
                       "per_layer": {k: statistics.median(v) for k, v in per_layer.items()}}
    data["speedup"] = data["stock"]["ms"] / data["patched"]["ms"]
    data["curve_stock"] = curves["stock"]
    data["curve_patched"] = curves["patched"]
    data["curve_rel_diff"] = curve_deviation(data["curve_stock"], data["curve_patched"])
    data["curve_noise"] = curve_deviation(data["curve_patched"], curves["noise"])
    data["curve_note"] = ", ".join([
        "dropout on in both, masks differ" if args.curve_dropout
        else "dropout switched off from iteration 0 in both",
        "mining on" if args.curve_mining else "mining off"])
    text = report(data)
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "bench-train.txt", text)
        atomic_write_text(args.out / "bench-train.json", json.dumps(data, indent=1) + "\n")
        log(f"wrote {args.out / 'bench-train.txt'} and bench-train.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
