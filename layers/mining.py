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

With several training processes (one per GPU, ``ranks`` > 1) the identities of each round are
shared out: every rank draws the same shuffled round from a generator seeded alike on all ranks
and keeps its own share of it (``shard_identities``), so in one round no two ranks train on the
same identity; its image choices and its loss estimates (the mining) are its own.
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


def mix_terms(terms: np.ndarray, weights) -> np.ndarray:
    """Step b's estimate: the per-sample loss terms (N, T), one column per loss (AM-Softmax,
    Center, Push, GlobPush, as the prototxt's feedback layer lists them) mixed by their
    ``weights`` (T,) into one loss per sample (N,)."""
    terms = np.asarray(terms, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if terms.ndim != 2 or terms.shape[1] != weights.size:
        raise ValueError(f"{terms.shape[-1] if terms.ndim else 0} per-sample loss columns but "
                         f"{weights.size} weights")
    return terms @ weights


def shard_identities(order: np.ndarray, rank: int, ranks: int) -> np.ndarray:
    """The share of one round's shuffled identities ``order`` that training process ``rank``
    of ``ranks`` trains on: every ranks-th identity from position rank. The shares are disjoint,
    cover the round, and differ in size by at most one."""
    if ranks < 1 or not 0 <= rank < ranks:
        raise ValueError(f"rank must be in [0, {ranks}) with ranks >= 1, got rank {rank}")
    order = np.asarray(order)
    if order.size < ranks:
        raise ValueError(f"{order.size} identities cannot be shared out over {ranks} training "
                         f"processes")
    return order[rank::ranks]


def rank_seed(seed, rank: int):
    """A seed for rank ``rank``'s own random choices, distinct per rank (int or sequence seed)."""
    base = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    return [*base, 7919, rank]


class HardSampleMiner:
    """Chooses the images of each training batch from their last known losses."""

    def __init__(self, labels: np.ndarray, batch_size: int, images_per_id: int,
                 keep_fraction: float = 0.5,
                 mining: bool = True, weighted: bool = False, seed=0,
                 weight_clip: tuple[float, float] = (0.25, 4.0), rank: int = 0,
                 ranks: int = 1):
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
        self.losses = np.full(labels.size, np.nan)   # last known loss per image (nan: unseen)
        self.rank, self.ranks = rank, ranks
        if ranks == 1:
            self.rng = np.random.default_rng(seed)
            self._round_rng = self.rng        # one stream, as a single process always had
        else:
            self._round_rng = np.random.default_rng(seed)       # alike on every rank
            self.rng = np.random.default_rng(rank_seed(seed, rank))
        self.identities = np.unique(labels)
        shard_identities(self.identities, rank, ranks)     # refuses too few identities
        self.by_identity = {int(c): np.flatnonzero(labels == c) for c in self.identities}
        self.excluded: set[int] = set()
        self.round = 0
        self._order = self._round_order()
        self._pos = 0

    # -- feedback --------------------------------------------------------------------------
    def update(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """Record the per-sample losses (N,) of images ``ids`` (see ``mix_terms``)."""
        ids = np.asarray(ids, dtype=np.int64)
        losses = np.asarray(losses, dtype=np.float64)
        if losses.shape != ids.shape:
            raise ValueError(f"expected {ids.size} per-sample losses, got shape {losses.shape}")
        self.losses[ids] = losses

    def score(self, ids: np.ndarray) -> np.ndarray:
        """Estimated loss of each image: its last known loss; never seen = inf (hardest)."""
        s = self.losses[np.asarray(ids, dtype=np.int64)]
        return np.where(np.isnan(s), np.inf, s)

    def exclude(self, ids) -> None:
        """Never draw these images again (e.g. unreadable files)."""
        self.excluded.update(int(i) for i in ids)

    # -- sampling --------------------------------------------------------------------------
    def _round_order(self) -> np.ndarray:
        """The next round's identities, in order: this rank's share of a shuffled pass."""
        return shard_identities(self._round_rng.permutation(self.identities), self.rank,
                                self.ranks)

    def _next_identity(self) -> int:
        if self._pos >= len(self._order):
            self.round += 1
            self._order = self._round_order()
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
