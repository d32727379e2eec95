#!/usr/bin/env python3
"""Check the CUDA Caffe on a machine with a GPU, after `make setup GPU=1`:

    .venv-gpu/bin/python tools/gpu_check.py [--device 0] [--out runs/gpu_check]

1. layers, light and strong train nets: one forward and backward on the GPU against the CPU
   from the same weights and inputs; every blob's values and gradients and every parameter
   gradient must agree to float32 tolerance (training.gpucheck);
2. the native layer types of those nets: gradients on the GPU against finite differences;
3. training: the light net on a small synthetic dataset for --iters (50) iterations, once on
   the CPU and once on the GPU, from the same initial weights and batches; the loss curves must
   match (first loss within 1%, last five logged losses within 10% on average: mining feeds
   the losses back, so batches drift apart a little); training images/s of both are printed;
4. NCCL: the same training with two ranks (tools/train.py --gpus); the learnt weights of the
   two ranks must be identical at the end. NCCL 2.x refuses two ranks of one communicator on one
   device, so on a one-GPU machine this check is skipped, saying so.

Runs in a few minutes on one GPU (the CPU half of check 3 is most of it). The last line is one
summary. Exit status: 0 all passed, 1 a check failed, 2 bad usage, 3 no GPU (no driver, no
device, or a CPU-only Caffe): that is said in one line, before Caffe could abort.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from rmnet.atomic import check_output
from commands.errors import command
from rmnet.paths import REPO

os.environ.setdefault("GLOG_minloglevel", "2")


@command("gpu_check")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", type=int, default=0, help="CUDA device (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check",
                    help="work folder (default: %(default)s)")
    ap.add_argument("--iters", type=int, default=50, help="training iterations (default: 50)")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch (default: 32)")
    args = ap.parse_args(argv)
    check_output(args.out, "--out", folder=True)
    if args.device < 0:
        ap.error("--device must be >= 0")
    if args.iters < 10:
        ap.error("--iters must be >= 10")
    if args.batch_size < 8 or args.batch_size % 4:
        ap.error("--batch-size must be a multiple of 4, >= 8")

    from rmnet.caffe.gpu import NO_GPU_EXIT, NoGPUError, device_name, require_gpus
    try:
        status = require_gpus([args.device])
    except NoGPUError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return NO_GPU_EXIT
    assert status.cudart is not None
    name = device_name(status.cudart, args.device)
    print(f"gpu_check: GPU {args.device} ({name}) of {status.count}; {status.cudart}", flush=True)

    t0 = time.monotonic()
    results: list[tuple[str, str, str]] = []     # (check, PASS/FAIL/SKIP, detail)
    context: dict = {}
    checks = [("layers light", lambda: check_layers("light", args.device)),
              ("layers strong", lambda: check_layers("strong", args.device)),
              ("finite differences", lambda: check_gradients(args.device)),
              ("training CPU vs GPU", lambda: check_training(args, context)),
              ("NCCL two ranks", lambda: check_nccl(args, status.count, context))]
    for i, (label, fn) in enumerate(checks, 1):
        t = time.monotonic()
        print(f"[{i}/{len(checks)}] {label} ...", flush=True)
        try:
            verdict, detail = fn()
        except Exception as e:    # a check that breaks is a failed check, reported in one line
            verdict, detail = "FAIL", f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        results.append((label, verdict, detail))
        print(f"[{i}/{len(checks)}] {label}: {verdict} ({time.monotonic() - t:.0f} s) {detail}",
              flush=True)
    failed = [r for r in results if r[1] == "FAIL"]
    skipped = [r for r in results if r[1] == "SKIP"]
    speed = context.get("speed", "")
    verdict = "FAIL" if failed else "PASS"
    what = (f"failed: {', '.join(r[0] for r in failed)}" if failed else
            f"{len(results) - len(skipped)} checks passed" +
            (f", {len(skipped)} skipped ({', '.join(r[0] for r in skipped)})" if skipped else ""))
    print(f"gpu_check: {verdict}: {what}; {speed}{'; ' if speed else ''}GPU {args.device} "
          f"{name}; {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


def check_layers(variant: str, device: int) -> tuple[str, str]:
    from training.gpucheck import compare_modes

    diffs = compare_modes(REPO / "prototxt" / variant / "train.prototxt", ("cpu", "gpu"),
                          device=device)
    bad = [d for d in diffs if not d.ok]
    worst = max(diffs, key=lambda d: d.error / d.tolerance)
    detail = (f"{len(diffs)} blobs/gradients compared, worst {worst.what} {worst.name} "
              f"{worst.error:.2e} (tolerance {worst.tolerance:.0e})")
    if bad:
        return "FAIL", f"{len(bad)} outside tolerance, e.g. " + ", ".join(
            f"{d.what} {d.name} {d.error:.2e}" for d in bad[:3]) + "; " + detail
    return "PASS", detail


def check_gradients(device: int) -> tuple[str, str]:
    from training.gpucheck import FD_TOL, NATIVE_CASES, finite_difference

    res = [finite_difference(c, "gpu", device) for c in NATIVE_CASES]
    bad = [r for r in res if not r.ok]
    detail = ", ".join(f"{r.case} {r.error:.1e}" for r in res) + f" (tolerance {FD_TOL:.0e})"
    return ("FAIL" if bad else "PASS"), detail


def prepare_training(args, context: dict) -> dict:
    if "paths" in context:
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
    context.update(paths=paths, init=init)
    return context


def check_training(args, context: dict) -> tuple[str, str]:
    from training.gpucheck import curves_match, images_per_second, loss_curve
    from training.run import run_caffe_train

    ctx = prepare_training(args, context)
    solver, init = ctx["paths"]["solver"], ctx["init"]
    logs = {}
    for mode in ("gpu", "cpu"):
        logs[mode] = solver.parent / f"train_{mode}.log"
        run_caffe_train(solver, logs[mode], weights=str(init), max_iter=args.iters,
                        gpu=args.device if mode == "gpu" else None,
                        echo=lambda m: print("   " + m, flush=True), every=30)
    ok, detail = curves_match(loss_curve(logs["cpu"]), loss_curve(logs["gpu"]))
    speed = {m: images_per_second(logs[m], args.batch_size) for m in logs}
    if all(speed.values()):
        context["speed"] = (f"training {speed['gpu']:.0f} images/s on the GPU, "
                            f"{speed['cpu']:.1f} on the CPU ({speed['gpu'] / speed['cpu']:.1f}x)")
        detail += "; " + context["speed"]
    return ("PASS" if ok else "FAIL"), detail


def check_nccl(args, count: int, context: dict) -> tuple[str, str]:
    if count < 2:
        return "SKIP", ("one GPU: NCCL 2.x refuses two ranks of one communicator on the same "
                        "device (\"Duplicate GPU detected\"); run on a machine with two")
    from training.gpucheck import compare_caffemodels
    from training.multigpu import run_multi_gpu

    ctx = prepare_training(args, context)
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
    detail = (f"GPUs {gpus}: {n} layers' learnt weights, largest difference across ranks "
              f"{worst:.1e} ({len(skipped)} BatchNorm layers keep per-rank statistics)")
    return ("PASS" if worst <= 1e-6 and n > 0 else "FAIL"), detail


if __name__ == "__main__":
    sys.exit(main())
