"""The paper's losses (eqs. 2-5) as plain numpy: forward values, per-sample losses, gradients.

The Caffe layers in ``layers.losses`` are thin adapters around these functions. Everything here
works in float64 on row matrices: embeddings ``x`` (N, D), class weights / centres (K, D),
integer labels (N,) in [0, K). A batch of 128 x 256-d against 751 classes costs a few matrix
products of (128 x 256) by (256 x 751).

L2 normalisation
----------------
Every loss normalises its own inputs, ``u = x / sqrt(|x|^2 + eps)`` row-wise (eps = 1e-12, so a
zero row stays finite), and back-propagates through it exactly:
``dL/dx = (g - u (u . g)) / sqrt(|x|^2 + eps)`` for ``g = dL/du``. The nets therefore contain no
normalisation layer (see the train-net contract) and both the embeddings and the learned class
weights / centres are compared by cosine whatever their scale.

Per-sample weights
------------------
Each function takes optional per-sample weights ``w`` (>= 0, default 1: weighted hard-sample
mining). Each term reports one loss per sample, ``l_i``, *unweighted*; the batch loss is
``L = sum_i w_i l_i / sum_i w_i``, so scaling all weights changes nothing and a sample of weight
0 adds neither loss nor gradient. If all weights are 0 the batch loss and gradients are 0.

AM-Softmax (eq. 2)
------------------
``cos_ik = u_i . v_k`` with ``u`` the normalised embedding and ``v`` the normalised class-weight
rows; logits ``s * (cos_iy - m)`` for the target ``y = y_i``, ``s * cos_ik`` otherwise;
``l_i = -log softmax(logits_i)_y``. Gradients flow to the raw embedding and the raw (K, D)
class-weight matrix.

Local-structure losses (eqs. 3-5)
---------------------------------
One set of class centres ``C`` (K, D), normalised to ``c``; ``d(a, b) = 1 - a . b`` is the cosine
distance of normalised vectors.

- Center (eq. 3): ``l_i = d(u_i, c_yi)``.
- Push (eq. 4): for every ``j`` in the batch with ``y_j != y_i`` (hence ``j != i``), the term
  ``h_ij = [m_push + d(u_i, c_yi) - d(u_i, u_j)]_+``. Both embeddings of a pair receive gradient.
- GlobPush (eq. 5): for every class ``k != y_i`` (all K - 1 other centres, not only those in the
  batch), ``h_ik = [m_glob + d(u_i, c_yi) - d(u_i, c_k)]_+``.

Gradients reach the embeddings and every centre involved (the anchor's own centre through
``d(u_i, c_yi)``, the other centres through ``d(u_i, c_k)``); the centres are ordinary learned
parameters, updated by the solver.

Normalisation of the Push and GlobPush sums (``reduction``)
-----------------------------------------------------------
The paper writes plain sums. Plain sums scale with the batch size and the number of classes
(GlobPush over 751 centres would dwarf the other terms), so each sum is normalised. Two choices:

- ``"active"`` (default): **mean over the active terms** (``h > 0``) of the whole batch,
  ``L = sum_i w_i S_i / sum_i w_i A_i`` with ``S_i`` the sum of sample i's terms and ``A_i`` the
  number of its active terms. This is the normalisation of the public PyTorch implementation of
  these losses by the paper's group (total hinge over the number of valid pairs). The value stays
  of the order of the margin while most terms become inactive, so the loss weights of eq. 6
  ("chosen so each term has a similar magnitude") keep working for the whole run. Per-sample
  losses are ``l_i = S_i / Abar`` with ``Abar = sum_i w_i A_i / sum_i w_i`` (the batch's weighted
  mean count of active terms), so ``L = sum w_i l_i / sum w_i`` holds exactly and ``l_i`` ranks
  samples by their total violation (what hard-sample mining needs). The count ``A`` is treated as
  a constant in the gradient (it is piecewise constant; the loss jumps when a term crosses 0,
  as in every "mean over active" loss).
- ``"all"``: **mean over the terms that exist**, ``l_i = S_i / P_i`` with ``P_i`` the number of
  different-class batch samples (Push) or ``K - 1`` (GlobPush): the paper's sums up to a constant,
  continuous, but shrinking towards 0 as training succeeds (most terms inactive), so the weights
  of eq. 6 would have to grow during training.

Center needs no choice: one term per sample, ``L = sum w_i l_i / sum w_i``.

Smart margins
-------------
The paper "supplements the default margins by the 'smart' variant" without defining it. The
closest public analogue from the same group ramps the GlobPush margin linearly
from 0.15 up to its final value over the first 40k iterations. Interpretation implemented here
(``smart_margin``): a margin *schedule*

    margin(t) = start + (final - start) * min(1, t / ramp_iters)

where ``t`` is the number of completed TRAIN iterations (the layer keeps it in a parameter blob,
so snapshots and resumed runs continue the schedule), ``final`` is the configured
``push_margin`` / ``glob_push_margin``, and ``start`` / ``ramp_iters`` default to 0.15 / 40000.
It applies to the terms listed in ``terms``, by default both Push and GlobPush (the paper speaks
of "margins", plural); ``"terms": ["glob_push"]`` is exactly the public analogue. Why: at the
start the embedding is nearly random and ``d(u_i, c_yi)`` is large, so a full margin makes
almost every pair violate it and the push terms dominate the gradient; a small margin first
lets the centre and AM-Softmax terms form the clusters, then the margin grows to its target.
``smart_margins: null`` keeps the margins constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# Column order of the local-structure losses' per-sample output (LocalStructureLossLayer's
# per_sample top, (N, 3)); the hard-sample feedback weights follow it (generator).
LOCAL_TERMS = ("center", "push", "glob_push")

EPS = 1e-12


# --- L2 normalisation -------------------------------------------------------------------------

def normalize_rows(x: np.ndarray, eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalise ``x`` (n, d): returns ``(u, norm)``, ``u = x / norm``,
    ``norm = sqrt(|x|^2 + eps)`` of shape (n, 1) (kept for the backward pass)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x) + eps)[:, None]
    return x / norm, norm


def normalize_rows_backward(grad_u: np.ndarray, u: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. the raw rows, given ``grad_u = dL/du`` and ``(u, norm)`` of the forward."""
    proj = np.einsum("ij,ij->i", grad_u, u)[:, None]
    return (grad_u - u * proj) / norm


# --- shared helpers ---------------------------------------------------------------------------

def _check_inputs(x: np.ndarray, table: np.ndarray, labels: np.ndarray,
                  sample_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels as int64 and weights as float64 (N,), with their sum; ValueError when malformed."""
    if x.ndim != 2 or table.ndim != 2 or x.shape[1] != table.shape[1]:
        raise ValueError(f"expected x (N, D) and a (K, D) table, got {x.shape} and {table.shape}")
    n, k = x.shape[0], table.shape[0]
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be in [0, {k}), got min {labels.min()} max {labels.max()}")
    if sample_weight is None:
        w = np.ones(n)
    else:
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if w.shape != (n,):
            raise ValueError(f"expected {n} sample weights, got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("sample weights must be finite and >= 0")
    return labels.astype(np.int64), w, float(w.sum())


# --- AM-Softmax (eq. 2) -----------------------------------------------------------------------

@dataclass
class AMSoftmaxForward:
    """Result of ``am_softmax_forward``; the arrays after ``per_sample`` serve the backward."""
    loss: float               # sum_i w_i l_i / sum_i w_i
    per_sample: np.ndarray    # (N,) l_i, unweighted
    cos: np.ndarray           # (N, K) cosine of each embedding to each class
    u: np.ndarray             # (N, D) normalised embeddings
    x_norm: np.ndarray        # (N, 1)
    v: np.ndarray             # (K, D) normalised class weights
    w_norm: np.ndarray        # (K, 1)
    prob: np.ndarray          # (N, K) softmax of the margin logits
    labels: np.ndarray        # (N,) int64
    coef: np.ndarray          # (N,) dL/dl_i = w_i / sum w
    scale: float


def am_softmax_forward(x: np.ndarray, class_weights: np.ndarray, labels: np.ndarray,
                       scale: float, margin: float,
                       sample_weight: np.ndarray | None = None) -> AMSoftmaxForward:
    """AM-Softmax loss of embeddings ``x`` (N, D) against raw class weights (K, D)."""
    x = np.asarray(x, dtype=np.float64)
    table = np.asarray(class_weights, dtype=np.float64)
    labels, w, w_sum = _check_inputs(x, table, labels, sample_weight)
    n = x.shape[0]
    u, x_norm = normalize_rows(x)
    v, w_norm = normalize_rows(table)
    cos = u @ v.T
    rows = np.arange(n)
    logits = scale * cos
    logits[rows, labels] -= scale * margin
    top = logits.max(axis=1, keepdims=True)
    shifted = logits - top
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    per_sample = -log_p[rows, labels]
    coef = w / w_sum if w_sum > 0 else np.zeros(n)
    return AMSoftmaxForward(loss=float(coef @ per_sample), per_sample=per_sample, cos=cos, u=u,
                            x_norm=x_norm, v=v, w_norm=w_norm, prob=np.exp(log_p),
                            labels=labels, coef=coef, scale=float(scale))


def am_softmax_backward(fwd: AMSoftmaxForward,
                        upstream: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of ``upstream * fwd.loss`` w.r.t. the raw embeddings (N, D) and the raw class
    weights (K, D)."""
    n = fwd.u.shape[0]
    d_logits = fwd.prob.copy()
    d_logits[np.arange(n), fwd.labels] -= 1.0
    d_cos = d_logits * (fwd.scale * upstream * fwd.coef)[:, None]
    grad_x = normalize_rows_backward(d_cos @ fwd.v, fwd.u, fwd.x_norm)
    grad_w = normalize_rows_backward(d_cos.T @ fwd.u, fwd.v, fwd.w_norm)
    return grad_x, grad_w


# --- smart margins ----------------------------------------------------------------------------

def smart_margin(iteration: int, final: float, start: float, ramp_iters: int) -> float:
    """Margin at ``iteration`` (completed TRAIN iterations): linear from ``start`` at 0 to
    ``final`` at ``ramp_iters``, constant after (``ramp_iters`` 0: ``final`` at once)."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if ramp_iters <= 0:
        return float(final)
    frac = min(1.0, iteration / ramp_iters)
    return float(start + (final - start) * frac)


# --- Center, Push, GlobPush (eqs. 3-5) --------------------------------------------------------

Reduction = Literal["active", "all"]


@dataclass
class LocalStructureForward:
    """Result of ``local_structure_forward``. ``coef_*`` hold dL/dterm for the backward pass
    (None for a disabled term)."""
    center: float
    push: float
    glob_push: float
    per_sample: np.ndarray             # (N, 3) unweighted l_i of center, push, glob_push
    u: np.ndarray                      # (N, D) normalised embeddings
    x_norm: np.ndarray                 # (N, 1)
    c: np.ndarray                      # (K, D) normalised centres
    c_norm: np.ndarray                 # (K, 1)
    labels: np.ndarray                 # (N,) int64
    coef_center: np.ndarray | None     # (N,)   dL_center / d d(u_i, c_yi)
    coef_push: np.ndarray | None       # (N, N) dL_push / dh_ij (0 for inactive or invalid pairs)
    coef_glob_push: np.ndarray | None  # (N, K) dL_glob_push / dh_ik

    @property
    def losses(self) -> tuple[float, float, float]:
        return self.center, self.push, self.glob_push


def _hinge_reduce(h: np.ndarray, valid: np.ndarray, w: np.ndarray, w_sum: float,
                  reduction: Reduction) -> tuple[float, np.ndarray, np.ndarray]:
    """Batch loss, per-sample losses (N,) and dL/dh (same shape as h) of the hinge terms
    ``[h]_+`` over the ``valid`` entries, normalised as the module docstring describes."""
    active = valid & (h > 0)
    s = np.where(active, h, 0.0).sum(axis=1)
    n = h.shape[0]
    if reduction == "active":
        a = active.sum(axis=1).astype(np.float64)
        wa = float(w @ a)
        if w_sum > 0 and wa > 0:
            a_bar = wa / w_sum
            row = w / wa
            loss = float(w @ s) / wa
        else:  # no weighted active term: the loss is 0; per-sample values still rank samples
            a_bar = a.mean() if a.sum() > 0 else 1.0
            row = np.zeros(n)
            loss = 0.0
        per_sample = s / a_bar
    elif reduction == "all":
        p = valid.sum(axis=1).astype(np.float64)
        has = p > 0
        per_sample = np.divide(s, p, out=np.zeros(n), where=has)
        if w_sum > 0:
            row = np.divide(w, w_sum * p, out=np.zeros(n), where=has)
            loss = float(w @ per_sample) / w_sum
        else:
            row = np.zeros(n)
            loss = 0.0
    else:
        raise ValueError(f"reduction must be 'active' or 'all', got {reduction!r}")
    return loss, per_sample, active * row[:, None]


def local_structure_forward(x: np.ndarray, centres: np.ndarray, labels: np.ndarray, *,
                            center: bool = True, push: bool = True, glob_push: bool = True,
                            push_margin: float = 0.7, glob_push_margin: float = 0.7,
                            sample_weight: np.ndarray | None = None,
                            reduction: Reduction = "active") -> LocalStructureForward:
    """Center, Push and GlobPush losses of embeddings ``x`` (N, D) with class centres (K, D).
    A disabled term has loss 0, per-sample column 0 and no gradient."""
    x = np.asarray(x, dtype=np.float64)
    table = np.asarray(centres, dtype=np.float64)
    labels, w, w_sum = _check_inputs(x, table, labels, sample_weight)
    n, k = x.shape[0], table.shape[0]
    u, x_norm = normalize_rows(x)
    c, c_norm = normalize_rows(table)
    cos_own = np.einsum("ij,ij->i", u, c[labels])      # u_i . c_yi
    d_own = 1.0 - cos_own
    per_sample = np.zeros((n, len(LOCAL_TERMS)))   # columns: LOCAL_TERMS
    losses = [0.0, 0.0, 0.0]
    coef_center = coef_push = coef_glob = None

    if center:
        per_sample[:, 0] = d_own
        coef_center = w / w_sum if w_sum > 0 else np.zeros(n)
        losses[0] = float(coef_center @ d_own)
    if push:
        # m + d(u_i, c_yi) - d(u_i, u_j) = m + d_own_i - 1 + u_i . u_j
        h = push_margin + d_own[:, None] - 1.0 + u @ u.T
        valid = labels[:, None] != labels[None, :]
        losses[1], per_sample[:, 1], coef_push = _hinge_reduce(h, valid, w, w_sum, reduction)
    if glob_push:
        h = glob_push_margin + d_own[:, None] - 1.0 + u @ c.T
        valid = np.ones((n, k), dtype=bool)
        valid[np.arange(n), labels] = False
        losses[2], per_sample[:, 2], coef_glob = _hinge_reduce(h, valid, w, w_sum, reduction)

    return LocalStructureForward(center=losses[0], push=losses[1], glob_push=losses[2],
                                 per_sample=per_sample, u=u, x_norm=x_norm, c=c, c_norm=c_norm,
                                 labels=labels, coef_center=coef_center, coef_push=coef_push,
                                 coef_glob_push=coef_glob)


def local_structure_backward(fwd: LocalStructureForward,
                             upstream: tuple[float, float, float] = (1.0, 1.0, 1.0)
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of ``sum_t upstream[t] * loss_t`` (t = center, push, glob_push) w.r.t. the raw
    embeddings (N, D) and the raw centres (K, D)."""
    g_center, g_push, g_glob = (float(g) for g in upstream)
    u, c, labels = fwd.u, fwd.c, fwd.labels
    n = u.shape[0]
    grad_u = np.zeros_like(u)
    grad_c = np.zeros_like(c)
    # Every term depends on d(u_i, c_yi) = 1 - u_i . c_yi with derivative +1; own[i] collects
    # dL/d d(u_i, c_yi) over the three terms.
    own = np.zeros(n)
    if fwd.coef_center is not None and g_center:
        own += g_center * fwd.coef_center
    if fwd.coef_push is not None and g_push:
        b = g_push * fwd.coef_push                  # dL/dh_ij; h_ij = ... + u_i . u_j
        own += b.sum(axis=1)
        grad_u += b @ u + b.T @ u
    if fwd.coef_glob_push is not None and g_glob:
        a = g_glob * fwd.coef_glob_push             # dL/dh_ik; h_ik = ... + u_i . c_k
        own += a.sum(axis=1)
        grad_u += a @ c
        grad_c += a.T @ u
    # d(u_i, c_yi) = 1 - u_i . c_yi
    grad_u -= own[:, None] * c[labels]
    np.add.at(grad_c, labels, -own[:, None] * u)
    return (normalize_rows_backward(grad_u, u, fwd.x_norm),
            normalize_rows_backward(grad_c, c, fwd.c_norm))
