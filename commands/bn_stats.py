#!/usr/bin/env python3
"""Re-estimate a trained model's BatchNorm statistics on training images; the weights stay.

    .venv/bin/python tools/bn_stats.py --prototxt runs/scratch_small/deploy.prototxt \
        --weights runs/scratch_small/snapshots/scratch_small_iter_4200.caffemodel \
        --data /data/cuhk03-labeled -o scratch_small_bn.caffemodel

Caffe's BatchNorm keeps running statistics with a moving average (fraction 0.999: about the
last 1000 iterations), so a net whose weights moved fast is tested with statistics of older
weights. This runs ``--batches`` batches of ``--batch-size`` training images of DATA (a seeded
draw, resized only, no augmentation) through the net in Caffe's TRAIN phase, where each
BatchNorm layer accumulates the statistics of its inputs, and writes a new caffemodel whose
BatchNorm statistics are those and every other blob is the input's, bit for bit
(``training.run.calibrate_batchnorm``). Estimate on training identities, never on the split
you will score. The output is written atomically and may not be the input model.
docs/training.md has what it measured on a short from-scratch run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from commands.errors import command
from rmnet.atomic import check_output
from training.run import TrainingError, calibrate_batchnorm


@command('bn_stats')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prototxt", type=Path, required=True, help="the model's deploy net")
    ap.add_argument("--weights", type=Path, required=True, help="the trained caffemodel")
    ap.add_argument("--data", type=Path, required=True,
                    help="a dataset folder with a training split (any rmnet.data.datasets layout)")
    ap.add_argument("--format", default=None, help="its layout (default: detected)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="the caffemodel to write")
    ap.add_argument("--batches", type=int, default=40, help="batches to estimate on (default 40)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="which images are drawn")
    args = ap.parse_args(argv)
    if args.batches < 1 or args.batch_size < 2:
        ap.error("--batches must be >= 1 and --batch-size >= 2 (a variance needs two images)")
    for path, what in ((args.prototxt, "--prototxt"), (args.weights, "--weights")):
        if not path.is_file():
            print(f"bn_stats: {what} {path}: no such file", file=sys.stderr)
            return 2
    if args.out.exists() and args.out.resolve() == args.weights.resolve():
        print(f"bn_stats: -o {args.out}: is the --weights model; write the new statistics to "
              f"another file", file=sys.stderr)
        return 2
    check_output(args.out, "-o")
    os.environ.setdefault("GLOG_minloglevel", "2")
    from rmnet.data.datasets import DatasetError, load_dataset, no_train_error
    try:
        ds = load_dataset(args.data, args.format)
    except DatasetError as e:
        print(f"bn_stats: {e}", file=sys.stderr)
        return 2
    images = [str(r.path) for r in ds.train]
    if not images:
        print(f"bn_stats: {no_train_error(ds, 'estimating BatchNorm statistics')}",
              file=sys.stderr)
        return 2
    try:
        calibrate_batchnorm(args.prototxt, args.weights, images, args.out,
                            batch_size=args.batch_size, batches=args.batches, seed=args.seed)
    except TrainingError as e:
        print(f"bn_stats: {e}", file=sys.stderr)
        return 2
    used = min(len(images), args.batches * args.batch_size)
    print(f"bn_stats: BatchNorm statistics from {args.batches} batches of {args.batch_size} "
          f"({used} distinct of {len(images)} training images of {args.data}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
