"""k-reciprocal re-ranking (rmnet.eval.rerank) against a slow, direct implementation of the paper.

The reference below is written from the paper (Zhong et al., CVPR 2017, sections 3.2-3.4) with
the conventions of the authors' released code that the published numbers depend on (see the
rmnet.eval.rerank module doc): squared Euclidean original distance, each row divided by its maximum,
neighbour lists N(i, k) including i, R(i, k) from N(., k+1), the strict > 2/3 overlap rule,
Gaussian weights exp(-D), query expansion over the k2 nearest, Jaccard distance via min/max
sums, final = J (1 - lambda) + D lambda. It uses dense float64 matrices, Python sets and plain
loops, nothing shared with the module under test.
"""
from __future__ import annotations

import numpy as np
import pytest

from rmnet.eval.metrics import euclidean_distance, evaluate_rank
from rmnet.eval.rerank import re_rank, re_rank_convention, re_rank_features, smallest_k_sorted


def reference_rerank(qf: np.ndarray, gf: np.ndarray, k1: int, k2: int, lam: float,
                     metric: str = "euclidean", power: int = 1) -> np.ndarray:
    x = np.concatenate([qf, gf]).astype(np.float64)
    n, nq = len(x), len(qf)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if metric == "euclidean":
                d[i, j] = np.sum((x[i] - x[j]) ** 2)
            else:
                d[i, j] = 1.0 - np.dot(x[i], x[j])
    d = d ** power
    D = np.array([d[i] / d[i].max() for i in range(n)])
    ranking = [list(np.argsort(D[i], kind="stable")) for i in range(n)]

    def nn(i, k):
        return ranking[i][:k]

    def recip(i, k):
        return {j for j in nn(i, k + 1) if i in nn(j, k + 1)}

    half = int(round(k1 / 2))
    V = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        expanded = set(r)
        for c in r:
            rc = recip(c, half)
            if len(rc & r) > 2.0 / 3.0 * len(rc):
                expanded |= rc
        idx = sorted(expanded)
        w = np.exp(-D[i, idx])
        V[i, idx] = w / w.sum()
    if k2 > 1:
        V = np.array([V[nn(i, k2)].mean(axis=0) for i in range(n)])
    out = np.zeros((nq, n - nq))
    for i in range(nq):
        for j in range(nq, n):
            jac = 1.0 - np.minimum(V[i], V[j]).sum() / np.maximum(V[i], V[j]).sum()
            out[i, j - nq] = jac * (1 - lam) + D[i, j] * lam
    return out


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 6, 3, 0.3), (1, 5, 1, 0.3), (2, 8, 4, 0.0),
                                            (3, 20, 6, 0.3), (4, 3, 2, 1.0)])
def test_matches_direct_implementation(seed, k1, k2, lam):
    rng = np.random.default_rng(seed)
    # Clustered points, so reciprocal sets and the 2/3 expansion are non-trivial.
    centres = rng.normal(size=(6, 8))
    qf = centres[rng.integers(0, 6, 15)] + 0.6 * rng.normal(size=(15, 8))
    gf = centres[rng.integers(0, 6, 40)] + 0.6 * rng.normal(size=(40, 8))
    want = reference_rerank(qf, gf, k1, k2, lam)
    got = re_rank_features(qf, gf, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (15, 40) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_expansion_changes_the_result():
    """The case of test_matches_direct_implementation really exercises the 2/3 expansion and
    query expansion: without them (k2=1, or lambda=1) the numbers differ."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    qf = centres[rng.integers(0, 6, 15)] + 0.6 * rng.normal(size=(15, 8))
    gf = centres[rng.integers(0, 6, 40)] + 0.6 * rng.normal(size=(40, 8))
    a = re_rank_features(qf, gf, k1=6, k2=3)
    b = re_rank_features(qf, gf, k1=6, k2=1)
    assert np.abs(a - b).max() > 1e-2


def test_cosine_matches_reference_and_equals_euclidean_on_unit_features():
    rng = np.random.default_rng(5)
    qf, gf = rng.normal(size=(12, 16)), rng.normal(size=(30, 16))
    want = reference_rerank(qf, gf, 5, 3, 0.3, metric="cosine")
    got = re_rank_features(qf, gf, k1=5, k2=3, metric="cosine")
    np.testing.assert_allclose(got, want, atol=2e-5)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    np.testing.assert_allclose(re_rank_features(qn, gn, k1=5, k2=3, metric="euclidean"), got,
                               atol=2e-5)


def test_distance_matrix_interface_squares_its_inputs():
    """re_rank squares the blocks, as the authors' and torchreid's functions of that name: plain
    Euclidean blocks give the authors' method (= re_rank_features), squared blocks (what
    torchreid passes) give the square of the authors' distance (= the torchreid convention)."""
    rng = np.random.default_rng(6)
    qf, gf = rng.normal(size=(10, 6)), rng.normal(size=(25, 6))
    eu = lambda a, b: euclidean_distance(a, b)  # noqa: E731
    sq = lambda a, b: euclidean_distance(a, b, squared=True)  # noqa: E731
    authors = reference_rerank(qf, gf, 6, 3, 0.3)
    torchreid = reference_rerank(qf, gf, 6, 3, 0.3, power=2)
    assert np.abs(authors - torchreid).max() > 1e-2        # the conventions really differ
    got = re_rank(eu(qf, gf), eu(qf, qf), eu(gf, gf), k1=6, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(got, authors, atol=2e-5)
    got = re_rank(sq(qf, gf), sq(qf, qf), sq(gf, gf), k1=6, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(got, torchreid, atol=2e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_conventions_match_the_reference(metric):
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(5, 8))
    qf = centres[rng.integers(0, 5, 12)] + 0.6 * rng.normal(size=(12, 8))
    gf = centres[rng.integers(0, 5, 30)] + 0.6 * rng.normal(size=(30, 8))
    for convention, power in (("authors", 1), ("torchreid", 2)):
        got = re_rank_convention(qf, gf, convention, k1=6, k2=3, lambda_value=0.3, metric=metric)
        np.testing.assert_allclose(got, reference_rerank(qf, gf, 6, 3, 0.3, metric, power),
                                   atol=2e-5)
    np.testing.assert_array_equal(re_rank_convention(qf, gf, "authors", k1=6, k2=3, metric=metric),
                                  re_rank_features(qf, gf, k1=6, k2=3, metric=metric))
    with pytest.raises(ValueError, match="convention 'fastreid'"):
        re_rank_convention(qf, gf, "fastreid")


def test_smallest_k_sorted_equals_stable_argsort_with_ties():
    rng = np.random.default_rng(7)
    d = rng.integers(0, 50, size=(64, 3000)).astype(np.float32)   # many ties
    d[0] = 1.0                                                     # a row of equal values
    got = smallest_k_sorted(d, 21)
    np.testing.assert_array_equal(got, np.argsort(d, axis=1, kind="stable")[:, :21])
    d = rng.random((16, 5000), dtype=np.float32)
    np.testing.assert_array_equal(smallest_k_sorted(d, 7),
                                  np.argsort(d, axis=1, kind="stable")[:, :7])


def test_rerank_improves_map_on_clustered_data():
    """Identities as Gaussian clusters whose spread is comparable to their separation: plain
    distances confuse the outlying members, the k-reciprocal neighbourhoods recover many of them
    (mAP ~0.86 -> ~0.92 with this seed; > +0.05 for seeds 11-15)."""
    rng = np.random.default_rng(11)
    ids, per_id, dim = 30, 8, 32
    centres = rng.normal(size=(ids, dim))
    feats = np.repeat(centres, per_id, axis=0) + 0.9 * rng.normal(size=(ids * per_id, dim))
    pids = np.repeat(np.arange(1, ids + 1), per_id)
    cams = np.tile(np.arange(1, per_id + 1), ids)
    q = np.arange(ids * per_id) % per_id == 0
    qf, gf = feats[q], feats[~q]
    args = (pids[q], pids[~q], cams[q], cams[~q])
    base = evaluate_rank(euclidean_distance(qf, gf, squared=True), *args)
    rr = evaluate_rank(re_rank_features(qf, gf, k1=6, k2=3, lambda_value=0.3), *args)
    assert rr.mAP > base.mAP + 0.02, (base.mAP, rr.mAP)


def test_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="k1"):
        re_rank_features(rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), k1=0)
    with pytest.raises(ValueError, match="lambda"):
        re_rank_features(rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), lambda_value=2)
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5, 3\)"):
        re_rank_features(rng.normal(size=(3, 4)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        re_rank_features(np.full((3, 4), np.nan), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="q_q"):
        re_rank(np.zeros((3, 5)), np.zeros((3, 4)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="metric"):
        re_rank_features(rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), metric="manhattan")
