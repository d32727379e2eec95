"""The synthetic dataset of ``rmnet.data.synthetic`` written in the other layouts the project
reads (``rmnet.data.datasets``), so every reader and the pipeline can be tested on real images.

The images, identities and cameras are those of the Market-shaped plan (same seed, same
pixels); only names, folders and lists change, as each layout requires:

- ``msmt17_v1`` / ``msmt17_v2``: ``list_train.txt``, ``list_val.txt``, ``list_query.txt``,
  ``list_gallery.txt`` with ``train/`` and ``test/`` (V2: ``mask_train_v2/``,
  ``mask_test_v2/``). Labels are 0-based per split (train ids, test ids in increasing pid
  order); names ``LLLL/LLLL_III_CC_0303morning_FFFF_0.jpg`` with the label LLLL and camera CC.
  The last image of every training identity with at least three goes to ``list_val.txt``. MSMT17
  has no junk or distractors: those of the plan are left out.
- ``cuhk03``: ``labeled/`` and ``detected/``, each with the three Market folders and
  ``PPPP_cC_N.png`` names (PNG, as CUHK03-NP). Needs ``cameras=2`` (a camera pair). The
  ``detected`` copy leaves out each test identity's last gallery image, so the two subsets
  differ in count as the real ones do. No junk or distractors.
- ``folders`` / ``folders-nocam``: ``<split>/<pid>/<camid>/<name>.jpg`` (``-nocam``:
  ``<split>/<pid>/<name>.jpg``); junk in ``gallery/-1/``, distractors in ``gallery/0/``.
- ``csv`` / ``csv-nocam``: the images in ``images/<split>/`` and ``train.csv``, ``query.csv``,
  ``gallery.csv`` with ``path,pid,camid`` (``-nocam``: ``path,pid``) and a header line.

Written atomically (a temporary folder renamed into place), with a ``synthetic.json`` recording
the config, the layout and the counts.

    python -m rmnet.data.synthetic_layouts --out data/msmt17 --layout msmt17_v1 --seed 0
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import cv2

from rmnet.atomic import atomic_dir
from rmnet.data.synthetic import (VERSION, DatasetPlan, encode_item, generate, Item, make_plan,
                                  render_item, SyntheticConfig)

LAYOUTS = ("market", "msmt17_v1", "msmt17_v2", "cuhk03", "folders", "folders-nocam", "csv",
           "csv-nocam")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _png(plan: DatasetPlan, item: Item) -> bytes:
    ok, buf = cv2.imencode(".png", render_item(plan, item))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {item.name} as PNG")
    return buf.tobytes()


def _by_split(plan: DatasetPlan) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {"train": [], "query": [], "gallery": []}
    for it in plan.items:
        out[it.split].append(it)
    return out


def _msmt17(tmp: Path, plan: DatasetPlan, v2: bool) -> dict[str, int]:
    train_dir, test_dir = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    splits = _by_split(plan)
    train_label = {pid: i for i, pid in enumerate(plan.train_pids)}
    test_label = {pid: i for i, pid in enumerate(plan.test_pids)}
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    per_id: dict[int, list[Item]] = {}
    for it in splits["train"]:
        per_id.setdefault(it.pid, []).append(it)
    counter = 0

    def put(it: Item, label: int, folder: str, lst: str) -> None:
        nonlocal counter
        counter += 1
        rel = f"{label:04d}/{label:04d}_{counter % 1000:03d}_{it.camid:02d}_0303morning_" \
              f"{counter:04d}_0.jpg"
        _write(tmp / folder / rel, encode_item(plan, it))
        lists[lst].append(f"{rel} {label}")

    for pid in plan.train_pids:
        items = per_id[pid]
        for k, it in enumerate(items):
            val = len(items) >= 3 and k == len(items) - 1
            put(it, train_label[pid], train_dir, "val" if val else "train")
    for split in ("query", "gallery"):
        for it in splits[split]:
            if it.pid > 0:
                put(it, test_label[it.pid], test_dir, split)
    for name, lines in lists.items():
        (tmp / f"list_{name}.txt").write_text("".join(line + "\n" for line in sorted(lines)))
    return {k: len(v) for k, v in lists.items()}


def _cuhk03(tmp: Path, plan: DatasetPlan) -> dict[str, int]:
    if plan.cfg.cameras != 2:
        raise ValueError("the cuhk03 layout needs cameras=2 (CUHK03 names have cameras 1 and 2)")
    splits = _by_split(plan)
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    counts: dict[str, int] = {}
    for subset in ("labeled", "detected"):
        for split, items in splits.items():
            items = [it for it in items if it.pid > 0]
            if subset == "detected" and split == "gallery":
                last = {it.pid: i for i, it in enumerate(items)}
                items = [it for i, it in enumerate(items) if last[it.pid] != i]
            n_of: dict[tuple[int, int], int] = {}
            for it in items:
                n = n_of[(it.pid, it.camid)] = n_of.get((it.pid, it.camid), 0) + 1
                _write(tmp / subset / folders[split] / f"{it.pid:04d}_c{it.camid}_{n}.png",
                       _png(plan, it))
            counts[f"{subset}/{split}"] = len(items)
    return counts


def _folders(tmp: Path, plan: DatasetPlan, cams: bool) -> dict[str, int]:
    counts = {}
    for split, items in _by_split(plan).items():
        for it in items:
            sub = Path(str(it.pid)) / str(it.camid) if cams else Path(str(it.pid))
            _write(tmp / split / sub / it.name, encode_item(plan, it))
        counts[split] = len(items)
    return counts


def _csv(tmp: Path, plan: DatasetPlan, cams: bool) -> dict[str, int]:
    counts = {}
    for split, items in _by_split(plan).items():
        lines = ["path,pid,camid" if cams else "path,pid"]
        for it in items:
            rel = f"images/{split}/{it.name}"
            _write(tmp / rel, encode_item(plan, it))
            lines.append(f"{rel},{it.pid},{it.camid}" if cams else f"{rel},{it.pid}")
        (tmp / f"{split}.csv").write_text("\n".join(lines) + "\n")
        counts[split] = len(items)
    return counts


def write_layout(out: str | Path, cfg: SyntheticConfig, layout: str,
                 overwrite: bool = False) -> dict[str, int]:
    """Write the synthetic dataset of ``cfg`` to ``out`` in ``layout``; returns the counts."""
    if layout == "market":
        return generate(out, cfg, overwrite=overwrite).counts
    if layout not in LAYOUTS:
        raise ValueError(f"unknown synthetic layout {layout!r}; one of {', '.join(LAYOUTS)}")
    plan = make_plan(cfg)
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        if layout.startswith("msmt17"):
            counts = _msmt17(tmp, plan, v2=layout == "msmt17_v2")
        elif layout == "cuhk03":
            counts = _cuhk03(tmp, plan)
        elif layout.startswith("folders"):
            counts = _folders(tmp, plan, cams=not layout.endswith("-nocam"))
        else:
            counts = _csv(tmp, plan, cams=not layout.endswith("-nocam"))
        meta = {"generator": "rmnet.data.synthetic", "version": VERSION, "layout": layout,
                "config": asdict(cfg), "counts": counts, "train_pids": plan.train_pids,
                "test_pids": plan.test_pids}
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    ap = argparse.ArgumentParser(
        prog="python -m rmnet.data.synthetic_layouts",
        description="Write the seeded synthetic dataset (rmnet.data.synthetic) in another layout.")
    ap.add_argument("--out", type=Path, required=True, help="dataset root to create")
    ap.add_argument("--layout", required=True, choices=LAYOUTS)
    ap.add_argument("--train-ids", type=int, default=d.train_ids)
    ap.add_argument("--test-ids", type=int, default=d.test_ids)
    ap.add_argument("--images-per-id", type=int, default=d.images_per_id)
    ap.add_argument("--queries-per-id", type=int, default=d.queries_per_id)
    ap.add_argument("--cameras", type=int, default=None,
                    help="default: 2 for cuhk03, else 6")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out")
    a = ap.parse_args(argv)
    cams = a.cameras if a.cameras is not None else (2 if a.layout == "cuhk03" else d.cameras)
    try:
        cfg = SyntheticConfig(train_ids=a.train_ids, test_ids=a.test_ids,
                              images_per_id=a.images_per_id, queries_per_id=a.queries_per_id,
                              cameras=cams, seed=a.seed)
        counts = write_layout(a.out, cfg, a.layout, overwrite=a.force)
    except (ValueError, FileExistsError) as e:
        print(f"rmnet.data.synthetic_layouts: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out} ({a.layout}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
