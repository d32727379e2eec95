"""rmnet.eval.metrics: hand-computed CMC, both APs and mINP under the Market-1501 protocol."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rmnet.eval.metrics import (cosine_distance, euclidean_distance, evaluate_rank, l2_normalize,
                           ranked_gallery, stable_order)

# Query A: pid 1, camera 1. Gallery (index: pid, camera, distance to A):
#   0: pid 1,  cam 2, 0.5   true match
#   1: pid 2,  cam 2, 0.1   negative
#   2: pid 1,  cam 1, 0.05  junk (same pid, same camera)
#   3: pid -1, cam 3, 0.2   junk (pid -1)
#   4: pid 0,  cam 2, 0.3   distractor: a negative
#   5: pid 1,  cam 3, 0.9   true match
#   6: pid 3,  cam 1, 0.7   negative
# Sorted: 2(junk) 1 3(junk) 4 0(match) 6 5(match) -> junk-free: 1 4 0 6 5, matches at r = 3, 5.
#   AP (non-interpolated) = (1/3 + 2/5) / 2                         = 11/30
#   AP (official)         = ((0 + 1/3)/2 + (1/4 + 2/5)/2) / 2       = 59/240
#     (precision just before the k-th match: (k-1)/(r_k-1); before the first at r=3: 0/2)
#   INP = 2/5; first match at 3.
G_PIDS = np.array([1, 2, 1, -1, 0, 1, 3])
G_CAMS = np.array([2, 2, 1, 3, 2, 3, 1])
D_A = np.array([0.5, 0.1, 0.05, 0.2, 0.3, 0.9, 0.7])
# Query B: pid 3, camera 2. Matches: gallery 6 only (cam 1). Sorted junk-free list:
#   1(.15) 6(.2) ... -> r = 2. AP = 1/2, official = (0/1 + 1/2)/2 = 1/4, INP = 1/2.
D_B = np.array([0.4, 0.15, 0.9, 0.01, 0.5, 0.6, 0.2])
# Query C: pid 2, camera 2: its only same-pid gallery image (1) is on camera 2 -> junk -> skipped.
D_C = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])


def test_single_query_by_hand():
    r = evaluate_rank(D_A[None], [1], G_PIDS, [1], G_CAMS, max_rank=5)
    assert r.ap[0] == pytest.approx(11 / 30)
    assert r.ap_official[0] == pytest.approx(59 / 240)
    assert r.mAP == pytest.approx(11 / 30) and r.mAP_official == pytest.approx(59 / 240)
    assert r.mINP == pytest.approx(2 / 5)
    np.testing.assert_array_equal(r.cmc, [0, 0, 1, 1, 1])
    assert r.first_match_rank[0] == 3
    assert (r.num_valid_queries, r.num_skipped_queries) == (1, 0)


def test_first_match_at_rank_one_uses_initial_precision_one():
    # matches at r = 1 and 3: AP = (1 + 2/3)/2 = 5/6; official = ((1+1)/2 + (1/2+2/3)/2)/2
    d = np.array([[0.1, 0.2, 0.3]])
    r = evaluate_rank(d, [5], [5, 6, 5], [1], [2, 2, 3])
    assert r.mAP == pytest.approx(5 / 6)
    assert r.mAP_official == pytest.approx((1 + 7 / 12) / 2)
    assert r.mINP == pytest.approx(2 / 3)
    assert r.rank(1) == 1.0


def test_perfect_ranking_gives_one_everywhere():
    d = np.array([[0.1, 0.2, 0.8, 0.9]])
    r = evaluate_rank(d, [4], [4, 4, 7, 8], [1], [2, 3, 1, 1], max_rank=4)
    assert r.mAP == r.mAP_official == r.mINP == 1.0
    np.testing.assert_array_equal(r.cmc, 1.0)


def test_several_queries_skip_and_average():
    d = np.stack([D_A, D_B, D_C])
    r = evaluate_rank(d, [1, 3, 2], G_PIDS, [1, 2, 2], G_CAMS)
    assert (r.num_valid_queries, r.num_skipped_queries) == (2, 1)
    assert np.isnan(r.ap[2]) and r.first_match_rank[2] == 0
    assert r.mAP == pytest.approx((11 / 30 + 1 / 2) / 2)
    assert r.mAP_official == pytest.approx((59 / 240 + 1 / 4) / 2)
    assert r.mINP == pytest.approx((2 / 5 + 1 / 2) / 2)
    assert r.cmc.shape == (20,)
    np.testing.assert_allclose(r.cmc[:4], [0, 0.5, 1, 1])   # B at 2, A at 3
    assert r.cmc[-1] == 1.0


def test_query_without_gallery_identity_and_junk_query_are_skipped():
    d = np.stack([D_A, D_A, D_A])
    r = evaluate_rank(d, [1, 42, -1], G_PIDS, [1, 1, 3], G_CAMS)
    assert (r.num_valid_queries, r.num_skipped_queries) == (1, 2)
    assert r.mAP == pytest.approx(11 / 30)


def test_distractors_count_as_negatives_but_junk_does_not():
    # The same list with the distractor (index 4) turned into junk: matches move up to r = 2, 4.
    pids = G_PIDS.copy()
    pids[4] = -1
    r = evaluate_rank(D_A[None], [1], pids, [1], G_CAMS)
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r.first_match_rank[0] == 2
    # Same-camera junk: giving gallery 2 another camera makes it the first true match.
    cams = G_CAMS.copy()
    cams[2] = 4
    r = evaluate_rank(D_A[None], [1], G_PIDS, [1], cams)
    # junk-free: 2(match) 1 4 0(match) 6 5(match): r = 1, 4, 6
    assert r.mAP == pytest.approx((1 + 2 / 4 + 3 / 6) / 3)
    assert r.mAP_official == pytest.approx((1 + (1 / 3 + 2 / 4) / 2 + (2 / 5 + 3 / 6) / 2) / 3)
    assert r.mINP == pytest.approx(3 / 6)


def test_ties_break_by_gallery_index():
    # All four at the same distance: the order is the gallery order.
    d = np.full((1, 4), 0.5, np.float32)
    r = evaluate_rank(d, [1], [2, 1, 3, 1], [1], [2, 2, 2, 3])
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)          # matches at 2 and 4
    r = evaluate_rank(d, [1], [1, 1, 3, 2], [1], [2, 3, 2, 2])
    assert r.mAP == 1.0                                          # matches at 1 and 2
    # A tie between a negative (index 0) and a match (index 2) ahead of a closer item.
    d = np.array([[0.3, 0.1, 0.3]])
    r = evaluate_rank(d, [1], [5, 6, 1], [1], [2, 2, 2])
    assert r.first_match_rank[0] == 3
    # float64 input takes numpy's stable argsort: the same answers.
    r64 = evaluate_rank(d.astype(np.float64), [1], [5, 6, 1], [1], [2, 2, 2])
    assert r64.first_match_rank[0] == 3


def test_negative_zero_ties_with_zero():
    d = np.array([[0.0, -0.0, 0.0]], np.float32)
    r = evaluate_rank(d, [1], [2, 1, 1], [1], [2, 2, 2])
    assert r.first_match_rank[0] == 2 and r.mINP == pytest.approx(2 / 3)


def test_first_match_beyond_max_rank():
    d = np.arange(8, dtype=np.float32)[None]
    r = evaluate_rank(d, [1], [2, 3, 4, 5, 6, 7, 8, 1], [1], [2] * 8, max_rank=5)
    np.testing.assert_array_equal(r.cmc, 0.0)
    assert r.mAP == pytest.approx(1 / 8)
    assert r.to_json()["cmc"] == {"1": 0.0, "5": 0.0}


def test_to_json():
    d = np.stack([D_A, D_B, D_C])
    r = evaluate_rank(d, [1, 3, 2], G_PIDS, [1, 2, 2], G_CAMS)
    j = json.loads(json.dumps(r.to_json()))
    assert set(j) == {"cmc", "mAP", "mAP_official", "mINP", "num_valid_queries",
                      "num_skipped_queries"}
    assert j["cmc"] == {"1": 0.0, "5": 1.0, "10": 1.0, "20": 1.0}
    assert j["num_valid_queries"] == 2 and j["num_skipped_queries"] == 1
    assert j["mAP"] == pytest.approx(r.mAP)


def reference_official(d, q_pids, g_pids, q_cams, g_cams):
    """A literal transcription of the official compute_AP.m loop and CMC, per query."""
    out = []
    for i in range(len(q_pids)):
        order = np.argsort(d[i], kind="stable")
        good = set(np.flatnonzero((g_pids == q_pids[i]) & (g_cams != q_cams[i])
                                  & (g_pids != -1)))
        junk = set(np.flatnonzero(((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
                                  | (g_pids == -1)))
        if not good:
            out.append(None)
            continue
        ngood = len(good)
        old_recall, old_precision, ap, hits, j, first, last = 0.0, 1.0, 0.0, 0, 0, 0, 0
        ap_plain = 0.0
        for idx in order:
            if idx in junk:
                continue
            j += 1
            if idx in good:
                hits += 1
                first = first or j
                last = j
                ap_plain += hits / j
            recall, precision = hits / ngood, hits / j
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            if hits == ngood:
                break
        out.append((ap_plain / ngood, ap, ngood / last, first))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_literal_reference(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 40, 300
    q_pids, g_pids = rng.integers(1, 15, nq), rng.integers(-1, 15, ng)
    q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    d = rng.integers(0, 40, (nq, ng)).astype(np.float32)   # many ties
    r = evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    ref = reference_official(d, q_pids, g_pids, q_cams, g_cams)
    valid = [x for x in ref if x is not None]
    assert r.num_valid_queries == len(valid) and r.num_skipped_queries == nq - len(valid)
    assert r.mAP == pytest.approx(np.mean([x[0] for x in valid]))
    assert r.mAP_official == pytest.approx(np.mean([x[1] for x in valid]))
    assert r.mINP == pytest.approx(np.mean([x[2] for x in valid]))
    firsts = np.array([x[3] for x in valid])
    np.testing.assert_allclose(r.cmc, [(firsts <= k).mean() for k in range(1, 11)])
    assert r.mAP_official <= r.mAP


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(D_C[None], [2], G_PIDS, [2], G_CAMS)


@pytest.mark.parametrize("args,match", [
    ((np.zeros((2, 7)), [1], G_PIDS, [1, 1], G_CAMS), r"q_pids has 1 entries but distmat "
                                                       r"\(2, 7\) has 2 rows"),
    ((np.zeros((2, 7)), [1, 2], G_PIDS, [1], G_CAMS), "q_camids has 1 entries"),
    ((np.zeros((2, 7)), [1, 2], G_PIDS[:5], [1, 1], G_CAMS), "g_pids has 5 entries .* 7 columns"),
    ((np.zeros((2, 7)), [1, 2], G_PIDS, [1, 1], G_CAMS[:6]), "g_camids has 6 entries"),
    ((np.zeros(7), [1], G_PIDS, [1], G_CAMS), "2-D"),
    ((np.zeros((1, 7)), [1.5], G_PIDS, [1], G_CAMS), "q_pids: expected integers"),
    ((np.full((1, 7), np.nan), [1], G_PIDS, [1], G_CAMS), "row 0 .*NaN"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        evaluate_rank(*args)


def test_stable_order_equals_stable_argsort():
    rng = np.random.default_rng(3)
    d = (rng.integers(-6, 6, (20, 500)) * 0.25).astype(np.float32)
    d[0, :10] = [np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3.0, 3.0, -np.inf, np.inf]
    np.testing.assert_array_equal(stable_order(d), np.argsort(d, axis=1, kind="stable"))


def test_distances():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    want_sq = ((q[:, None] - g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(euclidean_distance(q, g, squared=True), want_sq, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(euclidean_distance(q, g), np.sqrt(want_sq), rtol=1e-4, atol=1e-4)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    cos = cosine_distance(q, g)
    assert cos.dtype == np.float32
    np.testing.assert_allclose(cos, 1 - qn @ gn.T, atol=1e-5)
    # on unit vectors: squared Euclidean = 2 * cosine distance
    np.testing.assert_allclose(euclidean_distance(qn, gn, squared=True), 2 * cos, atol=1e-5)
    with pytest.raises(ValueError, match="8 dimensions, gallery features 3"):
        cosine_distance(q, g[:, :3])


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(ValueError, match="row 1"):
        l2_normalize(np.array([[1.0, 2.0], [np.nan, 1.0]]))


def test_ranked_gallery_marks_matches_and_junk():
    idx, kind = ranked_gallery(D_A, 1, 1, G_PIDS, G_CAMS, top_k=4)
    np.testing.assert_array_equal(idx, [2, 1, 3, 4])
    np.testing.assert_array_equal(kind, [-1, 0, -1, 0])
    idx, kind = ranked_gallery(D_A, 1, 1, G_PIDS, G_CAMS, top_k=3, keep_junk=False)
    np.testing.assert_array_equal(idx, [1, 4, 0])
    np.testing.assert_array_equal(kind, [0, 0, 1])


def test_bench_eval_runs_and_reports_targets():
    import subprocess
    import sys

    from tests.conftest import REPO
    p = subprocess.run([sys.executable, str(REPO / "tools" / "bench_eval.py"), "--queries", "30",
                        "--gallery", "200", "--dim", "8"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    for what in ("distance + evaluation", "re-ranking", "peak memory (RSS)"):
        line = next(x for x in p.stdout.splitlines() if x.startswith(what))
        assert "PASS" in line and "FAIL" not in line
    p = subprocess.run([sys.executable, str(REPO / "tools" / "bench_eval.py"), "--queries", "30",
                        "--gallery", "200", "--dim", "8", "--no-rerank"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "re-ranking" not in p.stdout
