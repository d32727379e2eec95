"""rmnet.eval.metrics.roc_curve / RocResult.tpr_at_fpr: the verification ROC over (query,
gallery) pairs, checked on hand-counted pairs and against a brute-force threshold sweep."""
from __future__ import annotations

import numpy as np
import pytest

from rmnet.eval.metrics import roc_curve, roc_pairs
from rmnet.eval.roc_plot import plot_roc

# q0: pid 1 cam 1, q1: pid 2 cam 1
# gallery:   g0 pid 1 cam 2   g1 pid 2 cam 2   g2 pid 1 cam 1   g3 pid 3 cam 2   g4 pid -1   g5 pid 0
DIST = np.array([[0.1, 0.5, 0.0, 0.9, 0.0, 0.7],
                 [0.2, 0.4, 0.6, 0.05, 0.0, 0.3]])
ARGS = ([1, 2], [1, 2, 1, 3, -1, 0], [1, 1], [2, 2, 1, 2, 1, 1])


def test_pairs_follow_the_protocol():
    pos, neg = roc_pairs(DIST, *ARGS)
    # positives: (q0, g0) 0.1 and (q1, g1) 0.4. Junk: (q0, g2) same pid and camera, both queries'
    # g4 (pid -1). Negatives: q0 with g1, g3, g5 (distractor); q1 with g0, g2, g3, g5.
    assert sorted(pos) == pytest.approx([0.1, 0.4])
    assert sorted(neg) == pytest.approx([0.05, 0.2, 0.3, 0.5, 0.6, 0.7, 0.9])


def test_tpr_at_fpr_by_hand():
    roc = roc_curve(DIST, *ARGS)
    assert (roc.num_positive, roc.num_negative) == (2, 7)
    # FPR <= 0 (no negative accepted): threshold below 0.05, no positive -> 0.
    assert roc.tpr_at_fpr(0.0) == 0.0
    # FPR <= 1/7 allows one negative (0.05): accept d < 0.2 -> 0.1 only -> 1/2.
    assert roc.tpr_at_fpr(1 / 7) == 0.5
    assert roc.tpr_at_fpr(0.2) == 0.5          # floor(1.4) = 1 negative
    # three negatives (0.05, 0.2, 0.3): d < 0.5 accepts 0.4 too -> 1.
    assert roc.tpr_at_fpr(3 / 7) == 1.0
    assert roc.tpr_at_fpr(2 / 7) == 0.5        # two negatives: d < 0.3, 0.4 not yet
    assert roc.tpr_at_fpr(1.0) == 1.0
    assert roc.to_json([0.2, 0.5])["tpr_at_fpr"] == {"0.2": 0.5, "0.5": 1.0}
    with pytest.raises(ValueError, match="FPR target"):
        roc.tpr_at_fpr(1.5)


def test_ties_between_positives_and_negatives_count_against_the_positive():
    # a positive at exactly the distance of the first negative: accepting it accepts that
    # negative too, so at FPR 0 it is not counted.
    d = np.array([[0.3, 0.3, 0.8]])
    roc = roc_curve(d, [1], [1, 2, 3], [1], [2, 2, 2])
    assert roc.tpr_at_fpr(0.0) == 0.0 and roc.tpr_at_fpr(0.5) == 1.0
    # the curve goes from (0,0) straight to (0.5, 1) at the tied threshold
    assert list(zip(roc.fpr, roc.tpr)) == [(0, 0), (0, 0), (0.5, 1), (1, 1)]


def test_matches_a_brute_force_sweep():
    rng = np.random.default_rng(3)
    nq, ng = 20, 60
    q_pids, g_pids = rng.integers(1, 8, nq), rng.integers(-1, 8, ng)
    q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    d = np.round(rng.random((nq, ng)), 2).astype(np.float32)     # many ties
    roc = roc_curve(d, q_pids, g_pids, q_cams, g_cams)
    pos, neg = [], []
    for i in range(nq):
        for j in range(ng):
            if g_pids[j] == -1 or (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]):
                continue
            (pos if g_pids[j] == q_pids[i] else neg).append(d[i, j])
    pos, neg = np.array(pos), np.array(neg)
    thresholds = np.concatenate(([-1.0], np.unique(np.concatenate([pos, neg]))))
    fprs = np.array([(neg <= t).mean() for t in thresholds])
    tprs = np.array([(pos <= t).mean() for t in thresholds])
    for target in (0.0, 0.01, 0.05, 0.1, 0.3, 0.77, 1.0):
        assert roc.tpr_at_fpr(target) == pytest.approx(tprs[fprs <= target + 1e-12].max())
    # every curve point lies on the swept step curve, and it is monotone
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    for f, t, thr in zip(roc.fpr[1:-1], roc.tpr[1:-1], roc.thresholds[1:-1]):
        assert (pos <= thr).mean() >= t - 1e-12


def test_plot(tmp_path):
    import cv2
    out = tmp_path / "roc.png"
    plot_roc(roc_curve(DIST, *ARGS), out, title="test")
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100


def test_bad_input():
    with pytest.raises(ValueError, match="does not match"):
        roc_curve(DIST[:, :3], *ARGS)
    with pytest.raises(ValueError, match="no negative"):
        roc_curve(np.array([[0.1]]), [1], [1], [1], [2])
