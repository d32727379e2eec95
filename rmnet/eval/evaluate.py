"""Dataset evaluation, written once: a backend and a dataset in, re-id metrics out.

``evaluate(backend, dataset, flip=..., rerank=...)`` describes the query and gallery images
(``rmnet.eval.descriptors.describe``) and scores them (``score``: distances, optional
k-reciprocal re-ranking, then ``rmnet.eval.metrics.evaluate_rank`` under the Market-1501
protocol). ``tools/eval_market.py``, the demo and the INT8 tool all go through here, so a number
printed by one is computed exactly as by the others.

``evaluate_data(backend, root_or_dataset, format=None)`` is the one call for "score this model on
that dataset's test split": it reads the root in any format of ``rmnet.data.datasets`` and needs
only its query and gallery (a root without a training split, an evaluation set, is scored as it
is; training images, where there are any, are not used).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from rmnet.data.market import Dataset
from rmnet.eval.descriptors import describe
from rmnet.eval.features import FeatureSet
from rmnet.eval.metrics import RankResult, compute_distance, evaluate_rank


@dataclass(frozen=True)
class Rerank:
    """k-reciprocal re-ranking parameters (Zhong et al.'s defaults) and the convention of its
    original distance (rmnet.eval.rerank: "authors" or "torchreid")."""
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    convention: str = "authors"

    def describe(self) -> str:
        return (f"k-reciprocal re-ranking (k1 {self.k1}, k2 {self.k2}, lambda "
                f"{self.lambda_value:g}, {self.convention} convention)")


@dataclass
class Evaluation:
    query: FeatureSet
    gallery: FeatureSet
    dist: np.ndarray           # (queries, gallery) distances that were ranked
    result: RankResult


def score(query: FeatureSet, gallery: FeatureSet, distance: str = "cosine",
          rerank: Rerank | None = None, max_rank: int = 20) -> tuple[np.ndarray, RankResult]:
    """Distances (re-ranked with ``rerank``) and the Market-1501 metrics of two feature sets."""
    if rerank is not None:
        from rmnet.eval.rerank import re_rank_convention
        dist = re_rank_convention(query.features, gallery.features, rerank.convention,
                                  k1=rerank.k1, k2=rerank.k2, lambda_value=rerank.lambda_value,
                                  metric="cosine" if distance == "cosine" else "euclidean")
    else:
        dist = compute_distance(query.features, gallery.features, distance)
    return dist, evaluate_rank(dist, query.pids, gallery.pids, query.camids, gallery.camids,
                               max_rank=max_rank)


def evaluate(backend, dataset, *, flip: bool = False, rerank: Rerank | None = None,
             distance: str = "cosine", batch: int = 32, max_aspect_change: float = 2.0,
             max_rank: int = 20, progress: bool = True, desc: str = "features") -> Evaluation:
    """Describe ``dataset``'s query and gallery with ``backend`` and score them."""
    q, g = describe(backend, dataset, batch=batch, flip=flip,
                    max_aspect_change=max_aspect_change, progress=progress, desc=desc)
    dist, result = score(q, g, distance, rerank, max_rank)
    return Evaluation(q, g, dist, result)


def evaluate_data(backend, data: str | os.PathLike | Dataset, format: str | None = None,
                  **kwargs) -> Evaluation:
    """``evaluate`` on the test split (query and gallery) of ``data``: a dataset root in
    ``format`` (None: detected; rmnet.data.datasets), or an already parsed ``Dataset``. A root
    without a training split is fine: only query and gallery are read. ``kwargs`` as
    ``evaluate`` (flip, rerank, distance, batch, ...)."""
    if isinstance(data, Dataset):
        if format is not None:
            raise ValueError("format applies to a dataset root, not to a parsed Dataset")
        ds = data
    else:
        from rmnet.data.datasets import load_dataset
        ds = load_dataset(data, format)
    return evaluate(backend, ds, **kwargs)
