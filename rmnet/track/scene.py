"""A generated multi-camera sequence: synthetic people walking through two (or more) views.

For measuring trackers where the truth is known. Every person (drawn by
``rmnet.data.synthetic``: an ``Appearance`` seen by a ``Camera``, so the same person looks
different in each view, as in Market-1501) walks across each camera's view in turn: in one side,
out of the other, at a fixed depth (farther people are smaller and higher in the picture), then
after a gap into the next camera. People walk both ways, so they cross and occlude each other
(nearer people are drawn over farther ones). A person is a drawn crop pasted at the box, cycling
through a few drawings (the walking pose, the view, the clutter behind) every few frames.

Written by ``write_scene``, per camera ``camN.mp4`` (or frames in memory from
``render_camera``), ``camN-gt.txt`` (MOT ground truth: frame, person id, box, 1, 1, visibility;
ids are global, one per person in every camera) and ``camN-det.txt`` (MOT detections: the truth
with visibility >= ``min_visibility``, each box jittered, some dropped: a decent detector's
output, so that the measurement is about association, not detection).

Everything comes from ``seed``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rmnet.data.synthetic import draw_person, random_appearance, random_camera
from rmnet.atomic import atomic_write_text
from rmnet.track.mot import write_mot

CROP_H, CROP_W = 128, 64           # drawn at Market-1501's size, then resized to the box


@dataclass(frozen=True)
class SceneConfig:
    people: int = 12
    frames: int = 300               # per camera
    cameras: int = 2
    width: int = 640
    height: int = 360
    fps: float = 25.0
    drawings: int = 4               # drawings per person and camera, cycled while walking
    pose_period: int = 6            # frames per drawing
    min_visibility: float = 0.4     # detections of boxes at least this visible
    miss_rate: float = 0.05         # detections dropped at random
    jitter: float = 0.04            # detection box noise, fraction of the box size
    seed: int = 0

    def __post_init__(self):
        for ok, msg in ((self.people >= 1, "people must be >= 1"),
                        (self.frames >= 10, "frames must be >= 10"),
                        (self.cameras >= 1, "cameras must be >= 1"),
                        (self.width >= 160 and self.height >= 120,
                         "the frame must be at least 160x120"),
                        (self.drawings >= 1 and self.pose_period >= 1,
                         "drawings and pose_period must be >= 1"),
                        (0 <= self.miss_rate < 1, "miss_rate must be in [0, 1)")):
            if not ok:
                raise ValueError(f"scene: {msg}")


@dataclass
class Walk:
    """One person's pass through one camera: enters at ``start``, crosses in ``duration``."""
    person: int                     # 1-based global id
    camera: int                     # 0-based
    start: int                      # first frame (1-based)
    duration: int
    direction: int                  # +1 left to right, -1 right to left
    foot: float                     # y of the feet, pixels
    box_h: int
    box_w: int

    def box(self, frame: int, width: int) -> tuple[float, float] | None:
        """(left, top) at ``frame``, or None when the person is not in the view."""
        k = frame - self.start
        if k < 0 or k >= self.duration:
            return None
        t = k / max(1, self.duration - 1)
        x0, x1 = -self.box_w * 0.8, width - self.box_w * 0.2
        left = x0 + t * (x1 - x0) if self.direction > 0 else x1 - t * (x1 - x0)
        return left, self.foot - self.box_h


@dataclass
class Scene:
    cfg: SceneConfig
    walks: list[Walk] = field(default_factory=list)
    drawings: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict)
    backgrounds: list[np.ndarray] = field(default_factory=list)


def make_scene(cfg: SceneConfig) -> Scene:
    """Plan the walks and draw the people (deterministic in ``cfg``)."""
    import cv2

    rng = np.random.default_rng([cfg.seed, 2801])
    cams = [random_camera(rng) for _ in range(cfg.cameras)]
    scene = Scene(cfg)
    for c, cam in enumerate(cams):
        bg = np.empty((cfg.height, cfg.width, 3), np.float32)
        horizon = int(cam.horizon * 0.5 * cfg.height)
        bg[:horizon] = cam.scene
        bg[horizon:] = cam.ground
        for _ in range(8):   # shop fronts and posts behind the people
            x, w = int(rng.integers(0, cfg.width)), int(rng.integers(20, cfg.width // 4))
            top = int(rng.integers(0, max(1, horizon - 20)))
            cv2.rectangle(bg, (x, top), (x + w, horizon), tuple(float(v) for v in
                          rng.uniform(30, 220, 3)), -1)
        scene.backgrounds.append(np.clip(bg, 0, 255).astype(np.uint8))
    for p in range(1, cfg.people + 1):
        app = random_appearance(rng)
        order = list(rng.permutation(cfg.cameras))
        t = int(rng.integers(1, max(2, int(cfg.frames * 0.45))))
        for c in order:
            depth = float(rng.uniform(0, 1))              # 0 far, 1 near
            box_h = int(cfg.height * (0.30 + 0.30 * depth))
            box_w = max(8, box_h // 2)
            foot = cfg.height * (0.62 + 0.34 * depth)
            speed = float(rng.uniform(0.006, 0.012)) * cfg.width * (0.8 + 0.4 * depth)
            duration = int((cfg.width + box_w * 0.6) / speed)
            scene.walks.append(Walk(p, int(c), t, duration, int(rng.choice([-1, 1])), foot,
                                    box_h, box_w))
            scene.drawings[(p, int(c))] = [
                draw_person(app, cams[c], np.random.default_rng(rng.integers(2**63)),
                            CROP_H, CROP_W) for _ in range(cfg.drawings)]
            t += duration + int(rng.integers(5, 40))
    return scene


def frame_boxes(scene: Scene, camera: int, frame: int) -> list[tuple[Walk, tuple[int, ...]]]:
    """The walks in view, far to near (drawing order), each with its box (left, top, w, h)
    in whole pixels, not clipped."""
    cfg = scene.cfg
    out = []
    for w in scene.walks:
        if w.camera != camera:
            continue
        pos = w.box(frame, cfg.width)
        if pos is not None:
            out.append((w, (int(round(pos[0])), int(round(pos[1])), w.box_w, w.box_h)))
    out.sort(key=lambda item: (item[0].foot, item[0].person))
    return out


def render_camera(scene: Scene, camera: int):
    """Yield ``(frame_number, bgr_image, truth_rows)`` for one camera, frames from 1.

    ``truth_rows``: (k, 9) MOT ground truth of the frame (visibility: the share of the box,
    clipped to the picture, not covered by nearer people)."""
    import cv2

    cfg = scene.cfg
    cache: dict[tuple[int, int, int], np.ndarray] = {}
    for frame in range(1, cfg.frames + 1):
        img = scene.backgrounds[camera].copy()
        owner = np.zeros((cfg.height, cfg.width), np.int32)
        boxes = frame_boxes(scene, camera, frame)
        for w, (x, y, bw, bh) in boxes:
            k = ((frame - w.start) // cfg.pose_period) % cfg.drawings
            key = (w.person, camera, k)
            if key not in cache:
                cache[key] = cv2.resize(scene.drawings[(w.person, camera)][k], (bw, bh),
                                        interpolation=cv2.INTER_AREA)
            crop = cache[key]
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(cfg.width, x + bw), min(cfg.height, y + bh)
            if x1 <= x0 or y1 <= y0:
                continue
            img[y0:y1, x0:x1] = crop[y0 - y:y1 - y, x0 - x:x1 - x]
            owner[y0:y1, x0:x1] = w.person
        rows = []
        for w, (x, y, bw, bh) in boxes:
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(cfg.width, x + bw), min(cfg.height, y + bh)
            if x1 <= x0 or y1 <= y0:
                continue
            vis = float((owner[y0:y1, x0:x1] == w.person).sum()) / (bw * bh)
            rows.append([frame, w.person, x0, y0, x1 - x0, y1 - y0, 1, 1, round(vis, 3)])
        yield frame, img, np.asarray(rows, np.float64).reshape(-1, 9)


def detections(truth: np.ndarray, cfg: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """MOT detection rows (k, 10) from one frame's truth: visible enough, jittered, some
    dropped, confidence in [0.5, 1]."""
    out = []
    for r in truth:
        if r[8] < cfg.min_visibility or rng.random() < cfg.miss_rate:
            continue
        x, y, w, h = r[2:6]
        dx, dy, dw, dh = rng.normal(0, cfg.jitter, 4)
        w2, h2 = max(4.0, w * (1 + dw)), max(8.0, h * (1 + dh))
        out.append([r[0], -1, x + dx * w, y + dy * h, w2, h2, float(rng.uniform(0.5, 1.0)),
                    -1, -1, -1])
    return np.asarray(out, np.float64).reshape(-1, 10)


def write_scene(cfg: SceneConfig, out: str | os.PathLike, progress=None) -> dict[str, list[Path]]:
    """Write every camera's video, ground truth and detections into ``out`` (see the module
    doc) plus ``scene.json`` (the config); returns the paths by kind."""
    from rmnet.track.video import VideoWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scene = make_scene(cfg)
    paths: dict[str, list[Path]] = {"video": [], "gt": [], "det": []}
    det_rng = np.random.default_rng([cfg.seed, 2802])
    for c in range(cfg.cameras):
        name = f"cam{c + 1}"
        gt, det = [], []
        with VideoWriter(out / f"{name}.mp4", cfg.fps, (cfg.width, cfg.height)) as vw:
            for frame, img, truth in render_camera(scene, c):
                vw.write(img)
                gt.append(truth)
                det.append(detections(truth, cfg, det_rng))
                if progress is not None:
                    progress(1)
        paths["video"].append(out / f"{name}.mp4")
        paths["gt"].append(write_mot(out / f"{name}-gt.txt", np.concatenate(gt)))
        paths["det"].append(write_mot(out / f"{name}-det.txt", np.concatenate(det)))
    atomic_write_text(out / "scene.json", json.dumps(asdict(cfg), indent=1) + "\n")
    return paths
