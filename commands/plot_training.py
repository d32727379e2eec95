#!/usr/bin/env python3
"""Plot a `caffe train` log: every loss term, the total loss, the learning rate, test outputs.

    .venv/bin/python tools/plot_training.py train.log -o curves.png

One panel for the training loss terms (each Train net output, and the total), one for the test
net's outputs, one for the learning rate (log scale). The PNG is written atomically.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from training.log import read_caffe_log  # noqa: E402
from training.plots import plot_training as plot  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402


@command('plot_training')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", type=Path, help="a `caffe train` log (glog output)")
    ap.add_argument("-o", "--out", type=Path, help="PNG to write (default: LOG with .png)")
    args = ap.parse_args(argv)
    check_output(args.out, '--out')
    try:
        log = read_caffe_log(args.log)
        out = args.out or args.log.with_suffix(".png")
        plot(log, out, title=args.log.name)
    except (FileNotFoundError, ValueError) as e:
        print(f"plot_training: {args.log}: {e}", file=sys.stderr)
        return 2
    nan = log.first_nan()
    if nan:
        print(f"plot_training: warning: non-finite {nan[1]} at iteration {nan[0]}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
