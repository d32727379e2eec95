"""Held-out scores along a training run: every snapshot scored on identities it never trained on.

The test net `caffe train` runs every ``test_interval`` reports losses on training images; what
tells whether a re-id model is getting better is retrieval on other people. Here each snapshot
caffemodel of a run (``<prefix>_iter_<N>.caffemodel``), and the weights training started from
(iteration 0), is scored on the query/gallery of a held-out dataset with the one evaluation
(``rmnet.eval.evaluate.evaluate_data``: the Market-1501 protocol, cosine distance, no flip), so
the validation points of the curve are the snapshots: ``solver.snapshot`` sets how many.

The scores go to a JSON-lines file, one line per scored model, appended as each finishes (a run
still training can be scored again later: only new snapshots are scored; two processes scoring
the same run each append whole lines, and a reader keeps one score per iteration)::

    {"iteration": 200, "caffemodel": "/abs/light_iter_200.caffemodel", "data": "/abs/val",
     "format": null, "rank1": 0.41, "mAP": 0.38, "mAP_official": 0.39, "queries": 120}

A line for another dataset root or format, or for a caffemodel rewritten since (its size and
modification time are recorded), is not reused. ``tools/plot_training.py LOG --heldout DIR``
scores and draws them; the fine-tuning command picks its snapshot from them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from rmnet.data.market import Dataset

SCORES_SUFFIX = ".heldout.jsonl"
METRICS = ("rank1", "mAP", "mAP_official")


class ScoresFileError(ValueError):
    """A held-out scores file that cannot be read: names the file and line."""


def scores_path(log: str | os.PathLike) -> Path:
    """Where the held-out scores of a training log go: ``train.log`` -> ``train.heldout.jsonl``."""
    log = Path(log)
    return log.with_name(log.stem + SCORES_SUFFIX)


def read_scores(path: str | os.PathLike) -> list[dict]:
    """The records of a scores file in file order (none if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScoresFileError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ScoresFileError(f"{path}:{n}: expected a JSON object, got {line.strip()[:60]!r}")
        missing = [k for k in ("iteration", *METRICS) if not isinstance(rec.get(k), (int, float))]
        if missing:
            raise ScoresFileError(f"{path}:{n}: no numeric {', '.join(missing)}")
        out.append(rec)
    return out


def latest_per_iteration(records: list[dict], data: str | None = None) -> list[dict]:
    """One record per iteration (the last written), sorted by iteration; only those of the
    dataset root ``data`` when given (a file may hold scores on several held-out sets)."""
    best: dict[int, dict] = {}
    for rec in records:
        if data is None or rec.get("data") == data:
            best[int(rec["iteration"])] = rec
    return [best[k] for k in sorted(best)]


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def score_snapshots(deploy: str | os.PathLike, prefix: str | os.PathLike,
                    data: str | os.PathLike | Dataset, scores: str | os.PathLike,
                    format: str | None = None, initial: str | os.PathLike | None = None,
                    data_id: str | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Score every snapshot of ``prefix`` (and ``initial`` as iteration 0) not yet in
    ``scores`` on the query/gallery of ``data`` (a root in ``format``, or a parsed ``Dataset``
    such as a validation split carved from training identities) with the ``deploy`` net;
    append each new score to ``scores`` as it is made; return the scores on ``data``, one per
    iteration, sorted. The dataset needs no training split. ``data_id``: how the scores file
    names this held-out set (default: its resolved root; give one to tell apart two sets from
    the same root, e.g. a validation split and the test split)."""
    from rmnet.data.datasets import load_dataset
    from rmnet.deploy.backends import PycaffeBackend
    from rmnet.eval.evaluate import evaluate_data
    from training.run import snapshots

    ds = data if isinstance(data, Dataset) else load_dataset(data, format)
    root = data_id or str(ds.root.resolve())
    scores = Path(scores)
    done = {(int(r["iteration"]), r.get("caffemodel"), tuple(r.get("stamp", ())))
            for r in read_scores(scores) if r.get("data") == root and r.get("format") == format}
    models = [(0, Path(initial))] if initial is not None else []
    models += snapshots(prefix, ".caffemodel")
    todo = [(it, m) for it, m in models
            if (it, str(m.resolve()), tuple(_stamp(m))) not in done]
    if todo:
        log(f"held-out scores of {len(todo)} model(s) on {ds.summary()}")
    for k, (it, model) in enumerate(todo, 1):
        ev = evaluate_data(PycaffeBackend(deploy, model), ds, progress=False)
        res = ev.result
        rec = {"iteration": it, "caffemodel": str(model.resolve()), "stamp": _stamp(model),
               "data": root, "format": format, "rank1": res.rank(1), "mAP": res.mAP,
               "mAP_official": res.mAP_official, "queries": res.num_valid_queries}
        scores.parent.mkdir(parents=True, exist_ok=True)
        with open(scores, "a", encoding="utf-8") as f:   # one whole line per write (O_APPEND)
            f.write(json.dumps(rec) + "\n")
        log(f"  [{k}/{len(todo)}] iteration {it}: rank-1 {100 * res.rank(1):.1f}%  "
            f"mAP {100 * res.mAP:.1f}%  ({model.name})")
    return latest_per_iteration(read_scores(scores), root)
