"""The loss maths (layers.loss_math): hand-computed values on tiny cases, finite-difference
gradient checks of every function (float64, central differences, upstream weights != 1), the
smart-margin schedule and the per-sample weights."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from layers import loss_math as lm
from tests.conftest import numeric_grad

SQRT_HALF = math.sqrt(0.5)   # 0.70710678...


def assert_grad(analytic: np.ndarray, numeric: np.ndarray, tol: float = 1e-6) -> None:
    scale = max(1.0, float(np.abs(numeric).max()))
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=tol * scale)
    assert np.abs(numeric).max() > 1e-3, "the check is vacuous: the gradient is ~0"


# --- L2 normalisation -------------------------------------------------------------------------

def test_normalize_rows_values():
    # [3, 4] / 5 = [0.6, 0.8]; [0, 2] / 2 = [0, 1]; a zero row stays finite (eps).
    u, norm = lm.normalize_rows(np.array([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]]))
    np.testing.assert_allclose(u[:2], [[0.6, 0.8], [0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(norm[:2, 0], [5.0, 2.0], atol=1e-12)
    assert np.all(np.isfinite(u)) and np.all(u[2] == 0)


def test_normalize_rows_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5))
    g = rng.standard_normal((4, 5))          # upstream dL/du
    u, norm = lm.normalize_rows(x)
    analytic = lm.normalize_rows_backward(g, u, norm)
    numeric = numeric_grad(lambda: float(np.sum(g * lm.normalize_rows(x)[0])), x)
    assert_grad(analytic, numeric)
    # The gradient is orthogonal to x: scaling a row does not change its direction.
    np.testing.assert_allclose(np.einsum("ij,ij->i", analytic, x), 0, atol=1e-10)


# --- AM-Softmax -------------------------------------------------------------------------------

# Class weights (raw, rows of different lengths): normalised they are [1,0], [0,1], [-1,0].
AM_W = np.array([[2.0, 0.0], [0.0, 0.5], [-3.0, 0.0]])
AM_X = np.array([[3.0, 0.0], [0.0, -2.0]])     # normalised: [1,0] and [0,-1]
AM_Y = np.array([0, 1])
# s = 2, m = 0.5.
# sample 0: cos = [1, 0, -1]; logits = [2*(1-0.5), 0, -2] = [1, 0, -2]
#   l0 = log(e^1 + e^0 + e^-2) - 1 = log(1 + e^-1 + e^-3) = log(1.4176659) = 0.3490122
# sample 1: cos = [0, -1, 0]; logits = [0, 2*(-1-0.5), 0] = [0, -3, 0]
#   l1 = log(e^0 + e^-3 + e^0) + 3 = 3 + log(2.0497871) = 3.7177359
AM_L = [math.log(1 + math.exp(-1) + math.exp(-3)), 3 + math.log(2 + math.exp(-3))]


def test_am_softmax_hand_computed():
    fwd = lm.am_softmax_forward(AM_X, AM_W, AM_Y, scale=2.0, margin=0.5)
    np.testing.assert_allclose(fwd.per_sample, AM_L, rtol=1e-10)
    np.testing.assert_allclose(fwd.per_sample, [0.3490122, 3.7177359], atol=1e-7)
    assert fwd.loss == pytest.approx((AM_L[0] + AM_L[1]) / 2, rel=1e-10)   # 2.0333741
    # Weights [1, 3]: (0.3490122 + 3 * 3.7177359) / 4 = 2.8755550
    fwd = lm.am_softmax_forward(AM_X, AM_W, AM_Y, 2.0, 0.5, sample_weight=[1.0, 3.0])
    assert fwd.loss == pytest.approx((AM_L[0] + 3 * AM_L[1]) / 4, rel=1e-10)
    np.testing.assert_allclose(fwd.per_sample, AM_L, rtol=1e-10)   # per-sample: unweighted


def test_am_softmax_margin_zero_is_normalised_softmax():
    # m = 0, s = 1: plain cross-entropy of the cosines. Sample 0: cos [1, 0, -1]
    # l0 = log(e + 1 + e^-1) - 1 = 0.4076059
    fwd = lm.am_softmax_forward(AM_X[:1], AM_W, AM_Y[:1], scale=1.0, margin=0.0)
    assert fwd.per_sample[0] == pytest.approx(math.log(math.e + 1 + 1 / math.e) - 1, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("scale,margin", [(30.0, 0.35), (4.0, 0.0)])
def test_am_softmax_gradients(weighted, scale, margin):
    rng = np.random.default_rng(1)
    n, d, k = 5, 4, 6
    x = rng.standard_normal((n, d)) * 2.0
    w = rng.standard_normal((k, d)) * 0.7
    y = np.array([0, 3, 3, 5, 1])
    sw = np.array([0.5, 2.0, 0.0, 1.0, 1.5]) if weighted else None
    up = 0.7
    fwd = lm.am_softmax_forward(x, w, y, scale, margin, sw)
    gx, gw = lm.am_softmax_backward(fwd, up)

    def obj() -> float:
        return up * lm.am_softmax_forward(x, w, y, scale, margin, sw).loss

    assert_grad(gx, numeric_grad(obj, x))
    assert_grad(gw, numeric_grad(obj, w))
    if weighted:   # a sample of weight 0 gets no gradient
        np.testing.assert_array_equal(gx[2], 0)


def test_am_softmax_invariant_to_scales_of_inputs():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    y = np.array([0, 1, 4, 4])
    a = lm.am_softmax_forward(x, w, y, 30.0, 0.35)
    b = lm.am_softmax_forward(x * [[2.0], [0.1], [5.0], [1.0]], w * 3.0, y, 30.0, 0.35)
    np.testing.assert_allclose(a.per_sample, b.per_sample, rtol=1e-10)


def test_am_softmax_large_logits_stay_finite():
    # s = 64, m = 0.9: sample 1 has logits [0, 64*(-1-0.9), 0] = [0, -121.6, 0], so
    # l1 = log(e^0 + e^-121.6 + e^0) + 121.6 = 121.6 + log 2 (e^-121.6 underflows harmlessly).
    fwd = lm.am_softmax_forward(AM_X, AM_W, AM_Y, scale=64.0, margin=0.9)
    assert np.all(np.isfinite(fwd.per_sample))
    assert fwd.per_sample[1] == pytest.approx(121.6 + math.log(2), rel=1e-9)
    gx, gw = lm.am_softmax_backward(fwd, 1.0)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))


# --- Center, Push, GlobPush -------------------------------------------------------------------

# Centres (raw) normalise to [1,0], [0,1], [-1,0]; embeddings u1 = [1,0], u2 = [0,1],
# u3 = [1,1]/sqrt2; labels 0, 0, 1.
LS_C = np.array([[3.0, 0.0], [0.0, 0.2], [-1.0, 0.0]])
LS_X = np.array([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])
LS_Y = np.array([0, 0, 1])
D_OWN = [0.0, 1.0, 1 - SQRT_HALF]   # d(u_i, c_yi): 1-1, 1-0, 1-0.7071 = 0.2929
# Push, m = 0.1, different-class pairs (1,3), (2,3), (3,1), (3,2):
#   h13 = 0.1 + 0      - d(u1,u3) = 0.1 - 0.2929          < 0 (inactive)
#   h23 = 0.1 + 1      - d(u2,u3) = 1.1 - 0.2929 = 0.8071
#   h31 = 0.1 + 0.2929 - d(u3,u1) = 0.1
#   h32 = 0.1 + 0.2929 - d(u3,u2) = 0.1
#   sums S = [0, 0.8071, 0.2]; active counts A = [0, 1, 2]; existing P = [1, 1, 2]
PUSH_S = [0.0, 1.1 - (1 - SQRT_HALF), 0.2]
# GlobPush, m = 0.1, other centres:
#   u1 (own c0, d 0):  c1: 0.1 + 0 - 1 < 0;       c2: 0.1 + 0 - 2 < 0
#   u2 (own c0, d 1):  c1: 0.1 + 1 - 0 = 1.1;     c2: 0.1 + 1 - 1 = 0.1
#   u3 (own c1, d .29): c0: 0.1 + .2929 - .2929 = 0.1;  c2: 0.1 + .2929 - 1.7071 < 0
#   S = [0, 1.2, 0.1]; A = [0, 2, 1]; P = [2, 2, 2]
GLOB_S = [0.0, 1.2, 0.1]


def ls_forward(**kw):
    return lm.local_structure_forward(LS_X, LS_C, LS_Y, push_margin=0.1, glob_push_margin=0.1,
                                      **kw)


def test_local_structure_hand_computed_active():
    fwd = ls_forward(reduction="active")
    np.testing.assert_allclose(fwd.per_sample[:, 0], D_OWN, atol=1e-10)
    assert fwd.center == pytest.approx(sum(D_OWN) / 3, rel=1e-9)            # 0.4309644
    # mean over active terms: Push 1.0071 / 3 = 0.3357; GlobPush 1.3 / 3 = 0.4333
    assert fwd.push == pytest.approx(sum(PUSH_S) / 3, rel=1e-9)
    assert fwd.glob_push == pytest.approx(sum(GLOB_S) / 3, rel=1e-9)
    # per-sample: S_i / Abar, Abar = mean active count = 3/3 = 1 for both terms
    np.testing.assert_allclose(fwd.per_sample[:, 1], PUSH_S, atol=1e-10)
    np.testing.assert_allclose(fwd.per_sample[:, 2], GLOB_S, atol=1e-10)


def test_local_structure_hand_computed_all():
    fwd = ls_forward(reduction="all")
    # mean over existing terms per sample: Push S/P = [0, 0.8071, 0.1]; GlobPush S/2
    np.testing.assert_allclose(fwd.per_sample[:, 1], [0.0, PUSH_S[1], 0.1], atol=1e-10)
    np.testing.assert_allclose(fwd.per_sample[:, 2], [0.0, 0.6, 0.05], atol=1e-10)
    assert fwd.push == pytest.approx((PUSH_S[1] + 0.1) / 3, rel=1e-9)       # 0.3023689
    assert fwd.glob_push == pytest.approx(0.65 / 3, rel=1e-9)               # 0.2166667


def test_local_structure_hand_computed_weighted():
    fwd = ls_forward(sample_weight=np.array([1.0, 0.0, 3.0]))
    # Center: (1*0 + 0*1 + 3*0.2929) / 4 = 0.2196699
    assert fwd.center == pytest.approx(3 * D_OWN[2] / 4, rel=1e-9)
    # Push: sum w S / sum w A = (3 * 0.2) / (3 * 2) = 0.1; Abar = 6/4 = 1.5
    assert fwd.push == pytest.approx(0.1, rel=1e-9)
    np.testing.assert_allclose(fwd.per_sample[:, 1], np.array(PUSH_S) / 1.5, atol=1e-10)
    # GlobPush: (3 * 0.1) / (3 * 1) = 0.1; Abar = 3/4
    assert fwd.glob_push == pytest.approx(0.1, rel=1e-9)
    np.testing.assert_allclose(fwd.per_sample[:, 2], np.array(GLOB_S) / 0.75, atol=1e-10)
    for t, loss in enumerate(fwd.losses):   # the contract: L = sum w l / sum w
        assert loss == pytest.approx(float(fwd.per_sample[:, t] @ [1, 0, 3]) / 4, rel=1e-9)


def test_local_structure_disabled_terms_are_zero():
    fwd = ls_forward(center=False, push=False, glob_push=True)
    assert fwd.center == 0 and fwd.push == 0 and fwd.glob_push > 0
    np.testing.assert_array_equal(fwd.per_sample[:, :2], 0)
    gx, gc = lm.local_structure_backward(fwd, (5.0, 7.0, 0.0))   # only disabled terms upstream
    np.testing.assert_array_equal(gx, 0)
    np.testing.assert_array_equal(gc, 0)


def random_local_case(seed: int, n=7, d=5, k=5, margin=0.3, min_gap=1e-3):
    """Random data whose hinge terms all stay at least min_gap away from 0 (no kink within
    reach of the finite differences), with active and inactive terms for both pushes."""
    for s in range(seed, seed + 200):
        rng = np.random.default_rng(s)
        x = rng.standard_normal((n, d))
        c = rng.standard_normal((k, d))
        y = rng.integers(0, k, n)
        y[:3] = [0, 0, 1]                      # at least two classes, one repeated
        u, _ = lm.normalize_rows(x)
        cn, _ = lm.normalize_rows(c)
        own = np.einsum("ij,ij->i", u, cn[y])
        hp = (margin - own[:, None] + u @ u.T)[y[:, None] != y[None, :]]
        other = np.ones((n, k), bool)
        other[np.arange(n), y] = False
        hg = (margin - own[:, None] + u @ cn.T)[other]
        if all(np.abs(h).min() > min_gap and (h > 0).any() and (h < 0).any() for h in (hp, hg)):
            return x, c, y
    raise AssertionError("no kink-free random case found")


@pytest.mark.parametrize("reduction", ["active", "all"])
@pytest.mark.parametrize("terms", [(True, True, True), (True, False, False),
                                   (False, True, False), (False, False, True),
                                   (False, True, True)])
@pytest.mark.parametrize("weighted", [False, True])
def test_local_structure_gradients(reduction, terms, weighted):
    x, c, y = random_local_case(10)
    rng = np.random.default_rng(3)
    up = tuple(rng.uniform(0.3, 3.0, 3))      # upstream weights, none equal to 1
    sw = rng.uniform(0.0, 2.0, len(y)) if weighted else None
    kw = dict(center=terms[0], push=terms[1], glob_push=terms[2], push_margin=0.3,
              glob_push_margin=0.3, sample_weight=sw, reduction=reduction)

    def obj() -> float:
        fwd = lm.local_structure_forward(x, c, y, **kw)
        return float(np.dot(up, fwd.losses))

    fwd = lm.local_structure_forward(x, c, y, **kw)
    gx, gc = lm.local_structure_backward(fwd, up)
    assert_grad(gx, numeric_grad(obj, x))
    assert_grad(gc, numeric_grad(obj, c))


def test_local_structure_centres_get_gradient_only_where_used():
    # Without GlobPush, only the centres of the batch's classes get a gradient.
    x, c, y = random_local_case(20, n=4, k=6)
    fwd = lm.local_structure_forward(x, c, y, glob_push=False, push_margin=0.3)
    _, gc = lm.local_structure_backward(fwd, (1.0, 1.0, 1.0))
    used = np.zeros(6, bool)
    used[y] = True
    assert np.all(np.abs(gc[used]).sum(axis=1) > 0)
    np.testing.assert_array_equal(gc[~used], 0)


def test_local_structure_no_active_terms():
    # Margin 0 and embeddings sitting on their centres: no Push/GlobPush term is active.
    c = np.eye(3)
    x = np.eye(3)[[0, 1, 2, 0]] * 2.0
    y = np.array([0, 1, 2, 0])
    for reduction in ("active", "all"):
        fwd = lm.local_structure_forward(x, c, y, push_margin=0.0, glob_push_margin=0.0,
                                         reduction=reduction)
        assert fwd.losses == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
        gx, gc = lm.local_structure_backward(fwd, (1.0, 2.0, 3.0))
        assert np.abs(gx).max() < 1e-12 and np.abs(gc).max() < 1e-12


def test_local_structure_single_class_batch_has_no_push_pairs():
    x = np.random.default_rng(4).standard_normal((3, 4))
    fwd = lm.local_structure_forward(x, np.eye(4)[:3], np.zeros(3, int), glob_push=False)
    assert fwd.push == 0 and np.all(fwd.per_sample[:, 1] == 0)


# --- per-sample weights -----------------------------------------------------------------------

def test_sample_weights_scale_invariance_and_zero_weight():
    x, c, y = random_local_case(30)
    w = np.random.default_rng(5).uniform(0.2, 2.0, len(y))
    w[1] = 0.0
    for reduction in ("active", "all"):
        a = lm.local_structure_forward(x, c, y, sample_weight=w, reduction=reduction,
                                       push_margin=0.3, glob_push_margin=0.3)
        b = lm.local_structure_forward(x, c, y, sample_weight=10 * w, reduction=reduction,
                                       push_margin=0.3, glob_push_margin=0.3)
        assert a.losses == pytest.approx(b.losses, rel=1e-12)
        for t, loss in enumerate(a.losses):
            assert loss == pytest.approx(float(a.per_sample[:, t] @ w) / w.sum(), rel=1e-12)
    am = lm.am_softmax_forward(x, c, y, 30.0, 0.35, sample_weight=w)
    assert am.loss == pytest.approx(float(am.per_sample @ w) / w.sum(), rel=1e-12)
    # Equal weights are the unweighted loss.
    ones = lm.local_structure_forward(x, c, y, sample_weight=np.full(len(y), 3.0))
    plain = lm.local_structure_forward(x, c, y)
    assert ones.losses == pytest.approx(plain.losses, rel=1e-12)


def test_sample_weight_zero_sample_adds_no_gradient():
    # Anchor terms of a weight-0 sample vanish: the gradient equals that of a batch where the
    # sample is present only as a Push partner. Check it through the centre-loss gradient,
    # which involves the sample alone.
    x, c, y = random_local_case(40)
    w = np.ones(len(y))
    w[4] = 0.0
    fwd = lm.local_structure_forward(x, c, y, push=False, glob_push=False, sample_weight=w)
    gx, _ = lm.local_structure_backward(fwd, (1.0, 0.0, 0.0))
    np.testing.assert_array_equal(gx[4], 0)
    assert np.all(np.abs(np.delete(gx, 4, axis=0)).sum(axis=1) > 0)


def test_all_weights_zero_gives_zero_loss_and_gradient():
    x, c, y = random_local_case(50)
    w = np.zeros(len(y))
    fwd = lm.local_structure_forward(x, c, y, sample_weight=w, push_margin=0.3,
                                     glob_push_margin=0.3)
    assert fwd.losses == (0.0, 0.0, 0.0)
    assert np.all(np.isfinite(fwd.per_sample)) and fwd.per_sample.sum() > 0
    gx, gc = lm.local_structure_backward(fwd, (1.0, 1.0, 1.0))
    assert not gx.any() and not gc.any()
    am = lm.am_softmax_forward(x, c, y, 30.0, 0.35, sample_weight=w)
    assert am.loss == 0.0 and not any(g.any() for g in lm.am_softmax_backward(am, 1.0))


def test_bad_inputs_raise():
    x, c = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        lm.am_softmax_forward(x, c, np.array([0, 4]), 30.0, 0.35)
    with pytest.raises(ValueError, match="integers"):
        lm.local_structure_forward(x, c, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        lm.local_structure_forward(x, c, np.array([0, 1]), sample_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="reduction"):
        lm.local_structure_forward(x, c, np.array([0, 1]), reduction="sum")


# --- smart margins ----------------------------------------------------------------------------

def test_smart_margin_schedule():
    # start 0.15, final 0.7, ramp 40000: linear in between, constant after.
    assert lm.smart_margin(0, 0.7, 0.15, 40000) == pytest.approx(0.15)
    assert lm.smart_margin(10000, 0.7, 0.15, 40000) == pytest.approx(0.15 + 0.55 / 4)  # 0.2875
    assert lm.smart_margin(20000, 0.7, 0.15, 40000) == pytest.approx(0.425)
    assert lm.smart_margin(40000, 0.7, 0.15, 40000) == pytest.approx(0.7)
    assert lm.smart_margin(10**6, 0.7, 0.15, 40000) == pytest.approx(0.7)
    assert lm.smart_margin(5, 0.7, 0.15, 0) == 0.7            # no ramp: final at once
    values = [lm.smart_margin(t, 0.5, 0.1, 100) for t in range(0, 150, 10)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError):
        lm.smart_margin(-1, 0.7, 0.15, 40000)
