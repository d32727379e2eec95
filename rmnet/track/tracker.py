"""One tracker per camera fed RMNet descriptors, and identities linked across cameras.

The tracker itself is deep_sort_realtime's ``DeepSort`` (MIT licence; an optional dependency,
``requirements-track.txt``), created with ``embedder=None`` and given each frame's detections
with our descriptors (``update_tracks(raw_detections, embeds=..., others=...)``): Kalman
prediction, Mahalanobis gating, the matching cascade on cosine distance, IoU matching for the
rest. Nothing of it is copied here.

What goes in as the appearance (a ``Describer``):

- ``ReidDescriber(embedder)``: the detections cropped from the frame (clipped to it) and embedded
  in one batch per frame by ``rmnet.deploy.embedder.Embedder`` (any runtime, FP32 or INT8).
- ``NoReid()``: the same constant vector for every detection, so every cosine distance is 0 and
  only motion decides (DeepSort's gates and IoU): the same tracker without re-id.

Across cameras (``IdentityLinker``): each camera's tracker numbers its own tracks. A confirmed
track's descriptors are averaged, leaving out boxes cut by the picture's edge (a person entering
or leaving the view is half a person, and their descriptors match other people's better than
their own); once it has ``min_detections`` of them, the mean is searched in
the persistent gallery (``rmnet.gallery.Gallery``: FAISS + SQLite, saved atomically) and the
track takes the global id of the best entry whose cosine similarity is at least ``threshold``,
unless that id is already held by another live track of the same camera (one person is not twice
in one view) or by a track in view in another camera (one person is not in two places; unless
``overlapping_views``), or, with ``max_transit``, not seen anywhere for longer than that many
seconds (how long people take between the views: the camera topology's prior, as multi-camera
trackers use it); otherwise it gets a new global id. Its mean descriptor is then added to the gallery
(``Entry``: camera, time, ``pid`` = the global id) and added again every ``refresh`` detections,
so later queries see how the person looked recently. A gallery given by folder is loaded if it
exists, so identities persist across runs (saved by ``save()``). With ``NoReid`` there is no
linker: every track is its own identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmnet.eval.metrics import l2_normalize
from rmnet.track import optional_module


EDGE = 2   # pixels: a box closer to the picture's edge is cut by it (a person entering)


class TrackerUnavailable(RuntimeError):
    """The optional tracker package is not installed."""


def deep_sort_class():
    """deep_sort_realtime's ``DeepSort``, or ``TrackerUnavailable`` saying how to install it."""
    return optional_module("deep_sort_realtime.deepsort_tracker", "the tracker",
                           TrackerUnavailable).DeepSort


@dataclass(frozen=True)
class TrackConfig:
    """The tracker's and the linker's settings (DeepSort's names where they are DeepSort's)."""
    max_age: int = 30                  # frames a lost track is kept
    n_init: int = 3                    # detections before a track is confirmed
    max_cosine_distance: float = 0.3   # DeepSort's appearance gate
    max_iou_distance: float = 0.7
    nn_budget: int = 100               # descriptors kept per track for the gate
    link_threshold: float = 0.65       # cosine similarity to take a gallery identity
    min_detections: int = 8            # descriptors averaged before a track is linked
    refresh: int = 25                  # re-add the track's mean every this many descriptors
    overlapping_views: bool = False    # may one person be in two cameras' views at once?
    max_transit: float | None = None   # seconds an identity stays linkable after last seen


# --- appearance -------------------------------------------------------------------------------

def crop_boxes(frame: np.ndarray, ltwh: np.ndarray) -> list[np.ndarray]:
    """The boxes cut out of the frame, clipped to it (at least 1x1 pixel each)."""
    h, w = frame.shape[:2]
    out = []
    for x, y, bw, bh in np.asarray(ltwh, np.float64).reshape(-1, 4):
        x0 = int(np.clip(np.floor(x), 0, w - 1))
        y0 = int(np.clip(np.floor(y), 0, h - 1))
        x1 = int(np.clip(np.ceil(x + bw), x0 + 1, w))
        y1 = int(np.clip(np.ceil(y + bh), y0 + 1, h))
        out.append(frame[y0:y1, x0:x1])
    return out


class Describer:
    """Appearance descriptors of a frame's boxes: ``describe(frame, ltwh) -> (N, D)``."""
    reid = False

    def describe(self, frame: np.ndarray, ltwh: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class NoReid(Describer):
    """One constant unit vector for every box: association by motion alone."""

    def describe(self, frame: np.ndarray, ltwh: np.ndarray) -> np.ndarray:
        return np.ones((len(ltwh), 1), np.float32)


class ReidDescriber(Describer):
    """RMNet descriptors of the crops, one batch per frame."""
    reid = True

    def __init__(self, embedder):
        self.embedder = embedder

    def describe(self, frame: np.ndarray, ltwh: np.ndarray) -> np.ndarray:
        if not len(ltwh):
            return np.zeros((0, self.embedder.dim), np.float32)
        return self.embedder.embed(crop_boxes(frame, ltwh))


# --- one camera ---------------------------------------------------------------------------------

@dataclass
class TrackBox:
    """A confirmed track matched to a detection in this frame."""
    local_id: int
    ltwh: np.ndarray
    conf: float
    descriptor: np.ndarray
    whole: bool = True                 # the box lies inside the picture (not cut at its edge)


class CameraTracker:
    """deep_sort_realtime's tracker for one camera, fed our descriptors."""

    def __init__(self, describer: Describer, cfg: TrackConfig = TrackConfig()):
        DeepSort = deep_sort_class()
        self.describer, self.cfg = describer, cfg
        self.tracker = DeepSort(max_age=cfg.max_age, n_init=cfg.n_init,
                                max_cosine_distance=cfg.max_cosine_distance,
                                max_iou_distance=cfg.max_iou_distance, nn_budget=cfg.nn_budget,
                                embedder=None)

    def step(self, frame: np.ndarray, dets: np.ndarray) -> list[TrackBox]:
        """One frame: ``dets`` (k, >=7) MOT rows of this frame (left, top, w, h at 2:6, conf
        at 6). Returns the confirmed tracks updated by a detection in this frame."""
        dets = np.asarray(dets, np.float64).reshape(-1, max(7, np.shape(dets)[-1] if
                                                            len(dets) else 7))
        ltwh = dets[:, 2:6]
        emb = self.describer.describe(frame, ltwh)
        raw = [([float(v) for v in box], float(c), "person") for box, c in
               zip(ltwh, dets[:, 6])]
        tracks = self.tracker.update_tracks(raw, embeds=list(emb), frame=frame,
                                            others=list(range(len(raw))))
        out = []
        for t in tracks:
            if not t.is_confirmed() or t.time_since_update > 0:
                continue
            i = t.get_det_supplementary()
            if i is None:
                continue
            x, y, w, h = ltwh[i]
            whole = (x >= EDGE and y >= EDGE and x + w <= frame.shape[1] - EDGE
                     and y + h <= frame.shape[0] - EDGE)
            out.append(TrackBox(int(t.track_id), ltwh[i].copy(), float(dets[i, 6]), emb[i],
                                bool(whole)))
        return out


# --- across cameras -----------------------------------------------------------------------------

@dataclass
class _TrackState:
    total: np.ndarray                  # sum of the descriptors of whole boxes
    edge: np.ndarray                   # sum of those of boxes cut by the picture's edge
    count: int = 0
    global_id: int | None = None
    last_frame: int = 0
    added_at: int = 0


@dataclass
class IdentityLinker:
    """Global identities through a persistent gallery (see the module doc)."""
    gallery: object                    # rmnet.gallery.Gallery
    model_sha256: str
    cfg: TrackConfig = TrackConfig()
    fps: float = 25.0
    tracks: dict[tuple[int, int], _TrackState] = field(default_factory=dict)
    next_id: int = 1
    linked: int = 0                    # tracks that took an identity from the gallery

    @classmethod
    def open(cls, folder: str | os.PathLike, dim: int, model_sha256: str,
             cfg: TrackConfig = TrackConfig(), fps: float = 25.0) -> "IdentityLinker":
        """The gallery in ``folder`` (loaded if one is there, else a new one; ``GalleryError``
        if it holds another model's descriptors)."""
        from rmnet.gallery import Gallery, GalleryError
        from rmnet.gallery.gallery import MANIFEST

        folder = Path(folder)
        if (folder / MANIFEST).exists():
            g = Gallery.load(folder)
            if g.model_sha256 != model_sha256:
                raise GalleryError(f"{folder}: holds descriptors of another model "
                                   f"({g.model_sha256[:12]}, this one is {model_sha256[:12]})")
        else:
            g = Gallery.create(folder, dim=dim, model_sha256=model_sha256, index="flat")
        linker = cls(g, model_sha256, cfg, fps)
        known = [r.pid for r in g.store.get(g.store.all_ids()).values() if r.pid is not None]
        linker.next_id = max(known, default=0) + 1
        return linker

    def live_ids(self, camera: int, frame: int, exclude: tuple[int, int]) -> set[int]:
        """Identities another track holds now: in this camera, any track not yet given up
        (``max_age``); in another camera, one seen in this frame or the last, unless the views
        overlap (``cfg.overlapping_views``)."""
        out = set()
        for k, s in self.tracks.items():
            if k == exclude or s.global_id is None:
                continue
            if k[0] == camera and frame - s.last_frame <= self.cfg.max_age:
                out.add(s.global_id)
            elif k[0] != camera and not self.cfg.overlapping_views and frame - s.last_frame <= 1:
                out.add(s.global_id)
        return out

    def observe(self, camera: int, frame: int, box: TrackBox) -> int | None:
        """Record one descriptor of a camera's track; its global id, or None while pending."""
        from rmnet.gallery import Entry

        key = (camera, box.local_id)
        s = self.tracks.get(key)
        if s is None:
            s = self.tracks[key] = _TrackState(np.zeros(len(box.descriptor), np.float64),
                                               np.zeros(len(box.descriptor), np.float64))
        s.last_frame = frame
        if not box.whole:              # half a person entering or leaving: not for linking
            s.edge += box.descriptor
            return s.global_id
        s.total += box.descriptor
        s.count += 1
        if s.global_id is None and s.count < self.cfg.min_detections:
            return None
        mean = l2_normalize(s.total[None].astype(np.float32))
        if s.global_id is None:
            s.global_id = self.match(mean, camera, frame, key)
        if s.global_id is not None and (s.added_at == 0
                                        or s.count - s.added_at >= self.cfg.refresh):
            self.gallery.add(mean, [Entry(path=f"cam{camera + 1}/track{box.local_id}",
                                          camera=camera + 1, timestamp=frame / self.fps,
                                          pid=s.global_id)], model_sha256=self.model_sha256)
            s.added_at = s.count
        return s.global_id

    def recent_ids(self, frame: int, key: tuple[int, int]) -> set[int] | None:
        """Identities last seen (anywhere) within ``max_transit`` seconds; None: no limit."""
        if self.cfg.max_transit is None:
            return None
        window = self.cfg.max_transit * self.fps
        return {s.global_id for k, s in self.tracks.items()
                if k != key and s.global_id is not None and frame - s.last_frame <= window}

    def match(self, mean: np.ndarray, camera: int, frame: int, key: tuple[int, int]) -> int:
        busy = self.live_ids(camera, frame, key)
        recent = self.recent_ids(frame, key)
        if len(self.gallery):
            for hit in self.gallery.search(mean, k=min(50, len(self.gallery)),
                                           model_sha256=self.model_sha256)[0]:
                if hit.score < self.cfg.link_threshold:
                    break
                if hit.pid is not None and hit.pid not in busy and (recent is None
                                                                    or hit.pid in recent):
                    self.linked += 1
                    return int(hit.pid)
        gid = self.next_id
        self.next_id += 1
        return gid

    def global_id(self, camera: int, local_id: int) -> int | None:
        s = self.tracks.get((camera, local_id))
        return None if s is None else s.global_id

    def finish(self) -> None:
        """Give the tracks that ended before ``min_detections`` an identity (searched with
        what they have)."""
        for key, s in sorted(self.tracks.items(), key=lambda kv: kv[1].last_frame):
            if s.global_id is None:
                mean = l2_normalize((s.total if s.count else s.edge)[None].astype(np.float32))
                s.global_id = self.match(mean, key[0], s.last_frame, key)

    def save(self) -> Path:
        return self.gallery.save()


class SeparateIdentities:
    """Without re-id: every (camera, track) is its own global identity."""

    def __init__(self):
        self.ids: dict[tuple[int, int], int] = {}
        self.linked = 0

    def observe(self, camera: int, frame: int, box: TrackBox) -> int:
        return self.ids.setdefault((camera, box.local_id), len(self.ids) + 1)

    def global_id(self, camera: int, local_id: int) -> int | None:
        return self.ids.get((camera, local_id))

    def finish(self) -> None:
        pass
