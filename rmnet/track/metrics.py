"""MOTA, IDF1 and ID switches of tracker results against MOT ground truth, with ``motmetrics``.

``motmetrics`` (MIT licence, optional: ``requirements-track.txt``) accumulates, frame by frame,
which ground-truth box each result box is matched to; the distance is ``1 - IoU``, pairs under
IoU 0.5 cannot match (the MOT Challenge's rule). The IoU matrix is computed here (motmetrics
1.4's own ``iou_matrix`` calls ``np.asfarray``, gone in NumPy 2).

- ``per_camera``: one accumulator per camera, the usual single-camera figures.
- ``multi_camera``: one accumulator over every camera's frames in turn, ground-truth ids and
  result ids both global: IDF1 there counts a person as correctly identified only where the
  tracker gave them the same id in every camera (the multi-camera IDF1 of DukeMTMC-MTMC).

Ground-truth rows with ``considered`` (column 7) equal to 0 are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmnet.track import optional_module
from rmnet.track.mot import MOTFile

METRICS = ("idf1", "idp", "idr", "mota", "num_switches", "num_false_positives", "num_misses",
           "num_unique_objects", "mostly_tracked")
MIN_IOU = 0.5


def motmetrics_module():
    return optional_module("motmetrics", "scoring")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of (left, top, w, h) boxes: (len(a), len(b))."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _accumulate(acc, gt: dict[int, np.ndarray], res: dict[int, np.ndarray], frames,
                offset: int) -> None:
    empty = np.zeros((0, 10))
    for f in frames:
        g, r = gt.get(f, empty), res.get(f, empty)
        d = 1.0 - iou(g[:, 2:6], r[:, 2:6])
        d[d > 1.0 - MIN_IOU] = np.nan
        acc.update(g[:, 1].astype(int).tolist(), r[:, 1].astype(int).tolist(), d,
                   frameid=offset + int(f))


def _considered(mot: MOTFile) -> dict[int, np.ndarray]:
    rows = mot.rows[mot.rows[:, 6] != 0]
    return MOTFile(mot.path, rows).by_frame()


@dataclass
class Scores:
    name: str
    values: dict[str, float]

    def line(self) -> str:
        v = self.values
        return (f"{self.name:24s} IDF1 {100 * v['idf1']:5.1f}  IDs {int(v['num_switches']):4d}  "
                f"MOTA {100 * v['mota']:5.1f}  FP {int(v['num_false_positives']):5d}  "
                f"FN {int(v['num_misses']):5d}  GT ids {int(v['num_unique_objects'])}")


def score(gts: list[MOTFile], results: list[MOTFile], names: list[str],
          n_frames: list[int]) -> tuple[list[Scores], Scores]:
    """Per-camera scores and the multi-camera one (see the module doc)."""
    mm = motmetrics_module()
    mh = mm.metrics.create()
    per, joint = [], mm.MOTAccumulator(auto_id=False)
    offset = 0
    for gt, res, name, n in zip(gts, results, names, n_frames):
        g, r = _considered(gt), res.by_frame()
        acc = mm.MOTAccumulator(auto_id=False)
        _accumulate(acc, g, r, range(1, n + 1), 0)
        _accumulate(joint, g, r, range(1, n + 1), offset)
        offset += n + 1
        df = mh.compute(acc, metrics=list(METRICS), name=name)
        per.append(Scores(name, {k: float(df[k].iloc[0]) for k in METRICS}))
    df = mh.compute(joint, metrics=list(METRICS), name="all cameras")
    return per, Scores("all cameras (global ids)", {k: float(df[k].iloc[0]) for k in METRICS})


def kept_across_cameras(gts: list[MOTFile], results: list[MOTFile]) -> tuple[int, int]:
    """(people whose id is kept, people seen by at least two cameras): a person keeps one id
    when the result id matched to them most often (IoU >= 0.5, greedy by overlap per frame) is
    the same in every camera that sees them."""
    majority: list[dict[int, int]] = []
    for gt, res in zip(gts, results):
        g_frames, r_frames = _considered(gt), res.by_frame()
        votes: dict[int, dict[int, int]] = {}
        for f, g in g_frames.items():
            r = r_frames.get(f)
            if r is None:
                continue
            m = iou(g[:, 2:6], r[:, 2:6])
            while m.size and m.max() >= MIN_IOU:
                i, j = np.unravel_index(np.argmax(m), m.shape)
                v = votes.setdefault(int(g[i, 1]), {})
                v[int(r[j, 1])] = v.get(int(r[j, 1]), 0) + 1
                m[i, :] = -1
                m[:, j] = -1
        majority.append({p: max(v, key=v.get) for p, v in votes.items()})
    people = set().union(*(set(m) for m in majority))
    multi = [p for p in people if sum(p in m for m in majority) > 1]
    kept = sum(len({m[p] for m in majority if p in m}) == 1 for p in multi)
    return kept, len(multi)
