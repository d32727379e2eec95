#!/usr/bin/env python3
"""Plot a `caffe train` log: the loss terms, the held-out scores, the test outputs, the lr.

    .venv/bin/python tools/plot_training.py train.log -o curves.png
    # score every snapshot (and the starting weights) on held-out people, then plot:
    .venv/bin/python tools/plot_training.py runs/light/train.log --heldout /data/val-set

One panel for the training loss terms (each Train net output, and the total); one for the
held-out retrieval scores, rank-1 and mAP at each validation point; one for the test net's
outputs; one for the learning rate (log scale; a step schedule drawn as steps, each change at
the iteration the solver makes it, training.log.lr_curve). The PNG is written atomically.

Held-out scores (training.heldout): ``--heldout DIR`` scores each snapshot caffemodel of the
run, and the weights it started from (``-weights`` on the log's command line) as iteration 0,
on DIR's query/gallery (any format of rmnet.data.datasets, ``--format``; no training split
needed: a set of identities the run never trained on). The validation points are the
snapshots (the solver's ``snapshot`` interval). The deploy net is ``deploy.prototxt`` next to
the solver's train net and the snapshots those of its ``snapshot_prefix``, both read from the
log (``--deploy``, ``--snapshots`` override them). Scores are appended to ``--scores``
(default: the log's name with ``.heldout.jsonl``) as each is made and reused, so running it
again while training goes on scores only the new snapshots. Without ``--heldout`` the scores
already in that file are drawn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from training.log import add_heldout, command_option, read_caffe_log  # noqa: E402
from training.plots import plot_training as plot  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402


def log_path_option(log, key: str, log_file: Path) -> Path | None:
    """A path the log's solver parameters name (``net``, ``snapshot_prefix``), resolved from the
    working directory or, if nothing is there, from the log's folder."""
    value = log.solver.get(key)
    if not isinstance(value, str) or not value:
        return None
    p = Path(value)
    if p.is_absolute():
        return p
    for base in (Path.cwd(), log_file.parent):
        if (base / p).parent.is_dir():
            return base / p
    return p


def heldout_scores(args, log) -> list[dict]:
    """Score the run's snapshots on --heldout (only those not yet scored); the scores."""
    from training.heldout import score_snapshots

    deploy = args.deploy
    if deploy is None:
        net = log_path_option(log, "net", args.log)
        deploy = net.parent / "deploy.prototxt" if net else None
        if deploy is None or not deploy.is_file():
            raise ValueError(f"no deploy net found ({deploy or 'the log names no solver net'}"
                             f"): pass --deploy")
    prefix = args.snapshots or log_path_option(log, "snapshot_prefix", args.log)
    if prefix is None:
        raise ValueError("the log names no snapshot_prefix: pass --snapshots PREFIX")
    initial = command_option(log, "-weights")
    initial = Path(initial) if initial and Path(initial).is_file() else None
    return score_snapshots(deploy, prefix, args.heldout, args.scores, format=args.format,
                           initial=initial, log=lambda m: print(m, file=sys.stderr, flush=True))


@command('plot_training')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", type=Path, help="a `caffe train` log (glog output)")
    ap.add_argument("-o", "--out", type=Path, help="PNG to write (default: LOG with .png)")
    ap.add_argument("--heldout", type=Path, metavar="DIR",
                    help="score the run's snapshots on this dataset's query/gallery")
    ap.add_argument("--format", help="with --heldout: its layout (default: detected)")
    ap.add_argument("--deploy", type=Path, help="with --heldout: the deploy prototxt")
    ap.add_argument("--snapshots", type=Path, metavar="PREFIX",
                    help="with --heldout: the snapshot prefix (PREFIX_iter_N.caffemodel)")
    ap.add_argument("--scores", type=Path,
                    help="held-out scores file (default: LOG with .heldout.jsonl)")
    args = ap.parse_args(argv)
    check_output(args.out, '--out')
    for opt in ("format", "deploy", "snapshots"):
        if getattr(args, opt) is not None and args.heldout is None:
            ap.error(f"--{opt} applies only with --heldout")
    from rmnet.caffe.caffemodel import WeightsError
    from rmnet.data.images import ImageError
    from training.heldout import latest_per_iteration, read_scores, scores_path

    args.scores = args.scores or scores_path(args.log)
    try:
        log = read_caffe_log(args.log)
        if args.heldout is not None:
            scores = heldout_scores(args, log)
        else:
            scores = read_scores(args.scores)
            roots = list(dict.fromkeys(r.get("data") for r in scores))
            if len(roots) > 1:
                print(f"plot_training: {args.scores} holds scores on {len(roots)} datasets; "
                      f"drawing those on {roots[-1]}", file=sys.stderr)
            scores = latest_per_iteration(scores, roots[-1] if roots else None)
        add_heldout(log, scores)
        out = args.out or args.log.with_suffix(".png")
        plot(log, out, title=args.log.name)
    except (FileNotFoundError, ValueError, ImageError, WeightsError) as e:
        print(f"plot_training: {args.log}: {e}", file=sys.stderr)
        return 2
    nan = log.first_nan()
    if nan:
        print(f"plot_training: warning: non-finite {nan[1]} at iteration {nan[0]}", file=sys.stderr)
    if scores:
        best = max(scores, key=lambda r: r["mAP"])
        print(f"plot_training: held-out mAP at {len(scores)} validation points, best "
              f"{100 * best['mAP']:.1f}% at iteration {best['iteration']}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
