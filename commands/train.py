#!/usr/bin/env python3
"""Train RMNet with the real `caffe train` command, after checking everything it will need.

    # the paper's full settings on a Market-1501 folder (what `make train DATA=...` runs):
    .venv/bin/python tools/train.py --data /data/Market-1501-v15.09.15
    # another benchmark, or several trained on together (identities kept apart):
    .venv/bin/python tools/train.py --data /data/MSMT17_V1 --trainval
    .venv/bin/python tools/train.py --data /data/Market-1501,/data/cuhk03-np \\
        --format market,cuhk03-detected
    # another variant / Table 2 row, a shorter schedule, a pre-trained backbone:
    .venv/bin/python tools/train.py --data DIR --variant t2_5_push --iters 20000
    .venv/bin/python tools/train.py --data DIR --from backbone.caffemodel
    # continue the run in --run-dir from its newest snapshot:
    .venv/bin/python tools/train.py --data DIR --resume
    # a committed solver as it is (paths relative to the repo root):
    .venv/bin/python tools/train.py --solver solvers/market.prototxt
    # on a GPU, or one process per GPU over NCCL (after `make setup GPU=1`):
    .venv-gpu/bin/python tools/train.py --data DIR --gpu 0
    .venv-gpu/bin/python tools/train.py --data DIR --gpus 0,1,2,3

With --data, the variant's nets and solver are rendered into the run folder (default
``runs/<variant>``) for that dataset (its number of training identities becomes the class
count; with several sets, the sum), an initial caffemodel is written (orthogonal + MSRA, paper V.ii; ``--from`` copies a
pre-trained backbone by layer name), and `caffe train` runs with its log in the run folder and a
progress line every few seconds. With ``--iters N`` the paper's schedule is scaled to N
iterations (lr x0.1 at 1/3 and 2/3, dropout off at 2/3).

Before Caffe starts: a missing solver or net, a dataset folder in no known layout
(rmnet.data.datasets), a snapshot folder that does not exist, a data layer param_str that does
not parse, or a caffemodel whose layers do not fit the net stop with one message. A NaN loss stops training with
the iteration and the layer; the snapshots written before it stay as they are.

One trainer per run: a second ``tools/train.py`` on the same run (its snapshot prefix) is
refused while the first is alive, and `caffe train` dies with its parent (a killed trainer
leaves no orphaned Caffe). Ctrl-C stops Caffe, which snapshots first; the log stays complete
and one line says where the snapshot is and how to continue (exit status 130). The log is
``<run folder>/train.log`` (``--data``) or next to the solver's snapshots,
``<snapshot prefix>.train.log`` (``--solver``), so runs never share a log.

GPUs: ``--gpu N`` runs `caffe train ... -gpu N` (which overrides the solver's solver_mode);
``--gpus 0,1,...`` runs one process per GPU over Caffe's NCCL bindings (training.multigpu):
each runs the solver's batch, so the effective batch is N times larger, at the solver's
learning rate; snapshots, tests and the log come from rank 0. The devices are checked before
anything starts: without them (no driver, no device, or a CPU-only Caffe) it stops with one
"no GPU" line and exit status 3.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rmnet.paths import REPO  # noqa: E402

os.environ.setdefault("GLOG_minloglevel", "2")

from rmnet.atomic import check_output  # noqa: E402
from rmnet.caffe.protos import read_net  # noqa: E402
from commands.errors import command  # noqa: E402
from rmnet.data.datasets import FORMATS, split_list  # noqa: E402
from training.finetune import (RECIPE_FLAGS, add_recipe_arguments,  # noqa: E402
                               finetune_overrides, keeps_batchnorm, recipe_settings,
                               run_stages)
from training.run import (RunLock, TrainingError, TrainingInterrupted,  # noqa: E402
                             check_weights_fit, data_layer_config, init_weights, inspect_solver,
                             newest_usable_snapshot, prepare_run, run_caffe_train,
                             usable_snapshot)


@command('train')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", action="append",
                     help="dataset folder (any format of rmnet.data.datasets); repeat it or "
                          "separate by commas to train on several sets at once")
    src.add_argument("--solver", type=Path, help="an existing solver (e.g. solvers/market.prototxt)")
    src.add_argument("--pretrain", type=Path, metavar="DIR",
                     help="pre-train the variant's backbone on a classification folder "
                          "DIR/<class>/*.jpg (paper V.ii); --from the result in a re-id run")
    ap.add_argument("--size", default="224x224",
                    help="with --pretrain: input HxW (default: %(default)s)")
    ap.add_argument("--variant", default="light", help="with --data (default: %(default)s)")
    ap.add_argument("--run-dir", type=Path, help="with --data (default: runs/<variant>)")
    ap.add_argument("--iters", type=int, help="with --data: scale the schedule to N iterations")
    ap.add_argument("--batch-size", type=int, help="with --data: images per batch")
    ap.add_argument("--weights", type=Path, help="start from this caffemodel")
    ap.add_argument("--from", dest="source", type=Path,
                    help="with --data: initialise, then copy matching layers from this caffemodel")
    ap.add_argument("--snapshot", type=Path, help="resume from this .solverstate")
    ap.add_argument("--resume", action="store_true", help="resume from the newest snapshot")
    ap.add_argument("--seed", type=int, default=0, help="initialisation seed")
    ap.add_argument("--format", action="append",
                    help="with --data: the dataset format, one for all sets or one per set "
                         "(comma-separated or repeated; 'auto' detects), one of: "
                         "auto, " + ", ".join(FORMATS))
    ap.add_argument("--trainval", action="store_true",
                    help="with --data: MSMT17 trains on list_train + list_val")
    ft = ap.add_argument_group(
        "fine-tuning (--finetune: the 'finetune' variant's recipe, docs/finetuning.md; "
        "each flag overrides one of its settings)")
    ft.add_argument("--finetune", action="store_true",
                    help="with --data and --from MODEL.caffemodel: fine-tune a trained model "
                         "(freeze stage, everything at a low lr after a warm-up, then the decayed lr); "
                         "--iters is then the second stage's length, not a scaled schedule")
    add_recipe_arguments(ft)
    dev = ap.add_mutually_exclusive_group()
    dev.add_argument("--gpu", metavar="N", help="train on CUDA device N")
    dev.add_argument("--gpus", metavar="LIST",
                     help="train on several CUDA devices, one process each (e.g. 0,1)")
    args = ap.parse_args(argv)
    if args.data is not None:
        args.data = [Path(d) for d in split_list(args.data)]
    formats = [None if f == "auto" else f for f in split_list(args.format)]
    if any(f is not None and f not in FORMATS for f in formats):
        ap.error(f"--format: one of auto, {', '.join(FORMATS)}")
    if formats and args.data and len(formats) not in (1, len(args.data)):
        ap.error(f"--format: {len(formats)} formats for {len(args.data)} --data folders "
                 f"(give one for all, or one per folder)")
    args.formats = (formats[0] if len(formats) == 1 else formats) if formats else None
    args.devices = None
    if args.gpu is not None or args.gpus is not None:
        from rmnet.caffe.gpu import parse_gpu_ids
        try:
            args.devices = parse_gpu_ids(args.gpu if args.gpu is not None else args.gpus)
        except ValueError as e:
            ap.error(str(e))
        if args.gpu is not None and len(args.devices) != 1:
            ap.error("--gpu takes one device; --gpus takes a list")
    if not args.finetune:
        given = [f"--{n.replace('_', '-')}" for n in RECIPE_FLAGS if getattr(args, n) is not None]
        given += ["--no-imprint"] if args.no_imprint else []
        if given:
            ap.error(f"{', '.join(given)} apply with --finetune")
    else:
        if args.data is None or args.source is None:
            ap.error("--finetune needs --data DIR and --from MODEL.caffemodel (the trained "
                     "model; tools/import_openvino.py makes one from an OpenVINO IR)")
        if args.resume:
            ap.error("--resume does not apply with --finetune (a fine-tuning run is short: "
                     "start it again)")
        if args.variant == "light":
            args.variant = "finetune"
        args.finetune_settings = recipe_settings(args, ap.error)
    check_output(args.run_dir, '--run-dir', folder=True)
    for name in ("iters", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if sum(x is not None and x is not False for x in (args.weights, args.snapshot, args.source,
                                                       args.resume or None)) > 1:
        ap.error("give at most one of --weights, --from, --snapshot, --resume")
    if args.solver is not None:
        given = [f"--{name.replace('_', '-')}" for name in ("run_dir", "iters", "batch_size")
                 if getattr(args, name) is not None]
        given += ["--from"] if args.source else []
        given += ["--format"] if args.format else []
        given += ["--trainval"] if args.trainval else []
        given += ["--variant"] if args.variant != "light" else []
        if given:
            ap.error(f"{', '.join(given)} apply with --data (a --solver is used as it is)")
    if args.pretrain is not None:
        return pretrain_main(ap, args)
    if args.size != "224x224":
        ap.error("--size applies with --pretrain")
    # Caffe runs in another folder than this shell (the repo root with --solver): resolve now.
    for name in ("weights", "snapshot", "source"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    if args.devices is not None:
        # Before anything else: Caffe aborts (SIGABRT) on a device that is not there.
        from rmnet.caffe.gpu import NO_GPU_EXIT, NoGPUError, require_gpus
        try:
            require_gpus(args.devices)
        except NoGPUError as e:
            print(f"train: {e}", file=sys.stderr)
            return NO_GPU_EXIT
    prefix: Path | None = None
    try:
        if args.data is not None:
            run_dir = (args.run_dir or REPO / "runs" / args.variant).resolve()
            lock = RunLock(run_dir / ".train.lock")      # before anything in it is rewritten
        else:
            info = inspect_solver(args.solver, REPO)
            prefix = _absolute(info.snapshot_prefix, REPO)
            lock = RunLock(prefix.parent / f".{prefix.name}.train.lock")
        with lock:
            if args.data is not None:
                solver, paths = _prepare(args, run_dir)
                cwd = Path.cwd()
                info = inspect_solver(solver, cwd)
                prefix = _absolute(info.snapshot_prefix, cwd)
            else:
                solver, cwd, paths = args.solver, REPO, None
            return _train(args, solver, cwd, info, prefix, paths)
    except TrainingInterrupted as e:
        snap = newest_usable_snapshot(prefix) if prefix is not None else None
        where = f"snapshot {snap}" if snap else "no snapshot was written"
        again = " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                         if a != "--resume")
        print(f"train: {e}; {where}; continue with: tools/train.py {again} --resume",
              file=sys.stderr)
        return 130
    except TrainingError as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # an unwritable or full run folder or log: one line, not a traceback
        print(f"train: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:   # DatasetError, ConfigError, ...: one line, not a traceback
        from rmnet.config import ConfigError
        from rmnet.data.market import DatasetError
        if isinstance(e, (DatasetError, ConfigError)):
            print(f"train: {e}", file=sys.stderr)
            return 2
        raise


def _absolute(path: str, cwd: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else cwd / p


def _prepare(args, run_dir: Path) -> tuple[Path, dict]:
    """The run folder's solver and nets: rendered for --data, or, with --resume, the run as it
    was rendered (same schedule), not as today's flags say."""
    if args.resume and (run_dir / "solver.prototxt").is_file():
        solver = run_dir / "solver.prototxt"
        rendered = rendered_settings(solver, run_dir)
        changed = [f"--{n.replace('_', '-')} {getattr(args, n)} (the run has {rendered[n]})"
                   for n in ("iters", "batch_size")
                   if getattr(args, n) is not None and getattr(args, n) != rendered[n]]
        if changed:
            raise TrainingError(f"--resume continues the run in {run_dir} as it was rendered: "
                                f"{', '.join(changed)} cannot change it (drop "
                                f"{'them' if len(changed) > 1 else 'it'}, or start a new run "
                                f"with another --run-dir)")
        print(f"train: continuing the run in {run_dir}")
        return solver, {"solver": solver, "deploy": run_dir / "deploy.prototxt"}
    if args.finetune:
        paths = prepare_run(args.variant, args.data, run_dir, None, args.batch_size,
                            extra=finetune_overrides(args.finetune_settings),
                            format=args.formats, trainval=args.trainval)
        return paths["solver"], paths
    paths = prepare_run(args.variant, args.data, run_dir, args.iters, args.batch_size,
                        format=args.formats, trainval=args.trainval)
    return paths["solver"], paths


def rendered_settings(solver: Path, cwd: Path) -> dict:
    """The schedule length and batch size a rendered run was made with."""
    info = inspect_solver(solver, cwd)
    batch = None
    for layer in read_net(info.train_net).layer:
        if layer.type == "Python" and layer.python_param.layer == "MarketDataLayer":
            batch = data_layer_config(layer, info.train_net).batch_size
    return {"iters": info.max_iter, "batch_size": batch}


def _train(args, solver: Path, cwd: Path, info, prefix: Path, paths: dict | None) -> int:
    """Resume point, initial weights, checks, then `caffe train` (under the run's lock)."""
    snapshot = args.snapshot
    if args.resume:
        snapshot = newest_usable_snapshot(prefix, log=lambda m: print(f"train: {m}"))
        if snapshot is None:
            raise TrainingError(f"--resume: no usable snapshot under "
                                f"{info.snapshot_prefix}_iter_*")
        print(f"train: resuming from {snapshot}")
    weights = args.weights
    if weights is None and snapshot is None and paths is not None:
        weights = Path(paths["solver"]).parent / "init.caffemodel"
        init_weights(paths["deploy"], weights, seed=args.seed, source=args.source)
        if args.finetune and keeps_batchnorm(paths["train"]):
            pass    # the stored statistics are used as they are: nothing to un-fold
        elif args.source is not None:   # an imported (BatchNorm-folded) model: un-fold it
            from training.unfold import unfold_if_imported
            unfold_if_imported(paths["deploy"], weights, args.source,
                               lambda: imported_start_images(args), seed=args.seed,
                               log=lambda m: print(f"train: {m}"))
        if args.finetune and not args.no_imprint:
            from rmnet.data.datasets import load_train_sets
            from training.finetune import images_by_label, imprint_classes
            imprint_classes(paths["deploy"], weights,
                            images_by_label(load_train_sets([str(d) for d in args.data],
                                                            args.formats, args.trainval)),
                            weights, seed=args.seed, log=lambda m: print(f"train: {m}"))
    if weights is not None:
        check_weights_fit(info.train_net, weights, phase="TRAIN")
    if snapshot is not None:
        problem = usable_snapshot(Path(snapshot))
        if problem is not None:
            raise TrainingError(f"{snapshot}: cannot resume from it: {problem}")
    log = (Path(solver).parent / "train.log" if paths is not None
           else prefix.parent / f"{prefix.name}.train.log")
    gpus = args.devices
    if args.finetune:
        freeze = paths.get("train_freeze")
        freeze_iters = (inspect_solver(paths["solver_freeze"], cwd).max_iter
                        if freeze is not None else 0)
        if freeze is not None:
            check_weights_fit(freeze, weights, phase="TRAIN")
        decay_iters = (inspect_solver(paths["solver_decay"], cwd).max_iter
                       if "solver_decay" in paths else 0)
        run_stages(paths, weights, freeze_iters, info.max_iter,
                   echo=lambda m: print(f"train: {m}"),
                   gpu=gpus[0] if gpus else None, decay_iters=decay_iters)
        print(f"train: done; snapshots: {info.snapshot_prefix}_iter_*.caffemodel"
              + (f" and {info.snapshot_prefix}_decay_iter_*.caffemodel" if decay_iters else ""))
        return 0
    if gpus is not None and len(gpus) > 1:
        from training.multigpu import run_multi_gpu
        print(f"train: {len(gpus)} processes on GPUs {','.join(map(str, gpus))} over NCCL, "
              f"solver {solver} (log: {log})")
        run_multi_gpu(solver, gpus, log, weights=str(weights) if weights else None,
                      snapshot=str(snapshot) if snapshot else None, cwd=cwd,
                      max_iter=info.max_iter, append=snapshot is not None)
    else:
        on = f" -gpu {gpus[0]}" if gpus else ""
        print(f"train: caffe train -solver {solver}{on} (log: {log})")
        run_caffe_train(solver, log, weights=str(weights) if weights else None,
                        snapshot=str(snapshot) if snapshot else None, cwd=cwd,
                        max_iter=info.max_iter, append=snapshot is not None,
                        gpu=gpus[0] if gpus else None)
    print(f"train: done; snapshots: {info.snapshot_prefix}_iter_*.caffemodel")
    return 0


def imported_start_images(args: argparse.Namespace) -> list[str]:
    """The training images of every --data folder (in its --format), for the BatchNorm
    un-fold of an imported --from model."""
    from training.run import train_images

    roots = list(args.data)
    formats = args.formats if isinstance(args.formats, list) else [args.formats] * len(roots)
    return [p for root, fmt in zip(roots, formats) for p in train_images(root, fmt)]


def pretrain_main(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--pretrain DIR: training.pretrain.run_pretrain with this command line's options."""
    from generator import ConfigError, GenerationError, InputSizeError
    from rmnet.data.market import DatasetError
    from training.pretrain import run_pretrain

    for name in ("weights", "source", "snapshot"):
        if getattr(args, name) is not None:
            ap.error(f"--{'from' if name == 'source' else name} does not apply with --pretrain")
    if args.resume:
        ap.error("--resume does not apply with --pretrain (start it again with more --iters)")
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must be HxW, e.g. 224x224, got {args.size!r}")
    run_dir = (args.run_dir or REPO / "runs" / f"pretrain_{args.variant}").resolve()
    try:
        run_pretrain(args.pretrain, run_dir, args.variant, iters=args.iters or 20000,
                     size=(h, w), batch_size=args.batch_size or 16, seed=args.seed,
                     log=lambda m: print(f"train: {m}"))
    except (TrainingError, DatasetError, ConfigError, GenerationError, InputSizeError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
