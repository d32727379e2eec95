#!/usr/bin/env python3
"""Export a Caffe deploy net + caffemodel to ONNX (and OpenVINO IR), checked against pycaffe.

    .venv/bin/python tools/export.py --prototxt prototxt/light/deploy.prototxt \\
        --weights snapshots/light_iter_100000.caffemodel --out exported/ --openvino \\
        [--images data/market1501/query] [--input rgb-imagenet --normalize]

Writes ``<out>/<name>.onnx`` (and ``<name>.xml`` + ``<name>.bin`` with ``--openvino``), name =
the caffemodel's stem unless ``--name``. BatchNorm+Scale are folded into the convolutions; the
input normalisation stays a Mul+Add (see rmnet/deploy/export.py). Before anything is written, pycaffe
runs the net on a batch of images (the first 8 image files under ``--images``, or 8 synthetic
person crops) and each exported model must reproduce its descriptors within ``--tolerance``
(default 1e-4 x max(1, max |pycaffe output|): absolute for descriptors up to 1, relative above,
so random-weight nets with large outputs are not rejected on float32 rounding; ``--absolute`` or
``--relative`` bounds one of the two alone). The check is printed.

``--input`` picks what the exported model takes (rmnet/deploy/conventions.py): ``bgr255`` (the
default: raw BGR 0..255, as Caffe and OpenVINO's demos) or ``rgb-imagenet`` (RGB,
``(x / 255 - mean) / std`` with ImageNet's mean and std, as BoxMOT's re-id backends feed); the
adapter is folded into the net's input normalisation, so both run at the same cost.
``--normalize`` makes the output ``descriptor`` of shape ``[N, D]`` with L2-normalised rows
(on by default with ``--input rgb-imagenet``; ``--no-normalize`` keeps the raw output). The
batch axis is dynamic in ONNX and in the IR; the convention, mean, std, input size and output
are in the ONNX ``metadata_props`` and the IR's ``rt_info`` (``rmnet.*`` keys).

Exit status: 0 exported and checked; 1 the check failed (nothing written); 2 bad input (a layer
the exporter does not know, a caffemodel that does not fit the prototxt, a missing file or
runtime), with a message naming it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from rmnet.deploy.conventions import CONVENTIONS, DEFAULT  # noqa: E402
from rmnet.deploy.export import DEFAULT_TOLERANCE, ExportCheckError, export  # noqa: E402
from rmnet.deploy.graph import ExportError  # noqa: E402
from rmnet.data.images import ImageError  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402


@command('export')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prototxt", type=Path, required=True, help="Caffe deploy prototxt")
    ap.add_argument("--weights", type=Path, required=True, help="trained .caffemodel")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--openvino", action="store_true",
                    help="also write OpenVINO IR (FP32) converted from the ONNX model")
    ap.add_argument("--images", type=Path,
                    help="folder of images for the check (default: synthetic person crops)")
    ap.add_argument("--input", choices=list(CONVENTIONS), default=DEFAULT,
                    help="what the exported model takes: raw BGR 0..255 (default) or RGB "
                         "ImageNet-normalised, as BoxMOT feeds")
    ap.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                    help="output [N, D] with L2-normalised rows (default: on with --input "
                         "rgb-imagenet, off with bgr255)")
    ap.add_argument("--name", help="output file stem (default: the caffemodel's stem)")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                    help="max abs difference of the descriptors allowed, times max(1, max "
                         "|pycaffe output|) (default %(default)g)")
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--relative", action="store_true",
                      help="apply --tolerance to max |diff| / max |pycaffe output| instead")
    kind.add_argument("--absolute", action="store_true",
                      help="apply --tolerance to max |diff| alone, whatever the output's scale")
    args = ap.parse_args(argv)
    if not args.tolerance > 0:
        ap.error("--tolerance must be > 0")
    check_output(args.out, '--out', folder=True)
    for p in (args.prototxt, args.weights):
        if not p.is_file():
            print(f"error: {p}: no such file", file=sys.stderr)
            return 2
    try:
        report = export(args.prototxt, args.weights, args.out, name=args.name,
                        openvino=args.openvino, images=args.images, tolerance=args.tolerance,
                        check="relative" if args.relative else
                        "absolute" if args.absolute else "scaled",
                        input=args.input,
                        normalize=(args.input != DEFAULT if args.normalize is None
                                   else args.normalize))
    except ExportCheckError as e:
        print("\n".join(e.report.lines()))
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ExportError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
