#!/usr/bin/env python3
"""The project's main job (`make demo`): train the light RMNet with the paper's losses and mining
under the real `caffe train`, and show that it learnt.

    .venv/bin/python tools/demo.py                          # synthetic dataset, ~10 min on 2 cores
    .venv/bin/python tools/demo.py --data /path/to/Market-1501-layout --iters 2000
    .venv/bin/python tools/demo.py --data /path/to/cuhk03-np --format cuhk03-labeled

Steps, each printed as it runs:

1. the dataset: ``--data``, or a synthetic Market-1501-shaped one (rmnet.data.synthetic, seed 0)
   written to ``<out>/synthetic`` (reused when it is already there);
2. the run: the light variant's train/test/deploy nets and solver rendered for that dataset
   (class count = its training identities, batch ``--batch-size``) with the paper's schedule
   scaled to ``--iters`` (lr 1e-2, x0.1 at 1/3 and 2/3, dropout off at 2/3), and the initial
   caffemodel (orthogonal + MSRA, paper V.ii);
3. the untrained network scored on query/gallery (the Market-1501 protocol) of ``--data``, or of
   ``--test-data`` (another set, which may have no training split). The initial
   caffemodel has placeholder BatchNorm statistics (identity), so the real ones are first
   measured on training images; the weights are the initial ones;
4. `caffe train -solver <out>/run/solver.prototxt -weights <out>/run/init.caffemodel`;
5. the trained network scored the same way; a table of rank-1/5/10 and both mAPs, untrained vs
   trained, the training curves as a PNG, and everything in ``<out>/results.json``.

A ``--data`` without a training split (only query/ and a gallery: an evaluation set) stops at
step 1 with a message naming it (exit status 2): the demo trains; give it as ``--test-data``.
A second demo (or ``tools/train.py``) with the same ``<out>/run`` is refused while one runs.

The demo passes when the trained mAP is at least twice the untrained one (exit code 0; 1 if not).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import os
import sys
import time
from pathlib import Path

from rmnet.paths import REPO  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402

os.environ.setdefault("GLOG_minloglevel", "2")

DEFAULT_ITERS = 300
DEFAULT_BATCH = 32
MIN_RATIO = 2.0           # trained / untrained mAP that counts as "it learnt"


def evaluate(deploy: Path, weights: Path, data, desc: str, format: str | None = None) -> dict:
    """Rank-1/5/10/20, mAP (both conventions), mINP of a caffemodel on the query/gallery of
    ``data`` (a root in any format of rmnet.data.datasets, or a parsed ``Dataset``; it needs no
    training split): rmnet.eval.evaluate.evaluate_data, as every tool scores."""
    from rmnet.deploy.backends import PycaffeBackend
    from rmnet.eval.evaluate import evaluate_data

    return evaluate_data(PycaffeBackend(deploy, weights), data, format,
                         desc=desc).result.to_json()


def table(untrained: dict, trained: dict) -> str:
    rows = [("rank-1", "1"), ("rank-5", "5"), ("rank-10", "10")]
    lines = [f"{'':34s}{'untrained':>11s}{'trained':>11s}"]
    for label, k in rows:
        lines.append(f"{label:34s}{100 * untrained['cmc'][k]:10.1f}%{100 * trained['cmc'][k]:10.1f}%")
    for key, label in (("mAP", "mAP (non-interpolated, torchreid)"),
                       ("mAP_official", "mAP (official, trapezoidal)")):
        lines.append(f"{label:34s}{100 * untrained[key]:10.1f}%{100 * trained[key]:10.1f}%")
    return "\n".join(lines)


def verdict(untrained_map: float, trained_map: float, min_ratio: float) -> tuple[float, bool]:
    """(trained mAP / untrained mAP, whether it reaches ``min_ratio``). An untrained mAP of 0
    counts as 1e-12, so any learning passes."""
    ratio = trained_map / max(untrained_map, 1e-12)
    return ratio, ratio >= min_ratio


@command('demo')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="dataset folder, any format of "
                    "rmnet.data.datasets (default: synthetic)")
    ap.add_argument("--format", help="with --data: its format (default: detected)")
    ap.add_argument("--test-data", type=Path, help="score on this dataset's query/gallery "
                    "instead of --data's (any format; it needs no training split)")
    ap.add_argument("--test-format", help="with --test-data: its format (default: detected)")
    ap.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "demo")
    ap.add_argument("--seed", type=int, default=0, help="dataset and initialisation seed")
    ap.add_argument("--min-ratio", type=float, default=MIN_RATIO,
                    help="trained / untrained mAP needed to pass (exit 0; default %(default)s)")
    args = ap.parse_args(argv)
    check_output(args.out, '--out', folder=True)
    if args.iters < 3 or args.batch_size < 2:
        ap.error("--iters must be >= 3 and --batch-size >= 2")
    if args.min_ratio < 0:
        ap.error("--min-ratio must be >= 0")
    if args.test_format and args.test_data is None:
        ap.error("--test-format applies only with --test-data")

    from rmnet.data.datasets import load_dataset
    from rmnet.data.market import DatasetError
    from training.run import RunLock, TrainingError
    given = None
    try:
        if args.data is not None:   # an evaluation set: refused before the lock writes anything
            given = load_dataset(args.data.resolve(), args.format)
            if not given.has_train:
                raise DatasetError(untrainable(given))
        # one demo (or `tools/train.py --run-dir <out>/run`) at a time in an --out folder
        with RunLock(args.out.resolve() / "run" / ".train.lock"):
            return run(args, given)
    except (TrainingError, DatasetError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2


def untrainable(dataset) -> str:
    """Why the demo cannot train on ``dataset`` (it has no training split)."""
    from rmnet.data.datasets import no_train_error
    return (no_train_error(dataset, "the demo, which trains a model,") +
            "; or train on another set and score on this one with --test-data")


def run(args: argparse.Namespace, given=None) -> int:
    """The demo's five steps (module doc) for the parsed command line, under the run's lock;
    ``given``: the ``--data`` dataset, already read and checked to have a training split."""
    from generator import ConfigError
    from rmnet.atomic import atomic_write_text
    from rmnet.data.datasets import load_dataset
    from rmnet.data.market import DatasetError
    from training.run import (TrainingError, calibrate_batchnorm, final_snapshot, init_weights,
                                prepare_run, run_caffe_train, train_images)

    t0 = time.monotonic()
    out = args.out.resolve()
    try:
        print("[1/5] dataset", flush=True)
        if args.data is not None:
            root = args.data.resolve()
            print("  " + given.summary())
        else:
            from rmnet.data.synthetic import SyntheticConfig, generate
            root = out / "synthetic"
            cfg = SyntheticConfig(seed=args.seed)
            recorded = root / "synthetic.json"
            if recorded.is_file() and json.loads(recorded.read_text()).get("config") == asdict(cfg):
                print(f"  reusing {root}")
            else:                      # absent, or made with other settings (another --seed)
                generate(root, cfg, overwrite=root.exists())

        fmt = args.format if args.data is not None else None
        if args.test_data is not None:
            test = load_dataset(args.test_data.resolve(), args.test_format)
            print("  scored on " + test.summary())
        else:
            test = given if given is not None else load_dataset(root, fmt)

        print("[2/5] nets, solver and initial weights", flush=True)
        paths = prepare_run("light", root, out / "run", args.iters, args.batch_size, format=fmt)
        init = paths["solver"].parent / "init.caffemodel"
        init_weights(paths["deploy"], init, seed=args.seed, log=lambda m: print("  " + m))

        print("[3/5] the untrained network", flush=True)
        calibrated = paths["solver"].parent / "untrained_bn.caffemodel"
        calibrate_batchnorm(paths["deploy"], init, train_images(root, fmt), calibrated,
                            seed=args.seed)
        untrained = evaluate(paths["deploy"], calibrated, test, "untrained features")
        print(f"  rank-1 {100 * untrained['cmc']['1']:.1f}%  mAP {100 * untrained['mAP']:.1f}%")

        print(f"[4/5] caffe train, {args.iters} iterations "
              f"(log: {paths['solver'].parent / 'train.log'})", flush=True)
        t_train = time.monotonic()
        log = paths["solver"].parent / "train.log"
        run_caffe_train(paths["solver"], log, weights=str(init), max_iter=args.iters)
        train_seconds = time.monotonic() - t_train
        model = final_snapshot(paths["snapshots"] / "light", args.iters)

        print("[5/5] the trained network", flush=True)
        trained = evaluate(paths["deploy"], model, test, "trained features")
        from training.log import read_caffe_log
        from training.plots import plot_training
        curves = out / "training.png"
        plot_training(read_caffe_log(log), curves, title=f"RMNet light, demo on {root.name}")
    except (TrainingError, DatasetError, ConfigError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2

    ratio, passed = verdict(untrained["mAP"], trained["mAP"], args.min_ratio)
    results = {
        "dataset": str(root), "test_dataset": str(test.root), "iterations": args.iters,
        "batch_size": args.batch_size,
        "untrained": untrained, "trained": trained, "mAP_ratio": ratio,
        "min_ratio": args.min_ratio, "passed": passed,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.monotonic() - t0, 1),
        "model": str(model), "deploy": str(paths["deploy"]), "training_curves": str(curves),
    }
    result_path = out / "results.json"
    atomic_write_text(result_path, json.dumps(results, indent=2) + "\n")
    print()
    print(table(untrained, trained))
    print(f"\ntrained mAP / untrained mAP = {ratio:.1f}x (the demo asks for >= {args.min_ratio:g}x): "
          f"{'PASS' if passed else 'FAIL'}")
    print(f"model: {model}\ncurves: {curves}\nresults: {result_path}")
    print(f"total {results['total_seconds'] / 60:.1f} min (training {train_seconds / 60:.1f} min)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
