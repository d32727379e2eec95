"""Backbone pre-training (paper V.ii) with the real `caffe train`: a classification folder
``DIR/<class>/*.jpg`` -> a caffemodel whose backbone layers (``input_norm/*``, ``stem/*``,
``bottleneck*``) transfer by name into every re-id variant with ``tools/train.py --from``.

``run_pretrain`` takes the run folder's lock (``training.run.RunLock``, as ``tools/train.py``
does: a second pre-training into the same folder is refused while the first runs), renders the
net and solver (``generator.pretrain``) into the run folder, writes the initial weights (the
re-id init: orthogonal squeezing 1x1 convolutions, MSRA for the others, identity BatchNorm),
runs Caffe with progress, and reports how the final model would transfer into the chosen re-id
variant's deploy net (rendered into the run folder).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from training.init import TransferReport, copy_by_name
from training.run import (RunLock, TrainingError, final_snapshot, init_weights,
                          net_param_shapes, run_caffe_train)


@dataclass
class PretrainResult:
    model: Path
    log: Path
    num_classes: int
    transfer: TransferReport


def transfer_preview(model: str | Path, prototxt: str | Path) -> TransferReport:
    """What ``--from model`` would copy into ``prototxt``'s net (by layer name and shape)."""
    from rmnet.caffe.caffemodel import read_caffemodel

    target = {name: [np.zeros(s, np.float32) for s in shapes]
              for name, shapes in net_param_shapes(prototxt).items()}
    return copy_by_name(target, read_caffemodel(model))


def run_pretrain(data: Path, run_dir: Path, variant: str = "light", iters: int = 20000,
                 size: tuple[int, int] = (224, 224), batch_size: int = 32, seed: int = 0,
                 base_lr: float | None = None,
                 log: Callable[[str], None] = print) -> PretrainResult:
    """Pre-train ``variant``'s backbone on the classification folder ``data``."""
    with RunLock(Path(run_dir) / ".train.lock"):     # before anything in it is rewritten
        return _pretrain(data, run_dir, variant, iters, size, batch_size, seed, base_lr, log)


def _pretrain(data: Path, run_dir: Path, variant: str, iters: int, size: tuple[int, int],
              batch_size: int, seed: int, base_lr: float | None,
              log: Callable[[str], None]) -> PretrainResult:
    """``run_pretrain`` under the run's lock."""
    from rmnet.atomic import atomic_write_text as write_atomic
    from rmnet.data.classes import load_class_folder
    from generator import render
    from generator.pretrain import write_pretrain_run

    folder = load_class_folder(data)
    log(folder.summary())
    paths = write_pretrain_run(run_dir, variant, num_classes=folder.num_classes, root=data,
                               iters=iters, height=size[0], width=size[1],
                               batch_size=batch_size, seed=seed, base_lr=base_lr)
    init = Path(run_dir).resolve() / "init.caffemodel"
    init_weights(paths["net"], init, seed=seed, log=log)
    log_path = paths["solver"].parent / "train.log"
    log(f"caffe train -solver {paths['solver']} (log: {log_path})")
    run_caffe_train(paths["solver"], log_path, weights=str(init), cwd=Path.cwd(), max_iter=iters,
                    echo=log)
    model = final_snapshot(paths["snapshots"] / "pretrain", iters)
    if not model.is_file():
        raise TrainingError(f"pre-training ended without its final snapshot {model}")
    deploy = Path(run_dir).resolve() / f"{variant}_deploy.prototxt"
    write_atomic(deploy, render(variant, "deploy").text)
    report = transfer_preview(model, deploy)
    log(f"backbone: {model}; into {deploy} by name: {report.summary()}")
    return PretrainResult(model, log_path, folder.num_classes, report)
