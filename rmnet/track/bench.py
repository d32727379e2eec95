"""What ``tools/bench_track.py`` measures: the same tracker with and without re-id on a generated
scene, and the re-id cost per frame at a given number of people.

``compare`` runs ``track_videos`` once per describer (same scene, same tracker settings) and
scores each against the truth (``rmnet.track.metrics``). ``frame_cost`` times one frame's re-id
work, cropping, resizing and inference of ``n`` people in one batch, as a tracker does it
(``ReidDescriber.describe``), with the project's interleaved timers (``rmnet.bench.timing``) so
load from other jobs hits every model alike.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmnet.track.metrics import Scores, kept_across_cameras, score
from rmnet.track.mot import read_mot
from rmnet.track.run import TrackResult, track_videos
from rmnet.track.tracker import IdentityLinker, SeparateIdentities, TrackConfig


@dataclass
class Row:
    name: str
    result: TrackResult
    per_camera: list[Scores]
    joint: Scores
    kept: tuple[int, int]           # people keeping one id across cameras, people in 2+ cameras


def compare(paths: dict, describers: dict, model_sha256: dict, cfg: TrackConfig,
            n_frames: list[int], progress=None) -> list[Row]:
    """Each describer (name -> Describer) through the same scene; fresh gallery for each."""
    gts = [read_mot(g) for g in paths["gt"]]
    names = [Path(v).stem for v in paths["video"]]
    rows = []
    for name, describer in describers.items():
        with tempfile.TemporaryDirectory(prefix="rmnet-track-") as tmp:
            if describer.reid:
                linker = IdentityLinker.open(Path(tmp) / "gallery", describer.embedder.dim,
                                             model_sha256[name], cfg)
            else:
                linker = SeparateIdentities()
            res = track_videos(paths["video"], paths["det"], describer, linker, Path(tmp),
                               cfg=cfg, write_videos=False, progress=progress)
            results = [read_mot(p) for p in res.results]
            per, joint = score(gts, results, names, n_frames)
            rows.append(Row(name, res, per, joint, kept_across_cameras(gts, results)))
    return rows


def people_frame(crops: list[np.ndarray], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1280x720 frame with ``n`` people pasted at person-box sizes (48..160 px high), and
    their boxes (n, 4) left, top, w, h: the input of one frame's re-id."""
    import cv2

    rng = np.random.default_rng(seed)
    frame = np.full((720, 1280, 3), 128, np.uint8)
    boxes = []
    for i in range(n):
        h = int(rng.integers(48, 161))
        w = h // 2
        x, y = int(rng.integers(0, 1280 - w)), int(rng.integers(0, 720 - h))
        frame[y:y + h, x:x + w] = cv2.resize(crops[i % len(crops)], (w, h))
        boxes.append((x, y, w, h))
    return frame, np.asarray(boxes, np.float64)


def frame_cost(describers: dict, crops: list[np.ndarray], people: list[int], *,
               warmup: int = 2, repeats: int = 5, min_time: float = 0.5,
               log=print) -> dict[tuple[str, int], dict]:
    """Milliseconds per frame (median and quartiles) of each describer at each people count."""
    from rmnet.bench.timing import Timer, run_interleaved

    timers = {}
    for n in people:
        frame, boxes = people_frame(crops, n)
        for name, d in describers.items():
            def run(k: int, d=d, frame=frame, boxes=boxes) -> None:
                for _ in range(k):
                    d.describe(frame, boxes)
            timers[name, n] = Timer(f"{name} {n} people", run, 1)
    run_interleaved(list(timers.values()), warmup, repeats, min_time, log=log)
    out = {}
    for key, t in timers.items():
        st = t.stats()
        out[key] = {"median_ms": 1000 / st["median"], "q1_ms": 1000 / st["q3"],
                    "q3_ms": 1000 / st["q1"]}
    return out
