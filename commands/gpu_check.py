#!/usr/bin/env python3
"""Check the CUDA Caffe on a machine with a GPU, after `make setup GPU=1`:

    .venv-gpu/bin/python tools/gpu_check.py [--report DIR] [--budget-min 6] [--device 0]

The checks, in this order (the first two always run; the others are optional parts, skipped,
saying so, when what is left of --budget-min would not hold them):

1. layers light: every blob's value and gradient and every parameter gradient of the light
   train net, one forward and backward on the GPU against the CPU from the same weights and
   inputs, within float32 tolerance (training.gpucheck);
2. fd: the native layer types of the train nets, gradients on the GPU against finite
   differences;
3. training: the light net on a small synthetic dataset for --iters (50) iterations at
   --batch-size (32), once on the CPU and once on the GPU, from the same initial weights and
   batches; the loss curves must match (first loss within 1%, last five logged losses within
   10% on average: mining feeds the losses back, so batches drift apart a little);
4. speed: training images/s of the light net at --speed-batch (64) on the GPU
   (--speed-iters iterations) beside the CPU's on the same net and batch
   (--speed-cpu-iters, fewer: the CPU is what costs time), and their ratio;
5. layers strong: check 1 for the strong train net;
6. nccl: two ranks (tools/train.py --gpus) for --iters iterations; the learnt weights of the
   ranks must be identical. NCCL 2.x refuses two ranks of one communicator on one device, so
   on a one-GPU machine (or a Caffe built without NCCL) it is skipped, saying why.

--report DIR writes gpu_check-<UTC time>.json there (a new name each run): every check's
status, reason, numbers (differences and tolerances, loss curves, images/s, wall times), the
device, driver and CUDA versions, the Caffe build, the commit. It is written when the run
starts and after every check, so a run stopped midway still leaves it (status "running" and
the check it was in), and when there is no GPU.

The last line is one summary. Exit status: 0 all checks that ran passed, 1 a check failed (or
raised: its traceback is in the report), 2 bad usage, 3 no GPU (no driver, no device, or a
CPU-only Caffe): that is said in one line on stderr, before Caffe could abort.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from commands.errors import command
from rmnet.atomic import check_output
from rmnet.paths import REPO
from training.gpucheck_report import (CheckResult, Report, budget_decision, failed_check,
                                      run_estimate_s, summary_line, verdict_of)

os.environ.setdefault("GLOG_minloglevel", "2")

# Seconds each optional part may need on one H100 with 16 cores: what the budget rule compares
# with the time left. The CPU halves are most of it: their work measured on one thread here
# (results/2026-12-07/gpu-check-cpu-costs.txt, CPU seconds) doubled for the GPU halves and
# start-ups, then doubled again as a margin; nccl (no CPU half) two GPU training runs' worth.
# The speed part is re-estimated from the training check's own start-up and images/s.
ESTIMATE_S = {"training": 120.0, "speed": 90.0, "layers strong": 30.0, "nccl": 60.0}


@dataclass
class Check:
    name: str
    run: Callable[[], CheckResult]
    optional: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", type=int, default=0, help="CUDA device (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check",
                    help="work folder: dataset, nets, logs (default: %(default)s)")
    ap.add_argument("--report", type=Path, default=None, metavar="DIR",
                    help="write the JSON report into this folder (created if missing; a new "
                         "gpu_check-<UTC time>.json each run)")
    ap.add_argument("--budget-min", type=float, default=6.0, metavar="MIN",
                    help="minutes for the whole run: optional checks that would not fit in "
                         "what is left are skipped, saying so (0: no limit; default: "
                         "%(default)s)")
    ap.add_argument("--iters", type=int, default=50,
                    help="training iterations of the loss-curve and NCCL checks (default: 50)")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="batch of the loss-curve and NCCL checks (default: %(default)s)")
    ap.add_argument("--speed-batch", type=int, default=64,
                    help="batch of the speed check (default: %(default)s)")
    ap.add_argument("--speed-iters", type=int, default=100,
                    help="GPU iterations of the speed check (default: %(default)s)")
    ap.add_argument("--speed-cpu-iters", type=int, default=20,
                    help="CPU iterations of the speed check (default: %(default)s)")
    ap.add_argument("--cpu-costs", action="store_true",
                    help="no GPU needed: time the CPU half of each check on this machine and "
                         "print it (what the budget's estimates come from)")
    args = ap.parse_args(argv)
    if args.device < 0:
        ap.error("--device must be >= 0")
    if args.iters < 10:
        ap.error("--iters must be >= 10")
    for flag, value in (("--batch-size", args.batch_size), ("--speed-batch", args.speed_batch)):
        if value < 8 or value % 4:
            ap.error(f"{flag} must be a multiple of 4, >= 8")
    if args.speed_iters < 20:
        ap.error("--speed-iters must be >= 20")
    if args.speed_cpu_iters < 5:
        ap.error("--speed-cpu-iters must be >= 5")
    if not args.budget_min >= 0:              # also refuses nan
        ap.error("--budget-min must be >= 0 (0: no limit)")
    check_output(args.out, "--out", folder=True)
    check_output(args.report, "--report", folder=True)
    return args


@command("gpu_check")
def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    args = parse_args(argv)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = Report.start(args.report, sys.argv[1:] if argv is None else list(argv), settings,
                          REPO)
    try:
        return cpu_costs(args, report) if args.cpu_costs else run_checks(args, report, t0)
    except BaseException as e:   # the report says how the run ended, whatever ended it
        broken = failed_check(report.data.get("running") or "gpu_check", e,
                              time.monotonic() - t0)
        line = f"gpu_check: ERROR {broken.reason}" + (f"; report {report.path}"
                                                      if report.path else "")
        if report.data["status"] == "running":
            report.finish("error", line, error={"check": broken.name, "reason": broken.reason,
                                                "traceback": broken.traceback})
        if not isinstance(e, Exception):       # Ctrl-C, SystemExit: they go on
            raise
        print(broken.traceback, file=sys.stderr, end="", flush=True)
        print(line, flush=True)
        return 1


def run_checks(args: argparse.Namespace, report, t0: float) -> int:
    from rmnet.caffe.gpu import (NoGPUError, check_gpu_ids, cuda_versions, device_info,
                                 gpu_status)

    status = gpu_status()
    try:
        check_gpu_ids([args.device], status)
    except NoGPUError as e:
        report.update(gpu=gpu_section(status), caffe=caffe_section())
        line = summary_line("no-gpu", [], report.path, 0, str(e).removeprefix("no GPU: "))
        code = report.finish("no-gpu", line)
        print(line, file=sys.stderr)
        return code
    assert status.cudart is not None
    info = dict(count=status.count, **cuda_versions(status.cudart),
                device=device_info(status.cudart, args.device))
    report.update(gpu=info, caffe=caffe_section())
    dev = info["device"]
    print(f"gpu_check: GPU {args.device} ({dev['name']}, compute {dev['compute_capability']}) "
          f"of {status.count}; CUDA runtime {info['cuda_runtime_version']}, driver "
          f"{info['nvidia_driver_version']} (CUDA {info['cuda_driver_version']}); "
          f"report {report.path}", flush=True)

    budget_s = args.budget_min * 60 or None
    context: dict = {}
    checks = [Check("layers light", lambda: check_layers("light", args.device), False),
              Check("fd", lambda: check_gradients(args.device), False),
              Check("training", lambda: check_training(args, context), True),
              Check("speed", lambda: check_speed(args, context), True),
              Check("layers strong", lambda: check_layers("strong", args.device), True),
              Check("nccl", lambda: check_nccl(args, status.count, context), True)]
    results = []
    for i, check in enumerate(checks, 1):
        t = time.monotonic()
        estimate = context.get("estimate", {}).get(check.name, ESTIMATE_S.get(check.name, 0.0))
        skip = budget_decision(t - t0, budget_s, estimate, check.optional)
        if skip is not None:
            result = CheckResult(check.name, "skip", skip, {"estimate_s": round(estimate)},
                                 short=f"{check.name}: skipped, budget")
        else:
            print(f"[{i}/{len(checks)}] {check.name} ...", flush=True)
            report.running(check.name)
            try:
                result = check.run()
            except Exception as e:    # a check that breaks is a failed check, in the report
                result = failed_check(check.name, e, 0.0)
                print(result.traceback, file=sys.stderr, end="", flush=True)
        result.wall_s = round(time.monotonic() - t, 1)
        results.append(result)
        report.add(result)
        print(f"[{i}/{len(checks)}] {check.name}: {result.status.upper()} "
              f"({result.wall_s:.0f} s) {result.reason}", flush=True)
    verdict = verdict_of(results)
    line = summary_line(verdict, results, report.path, time.monotonic() - t0)
    code = report.finish(verdict, line)
    print(line, flush=True)
    return code


def cpu_costs(args: argparse.Namespace, report) -> int:
    """The CPU halves of the checks, timed on this machine: layers (both passes on the CPU, an
    upper bound), finite differences, the training check's CPU run, the speed check's CPU run
    with its images/s. Each with its wall and CPU seconds (this process and its Caffe runs):
    on a busy machine the CPU seconds are the steadier measure of the work. The report holds
    them as checks of their own."""
    from training.gpucheck import NATIVE_CASES, compare_modes, finite_difference, images_per_second

    context: dict = {}
    print(f"gpu_check --cpu-costs: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"training {args.iters} iterations at batch {args.batch_size}, speed "
          f"{args.speed_cpu_iters} at batch {args.speed_batch}", flush=True)

    def speed() -> dict:
        log, _ = train(args, context, "speed_cpu", args.speed_cpu_iters, args.speed_batch, None,
                       no_test=True)
        ips = images_per_second(log, args.speed_batch, skip=2)
        return {"images_per_s_cpu": ips, "step_s_cpu": args.speed_batch / ips if ips else None}

    def training() -> dict:
        log, _ = train(args, context, "run", args.iters, args.batch_size, None)
        ips = images_per_second(log, args.batch_size)
        return {"images_per_s_cpu": ips, "step_s_cpu": args.batch_size / ips if ips else None}

    def layers(variant: str) -> dict:
        compare_modes(REPO / "prototxt" / variant / "train.prototxt", ("cpu", "cpu"))
        return {}

    def fd() -> dict:
        for case in NATIVE_CASES:
            finite_difference(case, "cpu")
        return {}

    def prepare() -> dict:
        prepare_data(args, context)
        return {}

    parts = [("prepare", prepare), ("layers light", lambda: layers("light")), ("fd", fd),
             ("training", training), ("speed", speed), ("layers strong", lambda: layers("strong"))]
    def cpu_seconds() -> float:      # user + system time of this process and its Caffe runs
        return sum(r.ru_utime + r.ru_stime for r in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN)))

    results = []
    for name, fn in parts:
        t, c = time.monotonic(), cpu_seconds()
        report.running(name)
        numbers = fn()
        wall, cpu = round(time.monotonic() - t, 1), round(cpu_seconds() - c, 1)
        numbers.update(cpu_s=cpu, load_1min=round(os.getloadavg()[0], 1))
        result = CheckResult(name, "pass", f"CPU half: {wall:.1f} s wall, {cpu:.1f} s CPU",
                             numbers, wall_s=wall, short=f"{name} {wall:.0f} s ({cpu:.0f} s CPU)")
        results.append(result)
        report.add(result)
        rate = (f" ({numbers['images_per_s_cpu']:.1f} images/s, "
                f"{numbers['step_s_cpu']:.2f} s a step)" if numbers.get("images_per_s_cpu") else "")
        print(f"cpu-costs: {name}: {wall:.1f} s wall, {cpu:.1f} s CPU{rate}, load "
              f"{numbers['load_1min']}", flush=True)
    line = summary_line("pass", results, report.path, sum(r.wall_s for r in results))
    code = report.finish("pass", line.replace("gpu_check: PASS", "gpu_check --cpu-costs:", 1))
    print(report.data["summary"], flush=True)
    return code


def gpu_section(status) -> dict:
    """The report's "gpu" entry without a usable device: why, and what CUDA there is."""
    from rmnet.caffe.gpu import cuda_versions

    out = {"count": status.count, "reason": status.reason}
    if status.cudart is not None:
        out.update(cuda_versions(status.cudart))
    return out


def caffe_section() -> dict:
    """The Caffe build: pycaffe's module, CUDA or not, NCCL or not, the caffe binary."""
    from rmnet.caffe.gpu import loaded_cudart

    try:
        import caffe
    except ImportError as e:
        return {"importable": False, "reason": str(e)}
    from training.run import TrainingError, caffe_binary

    try:
        binary = caffe_binary()
    except TrainingError as e:
        binary = f"none: {e}"
    has_nccl = getattr(caffe, "has_nccl", None)
    return {"importable": True, "module": getattr(caffe, "__file__", None),
            "version": getattr(caffe, "__version__", None),
            "cuda": loaded_cudart() is not None,
            "has_nccl": bool(has_nccl()) if callable(has_nccl) else False,
            "binary": binary}


# --- the checks ---------------------------------------------------------------------------------

def check_layers(variant: str, device: int) -> CheckResult:
    from training.gpucheck import BACKWARD_TOL, FORWARD_TOL, compare_modes

    diffs = compare_modes(REPO / "prototxt" / variant / "train.prototxt", ("cpu", "gpu"),
                          device=device)
    bad = [d for d in diffs if not d.ok]
    worst = max(diffs, key=lambda d: d.error / d.tolerance)
    numbers = {"compared": len(diffs), "outside_tolerance": len(bad),
               "tolerance_forward": FORWARD_TOL, "tolerance_backward": BACKWARD_TOL,
               "worst": {"what": worst.what, "name": worst.name, "rel_error": worst.error,
                         "abs_error": worst.abs_error, "tolerance": worst.tolerance},
               "bad": [{"what": d.what, "name": d.name, "rel_error": d.error,
                        "abs_error": d.abs_error} for d in bad[:20]]}
    for what in ("value", "gradient", "param gradient"):
        mine = [d for d in diffs if d.what == what]
        key = what.replace(" ", "_")
        numbers[f"max_rel_error_{key}"] = max((d.error for d in mine), default=0.0)
        numbers[f"max_abs_diff_{key}"] = max((d.abs_error for d in mine), default=0.0)
    detail = (f"{len(diffs)} blobs/gradients compared, worst {worst.what} {worst.name} "
              f"{worst.error:.2e} (tolerance {worst.tolerance:.0e})")
    name = f"layers {variant}"
    if bad:
        return CheckResult(name, "fail", f"{len(bad)} outside tolerance, e.g. " + ", ".join(
            f"{d.what} {d.name} {d.error:.2e}" for d in bad[:3]) + "; " + detail, numbers,
            short=f"{name}: {len(bad)} blobs differ")
    return CheckResult(name, "pass", detail, numbers, short=name)


def check_gradients(device: int) -> CheckResult:
    from training.gpucheck import FD_TOL, NATIVE_CASES, finite_difference

    res = [finite_difference(c, "gpu", device) for c in NATIVE_CASES]
    bad = [r for r in res if not r.ok]
    detail = ", ".join(f"{r.case} {r.error:.1e}" for r in res) + f" (tolerance {FD_TOL:.0e})"
    numbers = {"tolerance": FD_TOL,
               "cases": {r.case: {"rel_error": r.error, "checked": r.checked} for r in res}}
    short = "fd" if not bad else f"fd: {', '.join(r.case for r in bad)} off"
    return CheckResult("fd", "fail" if bad else "pass", detail, numbers, short=short)


def prepare_data(args, context: dict) -> dict:
    """The synthetic dataset and the initial weights every training check starts from."""
    if "root" in context:
        return context
    from rmnet.data.synthetic import SyntheticConfig, generate
    from training.run import init_weights, prepare_run

    out = args.out.resolve()
    root = out / "synthetic"
    if not (root / "synthetic.json").is_file():
        generate(root, SyntheticConfig(train_ids=32, test_ids=16, seed=0),
                 overwrite=root.exists())
    paths = prepare_run("light", root, out / "run", args.iters, args.batch_size,
                        log=lambda m: None)
    init = paths["solver"].parent / "init.caffemodel"
    init_weights(paths["deploy"], init, seed=0, log=lambda m: None)
    context.update(root=root, paths=paths, init=init)
    return context


def train(args, context: dict, name: str, iters: int, batch: int, device: int | None,
          no_test: bool = False) -> tuple[Path, float]:
    """``iters`` iterations of the light net at ``batch`` from the shared initial weights, on
    ``device`` (None: the CPU); (its log, wall seconds)."""
    from training.run import prepare_run, run_caffe_train

    ctx = prepare_data(args, context)
    if (iters, batch) == (args.iters, args.batch_size) and not no_test:
        solver = ctx["paths"]["solver"]
    else:   # its own run folder: the solver's schedule follows the iterations
        # no_test: no test phase and no snapshot until the end, nothing but training steps
        extra = {"solver": {"test_interval": iters + 1, "snapshot": iters}} if no_test else None
        solver = prepare_run("light", ctx["root"], args.out.resolve() / name, iters, batch,
                             extra=extra, log=lambda m: None)["solver"]
    log = solver.parent / f"train_{'cpu' if device is None else 'gpu'}.log"
    t = time.monotonic()
    run_caffe_train(solver, log, weights=str(ctx["init"]), max_iter=iters, gpu=device,
                    echo=lambda m: print("   " + m, flush=True), every=30)
    return log, time.monotonic() - t


def check_training(args, context: dict) -> CheckResult:
    from training.gpucheck import curve_agreement, curves_match, images_per_second, loss_curve

    runs = {mode: train(args, context, "run", args.iters, args.batch_size,
                        args.device if mode == "gpu" else None) for mode in ("gpu", "cpu")}
    curves = {mode: loss_curve(log) for mode, (log, _) in runs.items()}
    ok, detail = curves_match(curves["cpu"], curves["gpu"])
    _, numbers = curve_agreement(curves["cpu"], curves["gpu"])
    numbers.update(iters=args.iters, batch=args.batch_size,
                   wall_s_cpu=round(runs["cpu"][1], 1), wall_s_gpu=round(runs["gpu"][1], 1),
                   curve_cpu=curves["cpu"], curve_gpu=curves["gpu"])
    # the speed check's time, from this check's measured start-up and images/s
    images = args.iters * args.batch_size
    context.setdefault("estimate", {})["speed"] = sum(
        run_estimate_s(runs[mode][1], images, images_per_second(runs[mode][0], args.batch_size),
                       args.speed_batch * (args.speed_cpu_iters if mode == "cpu" else
                                           args.speed_iters)) for mode in runs)
    short = (f"training {args.iters} it: loss " + ("matches" if ok else "differs"))
    return CheckResult("training", "pass" if ok else "fail", detail, numbers, short=short)


def check_speed(args, context: dict) -> CheckResult:
    from training.gpucheck import images_per_second

    gpu_log, gpu_s = train(args, context, "speed_gpu", args.speed_iters, args.speed_batch,
                           args.device, no_test=True)
    cpu_log, cpu_s = train(args, context, "speed_cpu", args.speed_cpu_iters, args.speed_batch,
                           None, no_test=True)
    # start-up excluded: from the 5th logged iteration on the GPU (display every few
    # iterations), from the 2nd on the CPU (display every iteration)
    gpu = images_per_second(gpu_log, args.speed_batch, skip=4)
    cpu = images_per_second(cpu_log, args.speed_batch, skip=2)
    numbers = {"batch": args.speed_batch, "iters_gpu": args.speed_iters,
               "iters_cpu": args.speed_cpu_iters, "images_per_s_gpu": gpu,
               "images_per_s_cpu": cpu, "step_s_gpu": args.speed_batch / gpu if gpu else None,
               "step_s_cpu": args.speed_batch / cpu if cpu else None,
               "ratio": gpu / cpu if gpu and cpu else None,
               "wall_s_gpu": round(gpu_s, 1), "wall_s_cpu": round(cpu_s, 1)}
    if not gpu or not cpu:
        return CheckResult("speed", "fail", "no timing in a training log "
                           f"({gpu_log if not gpu else cpu_log})", numbers,
                           short="speed: no timing")
    detail = (f"light net, batch {args.speed_batch}: {gpu:.0f} images/s on the GPU, "
              f"{cpu:.1f} on the CPU ({gpu / cpu:.1f}x; CPU step {args.speed_batch / cpu:.2f} s)")
    ratio = f"{gpu / cpu:.0f}x" if gpu / cpu >= 10 else f"{gpu / cpu:.1f}x"
    return CheckResult("speed", "pass", detail, numbers,
                       short=f"{gpu:.0f} img/s GPU vs {cpu:.0f} img/s CPU = {ratio}")


def check_nccl(args, count: int, context: dict) -> CheckResult:
    import caffe

    if count < 2:
        return CheckResult("nccl", "skip", (
            f"one GPU ({count} visible): NCCL 2.x refuses two ranks of one communicator on "
            f"the same device (\"Duplicate GPU detected\"); run on a machine with two"),
            {"gpus_visible": count}, short="nccl: skipped, one GPU")
    if not caffe.has_nccl():
        return CheckResult("nccl", "skip", "this Caffe is built without NCCL (USE_NCCL=OFF)",
                           {"gpus_visible": count}, short="nccl: skipped, no NCCL")
    from training.gpucheck import compare_caffemodels
    from training.multigpu import run_multi_gpu

    ctx = prepare_data(args, context)
    solver, init = ctx["paths"]["solver"], ctx["init"]
    gpus = [args.device, next(i for i in range(count) if i != args.device)]
    weights_dir = solver.parent / "nccl_weights"
    weights_dir.mkdir(exist_ok=True)
    run_multi_gpu(solver, gpus, solver.parent / "train_nccl.log", weights=str(init),
                  max_iter=args.iters, save_weights_dir=weights_dir,
                  echo=lambda m: print("   " + m, flush=True), every=30)
    worst, n, skipped = compare_caffemodels(weights_dir / "rank0.caffemodel",
                                            weights_dir / "rank1.caffemodel",
                                            prototxt=ctx["paths"]["train"])
    ok = worst <= 1e-6 and n > 0
    numbers = {"gpus": gpus, "gpus_visible": count, "layers_compared": n,
               "max_abs_diff": worst, "tolerance": 1e-6, "batchnorm_layers_skipped": len(skipped)}
    detail = (f"GPUs {gpus}: {n} layers' learnt weights, largest difference across ranks "
              f"{worst:.1e} ({len(skipped)} BatchNorm layers keep per-rank statistics)")
    return CheckResult("nccl", "pass" if ok else "fail", detail, numbers,
                       short="nccl two ranks" + ("" if ok else ": ranks differ"))


if __name__ == "__main__":
    sys.exit(main())
