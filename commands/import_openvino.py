#!/usr/bin/env python3
"""Import an OpenVINO IR of RMNet (e.g. Intel's person-reidentification-retail-0079) as a
caffemodel of this project's deploy net, checked against the IR before it is written.

    .venv/bin/python tools/import_openvino.py person-reidentification-retail-0079.xml \\
        -o intel-0079.caffemodel [--prototxt prototxt/light/deploy.prototxt] [--images DIR]
    .venv/bin/python tools/import_openvino.py IR.xml -o start.caffemodel --train --data DIR

Reads IR v5-v7 (Model Optimizer 2018-2019, Intel's original releases; parsed by this project)
and IR v10/v11 (OpenVINO 2020+, through the openvino package), FP32 or FP16, with the ``.bin``
next to the ``.xml``. The net is ``prototxt/light/deploy.prototxt`` for a 160x64 input,
``prototxt/strong/deploy.prototxt`` for 384x128, or ``--prototxt``. Convolutions are matched
by their position in the graph; BatchNorm becomes the identity and the folded biases go into
the Scale layers; the input normalisation comes from the IR's first ScaleShift; the
``calibration`` layer, which Intel's models do not have, is the identity, so the output blob
``embedding_calibrated`` equals ``embedding`` (see rmnet/deploy/ir_import.py). Before writing,
pycaffe runs the imported model on images (``--images DIR``, or synthetic crops) against the
IR itself (OpenVINO for v10/v11, an independent numpy forward of the parsed graph for v5-v7);
the max abs difference of the L2-normalised descriptors is printed and must be within
``--tolerance``.

``--train --data DIR``: for fine-tuning. With BatchNorm folded away, Caffe's TRAIN phase would
renormalise every convolution by batch statistics; this estimates each BatchNorm's statistics
on DIR's images (a Market-1501 folder's training images, or every image under DIR) and makes
the Scale layers compensate (training/unfold.py). The written model computes the same
descriptors in the TEST phase, and nearly the same in the TRAIN phase: the cosine is printed.
Then: ``tools/train.py --data DIR --from start.caffemodel``.

Exit status: 0 written; 1 the check failed (nothing written); 2 bad input (unreadable IR, a
graph that does not match the net, naming the layer; missing files).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402
from rmnet.deploy.ir_import import (CHECK_IMAGES, DEFAULT_TOLERANCE,  # noqa: E402
                                    IRImportCheckError, IRImportError, import_ir)


def image_list(root: Path) -> list[str]:
    """A Market-1501 folder's training images, else every image file under ``root``."""
    from rmnet.data.images import is_image_name
    from rmnet.data.market import DatasetError, load_market

    if not root.is_dir():
        raise IRImportError(f"{root}: not a folder of images")
    try:
        ds = load_market(root)
    except DatasetError:
        pass
    else:
        if not ds.train:     # an evaluation set: its test images are no training images
            raise IRImportError(f"{root}: a dataset without a training split (query and "
                                f"gallery only): the BatchNorm un-fold needs training images")
        return [str(r.path) for r in ds.train]
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_name(p.name)
                   and not p.name.startswith("."))
    if not files:
        raise IRImportError(f"{root}: no image files (.jpg, .jpeg, .png) under it")
    return files


@command('import_openvino')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("xml", type=Path, help="the IR's .xml (its .bin next to it)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="caffemodel to write")
    ap.add_argument("--prototxt", type=Path,
                    help="deploy net (default: by input size, prototxt/light or strong)")
    ap.add_argument("--images", type=Path,
                    help="folder of images for the check (default: synthetic person crops)")
    ap.add_argument("--check-images", type=int, default=CHECK_IMAGES,
                    help="images in the check (default %(default)s)")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                    help="max abs difference of L2-normalised descriptors (default %(default)g)")
    ap.add_argument("--train", action="store_true",
                    help="un-fold BatchNorm with statistics from --data, for fine-tuning")
    ap.add_argument("--data", type=Path, help="with --train: images for the statistics")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="with --train: images per statistics batch (default %(default)s)")
    ap.add_argument("--batches", type=int, default=10,
                    help="with --train: batches for the statistics (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="image sampling seed")
    args = ap.parse_args(argv)
    if args.train and args.data is None:
        ap.error("--train needs --data DIR (the images BatchNorm statistics are estimated on)")
    if args.data is not None and not args.train:
        ap.error("--data applies with --train")
    if args.batch_size < 2 or args.batches < 1 or args.check_images < 1:
        ap.error("--batch-size must be >= 2, --batches and --check-images >= 1")
    check_output(args.out, "-o")
    for p in [args.xml] + ([args.prototxt] if args.prototxt else []):
        if not p.is_file():
            print(f"error: {p}: no such file", file=sys.stderr)
            return 2
    try:
        paths = image_list(args.data) if args.train else []
        target = args.out
        if args.train:   # the folded import goes to a temporary file, the un-folded one to -o
            args.out.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.stem}.folded-",
                                        suffix=".caffemodel")
            os.close(fd)
            target = Path(name)
        try:
            report = import_ir(args.xml, target, prototxt=args.prototxt, images=args.images,
                               n_images=args.check_images, tolerance=args.tolerance,
                               seed=args.seed)
            print("\n".join(report.lines()))
            if args.train:
                from training.unfold import unfold_batchnorm

                unf = unfold_batchnorm(report.prototxt, target, paths, args.out,
                                       batch_size=args.batch_size, batches=args.batches,
                                       seed=args.seed)
                print("\n".join(unf.lines()))
                if unf.cos_after.mean() < 0.99:
                    print(f"warning: mean cosine {unf.cos_after.mean():.4f} < 0.99: use more "
                          f"or larger batches (--batches, --batch-size)", file=sys.stderr)
        finally:
            if args.train:
                target.unlink(missing_ok=True)
    except IRImportCheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except IRImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:   # image and training errors: one line, not a traceback
        from rmnet.data.images import ImageError
        from training.run import TrainingError
        if isinstance(e, (ImageError, TrainingError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    print(f"wrote {args.out}" + (" (BatchNorm un-folded for fine-tuning: tools/train.py "
                                 f"--data DIR --from {args.out})" if args.train else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
