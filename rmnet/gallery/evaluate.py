"""CMC/mAP through a gallery index: what an approximate index costs in re-identification accuracy.

``evaluate_rank`` (rmnet.eval.metrics) scores a full (queries x gallery) distance matrix. A
deployed gallery instead answers each query with its top ``K`` entries, and an approximate index
may miss some of the true top ``K``. ``topk_distance`` turns such answers into a distance matrix
that ``evaluate_rank`` scores as the ranked list the index produced:

- a retrieved item gets its distance ``1 - cosine`` from the index;
- an item the index did not return gets ``+inf``: it ranks after every retrieved one. Among
  themselves these keep ``evaluate_rank``'s tie rule (gallery order), an arbitrary order that
  stands for "somewhere after the top K".

Consequences under the Market-1501 protocol: junk (same person and camera, and pid -1) is
removed *after* retrieval, so junk among the K retrieved uses up places, and the scored list is
at most K minus the junk long before the "+inf" tail. CMC at rank r is exactly that of the
index's ranking as long as r is well below K (K = 1000 by default, against max rank 20). mAP
depends on where every true match is: a match the index ranks beyond K, or misses, is counted
in the arbitrary tail. With K at least the gallery size and an exact index the scores are
those of the brute-force path (tests/test_gallery.py checks it); an IVF index still returns
only the entries of the cells it scanned, whatever K is, which is exactly its loss.
"""
from __future__ import annotations

import numpy as np

from rmnet.eval.metrics import RankResult, evaluate_rank, l2_normalize
from rmnet.gallery import index as ix

DEFAULT_K = 1000


def topk_distance(ids: np.ndarray, sims: np.ndarray, n_gallery: int) -> np.ndarray:
    """(Q, n_gallery) float32 distances from top-K answers: ``1 - sim`` where gallery item
    ``ids[q, j]`` was returned (ids index the gallery, -1 = nothing), ``+inf`` elsewhere."""
    ids, sims = np.asarray(ids), np.asarray(sims, np.float32)
    if ids.shape != sims.shape or ids.ndim != 2:
        raise ValueError(f"ids {ids.shape} and sims {sims.shape} must be the same (Q, K) shape")
    if ids.size and ids.max() >= n_gallery:
        raise ValueError(f"an id {int(ids.max())} is outside the gallery of {n_gallery}")
    dist = np.full((len(ids), n_gallery), np.inf, np.float32)
    rows, cols = np.nonzero(ids >= 0)
    dist[rows, ids[rows, cols]] = 1.0 - sims[rows, cols]
    return dist


def index_for(mode: str, n_gallery: int) -> ix.IndexSpec:
    """``exact`` -> flat; ``approx`` -> the approximate kind ``auto`` picks for large galleries
    (with its parameters for this gallery size); anything else is a spec (``parse_spec``)."""
    if mode == "exact":
        return ix.IndexSpec("flat")
    if mode == "approx":
        return ix.approx_spec(n_gallery)
    spec = ix.parse_spec(mode)
    if spec is None:
        return ix.auto_spec(n_gallery)
    return spec


def index_distance(query_feats: np.ndarray, gallery_feats: np.ndarray, mode: str,
                   k: int = DEFAULT_K, seed: int = 0) -> tuple[np.ndarray, ix.IndexSpec, int]:
    """Distances (``topk_distance``) from searching the gallery through an index of ``mode``
    (``index_for``) with K = min(k, gallery size); returns (dist, resolved spec, K)."""
    if k < 1:
        raise ValueError(f"index k must be >= 1, got {k}")
    q, g = l2_normalize(query_feats), l2_normalize(gallery_feats)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features have {q.shape[1]} dimensions, gallery features "
                         f"{g.shape[1]}")
    built = ix.build_filled(index_for(mode, len(g)), g, seed=seed)
    kk = int(min(k, len(g)))
    ids, sims = ix.search(built.index, q, kk)
    return topk_distance(ids, sims, len(g)), built.spec, kk


def index_score(query, gallery, mode: str, k: int = DEFAULT_K, max_rank: int = 20,
                seed: int = 0) -> tuple[np.ndarray, RankResult, ix.IndexSpec, int]:
    """``index_distance`` of two feature sets (``rmnet.eval.features.FeatureSet``) scored by
    ``evaluate_rank``: (dist, result, resolved spec, K)."""
    dist, spec, kk = index_distance(query.features, gallery.features, mode, k=k, seed=seed)
    res = evaluate_rank(dist, query.pids, gallery.pids, query.camids, gallery.camids,
                        max_rank=max_rank)
    return dist, res, spec, kk
