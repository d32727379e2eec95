"""Weighted hard-sample mining (paper V.ii, steps a-e), as plain numpy.

The paper's loop, and how it runs here under the plain ``caffe train`` command (no extra forward
passes):

a. sample k augmented images for each identity: a batch takes the next identities of a shuffled
   pass over all train identities (a *round*) and k images of each (without replacement when the
   identity has k or more images, with replacement otherwise: an identity with one image works);
b. estimate each sample's loss: the *last known* per-sample loss of that image, recorded by the
   ``hsm_feedback`` layer after each forward pass (a weighted mix of the per-sample loss terms:
   AM-Softmax, Center, Push, GlobPush; the paper's step b excludes Push, the "+HSM" row of
   Table 2 uses AM-Softmax alone; the weights come from the prototxt). An image never seen yet
   counts as hardest, so every image is seen early;
c. keep the hardest ``keep_fraction`` (50%) of the candidates;
d. train on them; with *weighted* HSM ("+ Weighted HSM" row) each kept sample's loss is weighted
   by its estimated loss relative to the batch mean (clipped to [0.25, 4], renormalised to mean
   1); without, all weights are 1;
e. each new round raises the augmentation difficulty (layers.augment).

Everything random comes from one seeded generator, so the same seed and the same loss feedback
give the same batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    ids: np.ndarray       # (N,) int64 indices into the image list
    weights: np.ndarray   # (N,) float32 per-sample loss weights (mean 1)
    round: int            # which pass over the identities this batch belongs to


class HardSampleMiner:
    """Chooses the images of each training batch from their last known losses."""

    def __init__(self, labels: np.ndarray, batch_size: int, images_per_id: int,
                 loss_weights: list[float] | None = None, keep_fraction: float = 0.5,
                 mining: bool = True, weighted: bool = False, seed: int = 0,
                 weight_clip: tuple[float, float] = (0.25, 4.0)):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-d array")
        if batch_size < 1 or images_per_id < 1:
            raise ValueError("batch_size and images_per_id must be >= 1")
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.labels = labels
        self.batch_size = batch_size
        self.images_per_id = images_per_id
        self.keep_fraction = keep_fraction if mining else 1.0
        self.mining = mining
        self.weighted = weighted and mining
        self.weight_clip = weight_clip
        self.loss_weights = np.asarray(loss_weights if loss_weights is not None else [1.0],
                                       dtype=np.float64)
        self.losses = np.full((labels.size, self.loss_weights.size), np.nan)
        self.rng = np.random.default_rng(seed)
        self.identities = np.unique(labels)
        self.by_identity = {int(c): np.flatnonzero(labels == c) for c in self.identities}
        self.excluded: set[int] = set()
        self.round = 0
        self._order = self.rng.permutation(self.identities)
        self._pos = 0

    # -- feedback --------------------------------------------------------------------------
    def update(self, ids: np.ndarray, per_term: np.ndarray) -> None:
        """Record per-sample losses (shape (N, terms) or (N,)) for images ``ids``."""
        per_term = np.asarray(per_term, dtype=np.float64).reshape(len(ids), -1)
        if per_term.shape[1] != self.loss_weights.size:
            raise ValueError(f"expected {self.loss_weights.size} loss terms per sample, "
                             f"got {per_term.shape[1]}")
        self.losses[np.asarray(ids, dtype=np.int64)] = per_term

    def score(self, ids: np.ndarray) -> np.ndarray:
        """Estimated loss of each image: weighted mix of its last known terms; unknown = inf."""
        rows = self.losses[np.asarray(ids, dtype=np.int64)]
        s = rows @ self.loss_weights
        return np.where(np.isnan(s), np.inf, s)

    def exclude(self, ids) -> None:
        """Never draw these images again (e.g. unreadable files)."""
        self.excluded.update(int(i) for i in ids)

    # -- sampling --------------------------------------------------------------------------
    def _next_identity(self) -> int:
        if self._pos >= len(self._order):
            self.round += 1
            self._order = self.rng.permutation(self.identities)
            self._pos = 0
        c = int(self._order[self._pos])
        self._pos += 1
        return c

    def _draw_images(self, c: int, k: int) -> np.ndarray:
        pool = self.by_identity[c]
        if self.excluded:
            pool = np.array([i for i in pool if int(i) not in self.excluded], dtype=np.int64)
        if pool.size == 0:
            return pool
        return self.rng.choice(pool, size=k, replace=pool.size < k)

    def next_batch(self) -> Batch:
        """Steps a-d for one batch of ``batch_size`` images."""
        n_candidates = math.ceil(self.batch_size / self.keep_fraction)
        round_ = self.round if self._pos < len(self._order) else self.round + 1
        picks: list[np.ndarray] = []
        have, tries = 0, 0
        while have < n_candidates:
            c = self._next_identity()
            imgs = self._draw_images(c, min(self.images_per_id, n_candidates - have))
            picks.append(imgs)
            have += imgs.size
            tries += 1
            if tries > 10 * len(self.identities) + n_candidates:
                raise RuntimeError("no drawable images left (all excluded?)")
        cand = np.concatenate(picks)
        if not self.mining:
            return Batch(cand, np.ones(cand.size, np.float32), round_)
        scores = self.score(cand)
        # Hardest first; ties (e.g. all unknown) in random order.
        shuffle = self.rng.permutation(cand.size)
        order = shuffle[np.argsort(-scores[shuffle], kind="stable")]
        keep = order[: self.batch_size]
        ids, s = cand[keep], scores[keep]
        weights = np.ones(ids.size, np.float64)
        if self.weighted:
            known = np.isfinite(s)
            if known.any() and s[known].mean() > 0:
                weights[known] = np.clip(s[known] / s[known].mean(), *self.weight_clip)
            weights /= weights.mean()
        return Batch(ids, weights.astype(np.float32), round_)
