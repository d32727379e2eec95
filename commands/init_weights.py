#!/usr/bin/env python3
"""Write the initial caffemodel for training (paper V.ii), for `caffe train -weights`.

    .venv/bin/python tools/init_weights.py prototxt/light/deploy.prototxt -o init.caffemodel
    .venv/bin/python tools/init_weights.py prototxt/light/deploy.prototxt -o init.caffemodel \
        --from backbone_pretrained.caffemodel

Squeezing 1x1 convolutions (layers named */dim_red/conv) get orthogonal weights, every other
convolution MSRA (fan_out by default); BatchNorm statistics identity (mean 0, variance 1), Scale
the prototxt's fillers. With
--from, every layer whose name and blob shapes match a layer of that caffemodel is copied over
it (a backbone pre-trained elsewhere), and a report says what matched. Give the deploy net: layers
only the train net has (losses, dropout counters) initialise themselves, and `caffe train -weights`
copies by layer name. The caffemodel is written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path



from training.run import TrainingError, init_weights  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402


@command('init_weights')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prototxt", type=Path, help="deploy (or test) net of the variant")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--msra-mode", choices=("fan_out", "fan_in"), default="fan_out")
    ap.add_argument("--orthogonal", default="*/dim_red/conv",
                    help="layer-name pattern initialised orthogonally (default: %(default)s)")
    ap.add_argument("--from", dest="source", type=Path,
                    help="caffemodel to copy matching layers from (pre-trained backbone)")
    args = ap.parse_args(argv)
    check_output(args.out, '--out')
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        init_weights(args.prototxt, args.out, seed=args.seed, msra_mode=args.msra_mode,
                     orthogonal_pattern=args.orthogonal, source=args.source)
    except TrainingError as e:
        print(f"init_weights: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
