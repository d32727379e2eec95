#!/usr/bin/env python3
"""Fine-tune a trained re-id model on a dataset's training identities, scored before and after
on the dataset's held-out test identities, and exported back to OpenVINO IR and ONNX.

    .venv/bin/python tools/finetune.py person-reidentification-retail-0079.xml \\
        --data /data/my-cameras --out runs/ft-mine/
    .venv/bin/python tools/finetune.py model.caffemodel --data DIR --out OUT/ \\
        --iters 3000 --lr 1e-3 --freeze-backbone-iters 200 --also-eval /data/other-set

MODEL is an OpenVINO IR (``.xml``, imported and checked as tools/import_openvino.py does) or a
caffemodel of ``--prototxt`` (default: the light deploy net). DIR is any layout
rmnet.data.datasets reads, with a training split and a test split (query + gallery).

What it does (training/finetune_loop.py): carves a validation split from DIR's *training*
identities (``--val-ids``, seeded by ``--seed``; the test split is never used to choose
anything), scores the model on the test and validation splits, fine-tunes it on the other
training identities with the recipe of docs/finetuning.md (a freeze stage training the new
classifier with the backbone fixed, then every layer at a low learning rate after a warm-up,
then, with ``--decay-iters``, that learning rate x ``--decay-factor``; each knob a flag, as in
``tools/train.py --finetune``), scores every snapshot of the last two stages on the validation
split, keeps the best, scores it on the test split and exports it.

OUT (which must not exist or be empty: nothing is overwritten) then holds ``finetune.txt`` (the
before/after table), ``finetune.json`` (every number and setting), ``finetune.png`` (validation
mAP at each snapshot, the losses, the learning rate), ``model/`` (``finetuned.caffemodel``,
``deploy.prototxt``, ``finetuned.onnx``, ``finetuned.xml``/``.bin``) and ``work/`` (the import,
the split as links to DIR's images, the run with its logs and snapshots).

Exit status: 0 the fine-tuned model scores at least as well on the test split (mAP); 1 it
scores worse (said plainly; the files are still written, to look at); 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from commands.errors import command  # noqa: E402
from training.finetune import add_recipe_arguments, recipe_settings  # noqa: E402

EXIT_WORSE = 1


@command('finetune')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="OpenVINO IR .xml or .caffemodel")
    ap.add_argument("--data", type=Path, required=True, help="dataset folder")
    ap.add_argument("--out", type=Path, required=True, help="new (or empty) output folder")
    ap.add_argument("--format", help="dataset format (default: detected)")
    ap.add_argument("--prototxt", type=Path, help="deploy net of the model (default: by the "
                    "IR's input size, or the light net for a caffemodel)")
    ap.add_argument("--val-ids", type=int,
                    help="validation identities carved from the training split (default: "
                         "10%%, between 2 and 100)")
    ap.add_argument("--seed", type=int, default=0, help="validation split and training seed")
    ap.add_argument("--also-eval", type=Path, action="append", default=[], metavar="DIR",
                    help="another dataset whose test split is scored before and after "
                         "(what the model may forget); repeatable")
    ap.add_argument("--batch-size", type=int, help="training images per batch")
    ap.add_argument("--export-images", type=Path,
                    help="images for the export check (default: synthetic crops)")
    ft = ap.add_argument_group("the recipe (defaults: generator/variants/finetune.json)")
    ft.add_argument("--iters", type=int, help="iterations with every layer training")
    add_recipe_arguments(ft)
    args = ap.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1 or (args.val_ids is not None
                                                                and args.val_ids < 2):
        ap.error("--batch-size must be >= 1 and --val-ids >= 2")
    settings = recipe_settings(args, ap.error)
    from rmnet.config import ConfigError
    from rmnet.data.images import ImageError
    from rmnet.data.market import DatasetError
    from training.finetune_loop import run_finetune, summary_line
    from training.run import TrainingError

    line = "tools/finetune.py " + " ".join(shlex.quote(a) for a in
                                           (argv if argv is not None else sys.argv[1:]))
    try:
        result = run_finetune(args.model, args.data, args.out, settings, fmt=args.format,
                              val_ids=args.val_ids, seed=args.seed, prototxt=args.prototxt,
                              also=args.also_eval, batch_size=args.batch_size,
                              export_images=args.export_images,
                              log=lambda m: print(f"finetune: {m}", flush=True), command=line)
    except (TrainingError, DatasetError, ConfigError, ImageError) as e:
        print(f"finetune: {e}", file=sys.stderr)
        return 2
    print()
    print(result.table())
    print(summary_line(result))
    print(f"wrote {args.out / 'finetune.txt'}, finetune.json, finetune.png and model/")
    if result.worse:
        print("finetune: the fine-tuned model is WORSE on the held-out test split than the model "
              "it started from (see the table); it was written anyway, to look at",
              file=sys.stderr)
        return EXIT_WORSE
    return 0


if __name__ == "__main__":
    sys.exit(main())
