"""Fine-tuning a trained re-id model on new identities without losing what it knows.

The recipe (the ``finetune`` variant, generator/variants/finetune.json; docs/finetuning.md says
how it was chosen) is up to three `caffe train` runs on the rendered solvers:

1. the freeze stage (``solver_freeze.prototxt``, fast-reid's ``FREEZE_ITERS``, torchreid's
   ``fixbase_epoch``): only ``freeze.open_layers`` train (torchreid's ``open_layers``; by
   default the new AM-Softmax classifier and class centres, and the calibration), at the fixed
   ``freeze.base_lr``; every other layer has lr_mult 0, its stored BatchNorm statistics and no
   dropout, so the backbone is bit-for-bit the imported one when the stage ends;
2. everything, from the freeze stage's last caffemodel, at the lower ``solver.base_lr`` reached
   through a warm-up of ``solver.warmup_iters`` (Caffe's sigmoid policy, see
   generator/templates/solver.prototxt.j2), BatchNorm with its stored statistics when
   ``batchnorm.use_global_stats`` (else the batch statistics, after the un-fold of
   training/unfold.py);
3. the decay stage (``solver_decay.prototxt``, when ``decay.iters`` > 0): the same train net,
   from the second stage's last caffemodel, at the fixed ``solver.base_lr`` x ``decay.factor``
   (the x0.1 step of the schedules re-id models are trained with, taken as a stage of its own).

``finetune_overrides`` turns the command-line knobs into config overrides; ``run_stages`` runs
the stages and returns the snapshots of the second and third.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from training.run import TrainingError, run_caffe_train, snapshots

VARIANT = "finetune"


@dataclass(frozen=True)
class FinetuneSettings:
    """The knobs of the recipe; None keeps the variant's value."""
    iters: int | None = None                  # second stage (everything trains)
    lr: float | None = None                   # second stage's base_lr
    warmup_iters: int | None = None           # second stage's warm-up to lr
    freeze_backbone_iters: int | None = None  # first stage (0: none)
    head_lr: float | None = None              # first stage's fixed lr
    open_layers: list[str] | None = None      # layer-name patterns trained in the first stage
    batchnorm: str | None = None              # "keep" (stored statistics) or "batch"
    dropout: float | None = None              # ratio on the residual branches; 0: none
    mining: bool | None = None                # weighted hard-sample mining
    snapshot_every: int | None = None         # snapshots (validation points) of stages 2, 3
    decay_iters: int | None = None            # third stage (0: none; None: the variant's
                                              # share of iters, see finetune_overrides)
    decay_factor: float | None = None         # third stage's lr = lr x decay_factor
    imprint: bool = True                      # classifier and centres from mean descriptors


# The knobs as command-line flags, shared by tools/finetune.py and tools/train.py --finetune
# (argparse dest -> FinetuneSettings field is the flag name with "_").
RECIPE_FLAGS = ("lr", "warmup_iters", "freeze_backbone_iters", "head_lr", "open_layers",
                "batchnorm", "dropout", "mining", "snapshot_every", "decay_iters",
                "decay_factor")


def add_recipe_arguments(group) -> None:
    """The recipe's flags (each overrides one setting of the ``finetune`` variant) on an
    argparse parser or group; ``--iters`` is the caller's."""
    group.add_argument("--lr", type=float,
                       help="learning rate of the all-layers stage, after its warm-up")
    group.add_argument("--warmup-iters", type=int,
                       help="warm-up to --lr (fast-reid WARMUP_ITERS)")
    group.add_argument("--freeze-backbone-iters", type=int,
                       help="first stage: iterations training only the open layers (fast-reid "
                            "FREEZE_ITERS, torchreid fixbase_epoch); 0: no freeze stage")
    group.add_argument("--head-lr", type=float, help="the freeze stage's fixed learning rate")
    group.add_argument("--open-layers",
                       help="comma-separated layer-name patterns trained in the freeze stage "
                            "(torchreid open_layers; default: loss/*,calibration)")
    group.add_argument("--batchnorm", choices=("keep", "batch"),
                       help="keep: BatchNorm uses the model's stored statistics while training "
                            "(use_global_stats); batch: batch statistics (un-folded first)")
    group.add_argument("--dropout", type=float,
                       help="dropout ratio on the residual branches (0: off)")
    group.add_argument("--mining", choices=("on", "off"), help="weighted hard-sample mining")
    group.add_argument("--snapshot-every", type=int,
                       help="snapshots (validation points) every N iterations")
    group.add_argument("--decay-iters", type=int,
                       help="last stage: iterations at --lr x --decay-factor from the "
                            "all-layers stage's last snapshot (re-id's x0.1 step); 0: no decay "
                            "stage (default: the variant's decay.iters, scaled with --iters)")
    group.add_argument("--decay-factor", type=float,
                       help="the decay stage's learning rate as a fraction of --lr, in (0, 1)")
    group.add_argument("--no-imprint", action="store_true",
                       help="start the new classifier and centres at random, not at the "
                            "model's mean descriptor of each training identity")


def recipe_settings(args, error: Callable[[str], None]) -> FinetuneSettings:
    """FinetuneSettings from parsed recipe flags (and ``args.iters``); ``error`` (the parser's)
    for a value out of range."""
    for name in ("warmup_iters", "freeze_backbone_iters", "snapshot_every", "iters",
                 "decay_iters"):
        v = getattr(args, name)
        if v is not None and v < (1 if name in ("snapshot_every", "iters") else 0):
            error(f"--{name.replace('_', '-')}: {v} is out of range")
    for name in ("lr", "head_lr"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            error(f"--{name.replace('_', '-')} must be > 0")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        error("--dropout must be in [0, 1)")
    if args.decay_factor is not None and not 0 < args.decay_factor < 1:
        error("--decay-factor must be in (0, 1) (a fraction of --lr)")
    return FinetuneSettings(
        iters=args.iters, lr=args.lr, warmup_iters=args.warmup_iters,
        freeze_backbone_iters=args.freeze_backbone_iters, head_lr=args.head_lr,
        open_layers=[p for p in args.open_layers.split(",") if p] if args.open_layers else None,
        batchnorm=args.batchnorm, dropout=args.dropout,
        mining=None if args.mining is None else args.mining == "on",
        snapshot_every=args.snapshot_every, decay_iters=args.decay_iters,
        decay_factor=args.decay_factor, imprint=not args.no_imprint)


def finetune_overrides(s: FinetuneSettings) -> dict:
    """Config overrides (generator.load_variant's shape) for the ``finetune`` variant."""
    out: dict = {}

    def put(section: str, key: str, value) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    put("solver", "max_iter", s.iters)
    put("solver", "base_lr", s.lr)
    put("solver", "warmup_iters", s.warmup_iters)
    put("freeze", "iters", s.freeze_backbone_iters)
    put("freeze", "base_lr", s.head_lr)
    put("freeze", "open_layers", s.open_layers)
    put("decay", "iters", s.decay_iters)
    put("decay", "factor", s.decay_factor)
    if s.batchnorm is not None:
        if s.batchnorm not in ("keep", "batch"):
            raise ValueError(f"batchnorm must be 'keep' or 'batch', got {s.batchnorm!r}")
        put("batchnorm", "use_global_stats", s.batchnorm == "keep")
    if s.dropout is not None:
        put("dropout", "enabled", s.dropout > 0)
        if s.dropout > 0:
            put("dropout", "ratio", s.dropout)
    if s.mining is not None:
        put("hsm", "enabled", s.mining)
        put("hsm", "weighted", s.mining)
    if s.snapshot_every is not None:
        put("solver", "snapshot", s.snapshot_every)
        put("solver", "test_interval", s.snapshot_every)
    if s.iters is not None:
        from generator import load_variant
        variant = load_variant(VARIANT).config
        cfg = variant["solver"]
        if s.decay_iters is None:   # the decay stage keeps its share of the run
            put("decay", "iters", decay_share(s.iters, variant["decay"]["iters"],
                                              cfg["max_iter"]))
        warm = s.warmup_iters if s.warmup_iters is not None else cfg["warmup_iters"]
        if warm > s.iters:
            out["solver"]["warmup_iters"] = s.iters
        every = s.snapshot_every or cfg["snapshot"]
        if every > s.iters:
            out["solver"]["snapshot"] = out["solver"]["test_interval"] = s.iters
    return out


def decay_share(iters: int, variant_decay: int, variant_iters: int) -> int:
    """Decay-stage iterations for a second stage of ``iters``: the variant's ratio of decay to
    all-layers iterations (``variant_decay`` / ``variant_iters``), rounded, at least 1 when the
    variant has a decay stage."""
    if not variant_decay:
        return 0
    return max(1, round(iters * variant_decay / variant_iters))


def images_by_label(ts) -> list[list[str]]:
    """A TrainSet's image paths grouped by class label (what the data layer trains on)."""
    groups: list[list[str]] = [[] for _ in range(ts.num_classes)]
    for path, label in zip(ts.paths, ts.labels):
        groups[int(label)].append(path)
    return groups


def imprint_classes(deploy: str | os.PathLike, weights: str | os.PathLike,
                    images_by_label: list[list[str]], out: str | os.PathLike,
                    per_class: int = 4, batch_size: int = 64, seed: int = 0,
                    log: Callable[[str], None] = print) -> None:
    """Start the new classifier and class centres where the trained model already puts each
    training identity ("weight imprinting", Qi et al. 2018): class c's AM-Softmax weight is the
    normalised mean of its images' L2-normalised ``embedding_calibrated`` descriptors, its centre
    the same of ``embedding``, from up to ``per_class`` images each (seeded choice). Adds the
    layers ``loss/am_softmax`` (weights) and ``loss/local`` (centres, counter 0) to the
    caffemodel ``weights`` and writes it to ``out``: `caffe train -weights` copies them into the
    train net's loss layers by name. A random classifier would first push large, meaningless
    gradients into the backbone; an imprinted one starts near the model's own geometry."""
    from rmnet.atomic import atomic_path
    import numpy as np

    from rmnet.caffe.protos import caffe_pb2
    from rmnet.caffe.pycaffe import load_net
    from rmnet.data.images import load_blob

    net = load_net(deploy, weights)
    name = net.inputs[0]
    _, _, h, w = net.blobs[name].data.shape
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, str]] = []
    for label, paths in enumerate(images_by_label):
        if not paths:
            raise TrainingError(f"class {label} has no training image to imprint")
        pick = rng.permutation(len(paths))[:per_class]
        chosen += [(label, paths[i]) for i in sorted(pick)]
    k = len(images_by_label)
    sums = {b: np.zeros((k, net.blobs[b].data.reshape(net.blobs[b].data.shape[0], -1).shape[1]))
            for b in ("embedding_calibrated", "embedding")}
    for start in range(0, len(chosen), batch_size):
        part = chosen[start:start + batch_size]
        blob = load_blob([p for _, p in part], h, w)
        net.blobs[name].reshape(*blob.shape)
        net.blobs[name].data[...] = blob
        net.forward()
        labels = np.array([label for label, _ in part])
        for b in sums:
            x = net.blobs[b].data.reshape(len(part), -1).astype(np.float64)
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            np.add.at(sums[b], labels, x)
        if (start // batch_size) % 10 == 0:
            log(f"imprinting: {min(start + batch_size, len(chosen))}/{len(chosen)} images")
    tables = {b: (t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
                  ).astype(np.float32) for b, t in sums.items()}
    proto = caffe_pb2().NetParameter()
    proto.ParseFromString(Path(weights).read_bytes())
    keep = [layer for layer in proto.layer if layer.name not in ("loss/am_softmax", "loss/local")]
    del proto.layer[:]
    proto.layer.extend(keep)
    for layer_name, arrays in (("loss/am_softmax", [tables["embedding_calibrated"]]),
                               ("loss/local", [tables["embedding"],
                                               np.zeros(1, np.float32)])):
        layer = proto.layer.add()
        layer.name, layer.type = layer_name, "Python"
        for a in arrays:
            b = layer.blobs.add()
            b.shape.dim.extend(a.shape)
            b.data.extend(a.ravel().tolist())
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(proto.SerializeToString())
    log(f"imprinting: {k} classes from {len(chosen)} images (AM-Softmax weights and centres)")


def stage_snapshot(prefix: str | os.PathLike, iteration: int) -> Path:
    return Path(f"{prefix}_iter_{iteration}.caffemodel")


def keeps_batchnorm(train_net: str | os.PathLike) -> bool:
    """Whether every BatchNorm of a train net uses its stored statistics (use_global_stats):
    then an imported model needs no un-fold (training/unfold.py)."""
    from rmnet.caffe.protos import read_net
    bns = [layer for layer in read_net(Path(train_net)).layer if layer.type == "BatchNorm"]
    return bool(bns) and all(layer.batch_norm_param.use_global_stats for layer in bns)


def run_stages(paths: dict, weights: str | os.PathLike, freeze_iters: int, max_iter: int,
               echo: Callable[[str], None] = print, every: float = 10.0,
               gpu: int | None = None, decay_iters: int = 0) -> list[tuple[str, int, Path]]:
    """The freeze stage (when ``paths`` has "solver_freeze") from ``weights``, then the full
    stage from its last caffemodel, then the decay stage (when ``paths`` has "solver_decay",
    ``decay_iters`` long) from the full stage's last caffemodel; logs ``train_freeze.log``,
    ``train.log`` and ``train_decay.log`` next to the solvers. Returns the (stage, iteration,
    caffemodel) snapshots of the full stage ("full") and the decay stage ("decay", its own
    iteration count from 0), oldest first."""
    run_dir = Path(paths["solver"]).parent
    start = Path(weights)
    variant_prefix = _snapshot_prefix(paths["solver"])
    if "solver_freeze" in paths:
        echo(f"stage 1, {freeze_iters} iterations with the backbone frozen "
             f"(log {run_dir / 'train_freeze.log'})")
        run_caffe_train(paths["solver_freeze"], run_dir / "train_freeze.log", weights=str(start),
                        max_iter=freeze_iters, echo=echo, every=every, gpu=gpu)
        start = stage_snapshot(f"{variant_prefix}_freeze", freeze_iters)
        if not start.is_file():
            raise TrainingError(f"the freeze stage ended without its snapshot {start}")
    echo(f"stage 2, {max_iter} iterations, every layer (log {run_dir / 'train.log'})")
    run_caffe_train(paths["solver"], run_dir / "train.log", weights=str(start),
                    max_iter=max_iter, echo=echo, every=every, gpu=gpu)
    stages = [("full", variant_prefix)]
    if "solver_decay" in paths:
        start = stage_snapshot(variant_prefix, max_iter)
        if not start.is_file():
            raise TrainingError(f"the all-layers stage ended without its snapshot {start}")
        echo(f"stage 3, {decay_iters} iterations at the decayed learning rate (log "
             f"{run_dir / 'train_decay.log'})")
        run_caffe_train(paths["solver_decay"], run_dir / "train_decay.log", weights=str(start),
                        max_iter=decay_iters, echo=echo, every=every, gpu=gpu)
        stages.append(("decay", f"{variant_prefix}_decay"))
    return [(stage, it, Path(str(state)[:-len(".solverstate")] + ".caffemodel"))
            for stage, prefix in stages for it, state in snapshots(prefix)]


def _snapshot_prefix(solver: str | os.PathLike) -> str:
    from rmnet.caffe.protos import read_solver
    return read_solver(Path(solver)).snapshot_prefix
