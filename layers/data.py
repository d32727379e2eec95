"""The Market-1501 data layer with weighted hard-sample mining, and its loss feedback layer.

`MarketDataLayer` (tops: data, label, sample_weight, sample_id) feeds the train and test nets
under the plain `caffe train` command:

- TRAIN: batches chosen by `layers.mining.HardSampleMiner` (paper V.ii steps a-e) from the last
  known per-sample losses, augmented by `layers.augment` with a difficulty that rises each round;
- TEST: the train images in a fixed order, resized only, weights 1 (the test net reports losses).

`HardSampleFeedbackLayer` (bottoms: sample_id and per-sample loss blobs) hands each forward pass's
per-sample losses back to the data layer of the same net, found by its layer name (``source``).

Images are decoded and augmented in worker processes (``workers``, default 2), a few batches
ahead (``prefetch``), so Caffe's thread only copies finished batches. Which images and which
augmentation each batch gets is decided in the layer (seeded), so results do not depend on which
worker ran first. An unreadable image is replaced by zeros with weight 0 (it adds no loss or
gradient), never drawn again, and reported once per round.

Output: raw BGR 0..255 float32 (N, 3, H, W) at the variant's size, as the nets expect.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layers import augment
from layers.mining import HardSampleMiner

try:
    import caffe
except ImportError:  # pragma: no cover
    caffe = None


@dataclass(frozen=True)
class DataConfig:
    """param_str of MarketDataLayer (JSON). Unknown keys are refused."""
    root: str
    height: int = 160
    width: int = 64
    batch_size: int = 64
    images_per_id: int = 4
    mining: bool = True
    weighted: bool = False
    keep_fraction: float = 0.5
    difficulty_start: float = 0.0
    difficulty_step: float = 0.1
    max_zoom: float = 0.2
    max_erase_prob: float = 0.5
    max_erase_area: float = 0.3
    num_classes: int | None = None
    workers: int = 2
    prefetch: int = 4
    seed: int = 0
    name: str = "data"   # what HardSampleFeedbackLayer's "source" refers to

    def __post_init__(self):
        checks = [
            (self.height >= 16 and self.width >= 16, "height and width must be >= 16"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.images_per_id >= 1, "images_per_id must be >= 1"),
            (0 < self.keep_fraction <= 1, "keep_fraction must be in (0, 1]"),
            (0 <= self.difficulty_start <= 1, "difficulty_start must be in [0, 1]"),
            (self.difficulty_step >= 0, "difficulty_step must be >= 0"),
            (self.workers >= 0, "workers must be >= 0 (0: decode in Caffe's thread)"),
            (self.prefetch >= 1, "prefetch must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def difficulty(self, round_: int) -> float:
        return min(1.0, self.difficulty_start + self.difficulty_step * round_)


# --- work done in the worker processes ------------------------------------------------------

@dataclass(frozen=True)
class Job:
    index: int
    paths: list[str]
    params: list[augment.AugmentParams | None]
    height: int
    width: int


def render(job: Job) -> tuple[int, np.ndarray, list[int]]:
    """Load, augment and stack one batch: (index, uint8 (N,H,W,3), positions of bad images)."""
    from rmnet.images import ImageError, load_bgr

    out = np.zeros((len(job.paths), job.height, job.width, 3), np.uint8)
    bad = []
    for i, (path, p) in enumerate(zip(job.paths, job.params)):
        try:
            out[i] = augment.apply(load_bgr(path), job.height, job.width, p)
        except ImageError:
            bad.append(i)
    return job.index, out, bad


def _worker_init() -> None:
    import cv2
    cv2.setNumThreads(1)


# --- the batch producer (no Caffe) ---------------------------------------------------------

class BatchSource:
    """Plans batches (ids, weights, augmentation) and renders them, prefetching in workers."""

    def __init__(self, cfg: DataConfig, paths: list[str], labels: np.ndarray, train: bool,
                 log=print):
        self.cfg, self.paths, self.labels, self.train = cfg, paths, labels, train
        self.log = log
        self.miner = HardSampleMiner(labels, cfg.batch_size, cfg.images_per_id,
                                     keep_fraction=cfg.keep_fraction, mining=cfg.mining and train,
                                     weighted=cfg.weighted, seed=cfg.seed)
        self.aug_rng = np.random.default_rng(cfg.seed + 1)
        self._test_pos = 0
        self._planned = 0
        self._pending: collections.deque = collections.deque()
        self._pool = None
        self.bad: set[int] = set()
        self._bad_this_round: list[int] = []
        self._round = 0

    def _plan(self) -> tuple[Job, np.ndarray, np.ndarray, int]:
        cfg = self.cfg
        if self.train:
            b = self.miner.next_batch()
            ids, weights, round_ = b.ids, b.weights, b.round
            d = cfg.difficulty(round_)
            params = [augment.draw_params(self.aug_rng, d, cfg.max_zoom, cfg.max_erase_prob,
                                          cfg.max_erase_area) for _ in ids]
        else:
            n = len(self.paths)
            ids = (self._test_pos + np.arange(cfg.batch_size)) % n
            self._test_pos = int((self._test_pos + cfg.batch_size) % n)
            weights, round_ = np.ones(cfg.batch_size, np.float32), 0
            params = [None] * cfg.batch_size
        job = Job(self._planned, [self.paths[i] for i in ids], params, cfg.height, cfg.width)
        self._planned += 1
        return job, ids, weights, round_

    def _submit(self) -> None:
        job, ids, weights, round_ = self._plan()
        if self._pool is not None:
            handle = self._pool.apply_async(render, (job,))
        else:
            handle = render(job)
        self._pending.append((handle, ids, weights, round_))

    def start(self) -> None:
        if self.cfg.workers > 0 and self._pool is None:
            # fork: the workers only decode and augment (numpy, OpenCV), never touch Caffe.
            ctx = mp.get_context("fork")
            self._pool = ctx.Pool(self.cfg.workers, initializer=_worker_init)
        while len(self._pending) < self.cfg.prefetch:
            self._submit()

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8 NHWC, labels, weights, ids) of the next batch."""
        if not self._pending:
            self.start()
        handle, ids, weights, round_ = self._pending.popleft()
        _, images, bad = handle.get() if self._pool is not None else handle
        if round_ != self._round:
            self._report_bad()
            self._round = round_
        if bad:
            weights = weights.copy()
            weights[bad] = 0.0
            bad_ids = [int(ids[i]) for i in bad]
            new = [i for i in bad_ids if i not in self.bad]
            self.bad.update(bad_ids)
            self._bad_this_round.extend(new)
            self.miner.exclude(bad_ids)
            if len(self.bad) == len(self.paths):
                raise RuntimeError("no readable image left in the dataset")
        self._submit()
        return images, self.labels[ids], weights, ids

    def _report_bad(self) -> None:
        if self._bad_this_round:
            shown = ", ".join(self.paths[i] for i in self._bad_this_round[:3])
            more = len(self._bad_this_round) - 3
            self.log(f"MarketDataLayer: skipped {len(self._bad_this_round)} unreadable image(s) "
                     f"this round: {shown}{f' and {more} more' if more > 0 else ''}")
            self._bad_this_round = []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


def load_train_list(root: str | Path) -> tuple[list[str], np.ndarray, int]:
    """(paths, contiguous labels, number of identities) of a Market-1501-layout train split."""
    from rmnet.market import load_market

    ds = load_market(root)
    paths = [str(r.path) for r in ds.train]
    labels = np.asarray([ds.train_label(r.pid) for r in ds.train], dtype=np.int64)
    return paths, labels, int(labels.max()) + 1


# --- Caffe adapters --------------------------------------------------------------------------

_SOURCES: dict[tuple[str, int], BatchSource] = {}


if caffe is not None:
    from layers.errors import reports_errors
    from layers.config import parse_config

    @reports_errors
    class MarketDataLayer(caffe.Layer):
        """Tops: data (N,3,H,W) BGR 0..255, label (N,), sample_weight (N,), sample_id (N,)."""

        def setup(self, bottom, top):
            if bottom or len(top) != 4:
                raise ValueError("MarketDataLayer: no bottoms, four tops "
                                 "(data, label, sample_weight, sample_id)")
            cfg = parse_config(DataConfig, self.param_str, "MarketDataLayer")
            paths, labels, n_ids = load_train_list(cfg.root)
            if cfg.num_classes is not None and n_ids != cfg.num_classes:
                raise ValueError(f"MarketDataLayer: {cfg.root} has {n_ids} train identities but "
                                 f"the net was generated for num_classes={cfg.num_classes}")
            train = self.phase == caffe.TRAIN
            self.source = BatchSource(cfg, paths, labels, train,
                                      log=lambda m: print(m, file=sys.stderr, flush=True))
            # Caffe's Python layers do not see their own layer name: the feedback layer finds
            # this one by the "name" in its param_str (the generator uses the layer's name).
            _SOURCES[(cfg.name, self.phase)] = self.source
            self.cfg = cfg

        def reshape(self, bottom, top):
            n, h, w = self.cfg.batch_size, self.cfg.height, self.cfg.width
            top[0].reshape(n, 3, h, w)
            for i in range(1, 4):          # RawBlobVec does not slice
                top[i].reshape(n)

        def forward(self, bottom, top):
            images, labels, weights, ids = self.source.next()
            top[0].data[...] = images.transpose(0, 3, 1, 2)
            top[1].data[...] = labels
            top[2].data[...] = weights
            top[3].data[...] = ids

        def backward(self, top, propagate_down, bottom):
            pass

    @dataclass(frozen=True)
    class FeedbackConfig:
        source: str = "data"
        weights: list[float] = field(default_factory=lambda: [1.0])

    @reports_errors
    class HardSampleFeedbackLayer(caffe.Layer):
        """Bottoms: sample_id (N,), then per-sample loss blobs ((N,) or (N,k)). Their columns,
        in order, are weighted by ``weights`` into each sample's estimated loss (paper V.ii b)."""

        def setup(self, bottom, top):
            if len(bottom) < 2 or top:
                raise ValueError("HardSampleFeedbackLayer: bottoms sample_id and >= 1 per-sample "
                                 "loss blob; no tops")
            self.cfg = parse_config(FeedbackConfig, self.param_str, "HardSampleFeedbackLayer")

        def reshape(self, bottom, top):
            pass

        def forward(self, bottom, top):
            source = _SOURCES.get((self.cfg.source, self.phase))
            if source is None:
                raise ValueError(f"HardSampleFeedbackLayer: no MarketDataLayer named "
                                 f"{self.cfg.source!r} in this net")
            n = bottom[0].data.shape[0]
            ids = bottom[0].data.reshape(n).astype(np.int64)
            terms = np.concatenate([bottom[i].data.reshape(n, -1) for i in range(1, len(bottom))], axis=1)
            if terms.shape[1] != len(self.cfg.weights):
                raise ValueError(f"HardSampleFeedbackLayer: {terms.shape[1]} per-sample loss "
                                 f"columns but {len(self.cfg.weights)} weights")
            if source.train:
                source.miner.update(ids, terms @ np.asarray(self.cfg.weights, np.float64))

        def backward(self, top, propagate_down, bottom):
            pass
