"""Tracking a set of camera videos with their MOT detections: the work behind ``tools/track.py``.

Detections come from MOT files or, frame by frame, from a person-detector IR
(``rmnet.track.detector``). ``track_videos`` checks every input before the first frame is tracked (each video opens and
decodes, each detection file reads and fits its video: no frame past the video's end, no box
wholly outside its picture, ``rmnet.track.mot.check_fits``), then steps all cameras frame by
frame together (so a person who leaves one view is in the gallery when they enter the next),
each through its own ``CameraTracker``, with global identities from the linker
(``rmnet.track.tracker``). Results: one MOT file per camera with the global ids, and optionally an
annotated copy of each video (boxes and global ids; a track not yet linked shows ``camN:local``).
The per-frame re-id time (cropping, resizing, inference) is summed for the report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmnet.track.mot import MOTFormatError, check_fits, read_mot, write_mot
from rmnet.track.tracker import CameraTracker, Describer, TrackConfig
from rmnet.track.video import VideoReader, VideoWriter

COLOURS = 64


@dataclass
class TrackResult:
    results: list[Path]                       # MOT file per camera
    videos: list[Path]                        # annotated videos (if written)
    rows: list[np.ndarray]                    # per camera (n, 10) MOT rows, global ids
    frames: int = 0                           # camera frames processed (all cameras)
    detections: int = 0
    reid_seconds: float = 0.0
    identities: int = 0
    cross_camera: int = 0                     # identities seen by more than one camera
    linked: int = 0
    per_camera_tracks: list[int] = field(default_factory=list)


def colour(gid: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(gid % COLOURS)
    return tuple(int(v) for v in rng.integers(60, 255, 3))


def annotate(frame: np.ndarray, boxes: list[tuple[np.ndarray, str, int]]) -> np.ndarray:
    import cv2

    img = frame.copy()
    for ltwh, label, key in boxes:
        x, y, w, h = (int(round(v)) for v in ltwh)
        c = colour(key)
        cv2.rectangle(img, (x, y), (x + w, y + h), c, 2)
        cv2.putText(img, label, (x + 2, max(12, y + 14)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 2)
    return img


def open_inputs(videos: list[Path], detections: list[Path] | None):
    """Readers and detections (None: from a detector), every mismatch refused before any
    tracking."""
    if detections is None:
        return [VideoReader(v) for v in videos], [None] * len(videos)
    if len(videos) != len(detections):
        raise MOTFormatError(f"{len(videos)} videos but {len(detections)} detection files: "
                             f"give one --detections per --video, in the same order")
    readers, dets = [], []
    for v, d in zip(videos, detections):
        r = VideoReader(v)
        mot = read_mot(d)
        if r.n_frames <= 0 or mot.last_frame > r.n_frames:
            r.count_frames()      # the header may be missing or wrong: count for real
        check_fits(mot, r.n_frames, r.width, r.height, str(v))
        readers.append(r)
        dets.append(mot.by_frame())
    return readers, dets


def track_videos(videos: list[Path], detections: list[Path] | None, describer: Describer, linker,
                 out: Path, *, cfg: TrackConfig = TrackConfig(), write_videos: bool = True,
                 codec: str | None = None, progress=None, detector=None) -> TrackResult:
    """Track every camera (see the module doc); writes ``out/<video stem>.txt`` (and
    ``out/<video stem>-tracked.mp4``). ``detections=None``: each frame's boxes come from
    ``detector`` (``rmnet.track.detector.PersonDetector``) and are written to
    ``out/<video stem>-det.txt``."""
    if (detections is None) == (detector is None):
        raise ValueError("give detection files or a detector, not both or neither")
    readers, dets = open_inputs(list(map(Path, videos)),
                                None if detections is None else list(map(Path, detections)))
    stems = [Path(v).stem for v in videos]
    if len(set(stems)) != len(stems):
        raise ValueError(f"two videos have the same name ({', '.join(stems)}): their results "
                         f"would overwrite each other")
    out.mkdir(parents=True, exist_ok=True)
    writers: list[VideoWriter] = []
    try:
        if write_videos:          # one by one: a codec refused for the second aborts the first
            for s, r in zip(stems, readers):
                writers.append(VideoWriter(out / f"{s}-tracked.mp4", r.fps, r.size, codec))
        trackers = [CameraTracker(describer, cfg) for _ in readers]
        timed = _Timed(describer)
        for t in trackers:
            t.describer = timed
        raw: list[list[tuple]] = [[] for _ in readers]
        detected: list[list[np.ndarray]] = [[] for _ in readers]
        iters = [iter(r) for r in readers]
        live = list(range(len(readers)))
        frames = n_det = 0
        while live:
            for c in list(live):
                item = next(iters[c], None)
                if item is None:
                    live.remove(c)
                    continue
                no, frame = item
                if dets[c] is None:
                    d = detector.detect(frame)
                    d[:, 0] = no
                    detected[c].append(d)
                else:
                    d = dets[c].get(no, np.zeros((0, 10)))
                n_det += len(d)
                shown = []
                for box in trackers[c].step(frame, d):
                    gid = linker.observe(c, no, box)
                    raw[c].append((no, box.local_id, *box.ltwh, box.conf))
                    label = str(gid) if gid is not None else f"cam{c + 1}:{box.local_id}"
                    shown.append((box.ltwh, label, gid if gid is not None else -box.local_id))
                if writers:
                    writers[c].write(annotate(frame, shown))
                frames += 1
                if progress is not None:
                    progress(1)
        linker.finish()
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    rows = []
    for c, recs in enumerate(raw):
        arr = np.array([[no, linker.global_id(c, lid), x, y, w, h, conf, -1, -1, -1]
                        for no, lid, x, y, w, h, conf in recs], np.float64).reshape(-1, 10)
        rows.append(arr)
    paths = [write_mot(out / f"{s}.txt", r) for s, r in zip(stems, rows)]
    if detector is not None:
        for s, d in zip(stems, detected):
            write_mot(out / f"{s}-det.txt", np.concatenate(d) if d else np.zeros((0, 10)))
    cams_of: dict[int, set[int]] = {}
    for c, r in enumerate(rows):
        for gid in np.unique(r[:, 1]).astype(int):
            cams_of.setdefault(int(gid), set()).add(c)
    return TrackResult(paths, [w.path for w in writers], rows, frames, n_det, timed.seconds,
                       len(cams_of), sum(len(v) > 1 for v in cams_of.values()),
                       int(getattr(linker, "linked", 0)),
                       [len(np.unique(r[:, 1])) for r in rows])


class _Timed(Describer):
    """A describer whose time is summed (the re-id cost of the run)."""

    def __init__(self, inner: Describer):
        self.inner, self.seconds, self.reid = inner, 0.0, inner.reid

    def describe(self, frame: np.ndarray, ltwh: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.inner.describe(frame, ltwh)
        self.seconds += time.perf_counter() - t
        return out
