"""Person re-identification metrics under the Market-1501 protocol (pure numpy).

``evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)`` ranks the gallery for every query
by increasing distance and returns CMC, two kinds of mAP and mINP (``RankResult``).

Protocol (the official Market-1501 evaluation):

- For a query with pid ``p`` and camera ``c``, a gallery item is a *true match* when it has pid
  ``p`` and a camera other than ``c``.
- *Junk* is removed from the query's ranked list before anything is counted: gallery items with
  pid ``p`` and camera ``c`` (the same person seen by the same camera is too easy), and every
  gallery item with pid -1 (badly cropped boxes). A query with pid -1 therefore has no true match.
- Distractors (pid 0) stay in the list as ordinary negatives.
- A query with no true match left is *skipped*: it counts in ``num_skipped_queries`` and in no
  average. CMC, mAP and mINP are averages over the ``num_valid_queries`` other queries.

Ties: the gallery is ordered with a *stable* sort on the distance (``np.argsort(kind="stable")``
semantics): among items at exactly the same distance the one with the smaller gallery index comes
first. So results are deterministic and do not depend on the sorting algorithm, but a model that
outputs many identical distances is judged by the gallery order for those. (torchreid uses an
unstable quicksort, so its numbers for such models can vary with the numpy version.)

Notation for one valid query: after junk removal the gallery is a list, positions 1-based; the
query has ``n`` true matches, the k-th of them (k = 1..n) at position ``r_k`` (r_1 < ... < r_n).

- CMC at rank R: the fraction of valid queries whose first true match is at position <= R
  (``r_1 <= R``). ``cmc[R-1]`` for R = 1..max_rank.
- mAP (``mAP``): the non-interpolated average precision of torchreid and fast-reid,
  ``AP = (1/n) * sum_k k / r_k``, the mean of the precision at each true match.
- Official mAP (``mAP_official``): the trapezoidal AP of the official Market-1501 MATLAB code
  (``compute_AP.m``), also used by OpenVINO's accuracy checker and hence by Intel's published
  numbers. The MATLAB code walks the junk-free list keeping ``old_precision`` (initially 1) and
  ``old_recall`` (initially 0); at every position ``j`` it sets ``precision = hits / j``,
  ``recall = hits / n``, adds ``(recall - old_recall) * (old_precision + precision) / 2`` and
  moves ``old_* <- *``. Recall only changes at a true match, by ``1/n``, so only the true
  matches contribute, and just before the k-th one (at position ``r_k - 1``) the precision was
  ``(k-1) / (r_k - 1)``. Hence::

      AP_official = (1/n) * sum_k ( p_before(k) + k / r_k ) / 2,
      p_before(k) = 1 if r_k == 1 (the initial old_precision), else (k-1) / (r_k - 1).

  It is never larger than the non-interpolated AP, since ``(k-1)/(r_k-1) <= k/r_k``.
- mINP (Ye et al., "Deep learning for person re-identification: a survey", 2021): the mean of
  the inverse negative penalty ``INP = n / r_n``, which judges how far down the hardest true
  match is.

Distances: ``cosine_distance`` (``1 - cos``, in [0, 2]) and ``euclidean_distance`` (plain, or
squared with ``squared=True``; the squared form is what torchreid ranks with and what the
re-ranking of ``rmnet.eval.rerank`` starts from). On L2-normalised features all of them rank the
gallery in the same order, but rounding may break ties differently.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

JUNK_PID = -1
JSON_CMC_RANKS = (1, 5, 10, 20)

# Rows (queries) sorted at once by evaluate_rank: bounds the temporary memory to a few
# (chunk x gallery) arrays, ~10 MB each at the Market-1501 gallery size: small enough for
# malloc to reuse them between chunks instead of mapping fresh pages each time.
_EVAL_CHUNK = 64


@dataclass(frozen=True)
class RankResult:
    """Ranking metrics of one query set against one gallery; fractions in 0..1.

    ``cmc[r-1]``: fraction of valid queries with a true match within the top r (r=1..max_rank).
    ``mAP``: non-interpolated (torchreid/fast-reid); ``mAP_official``: trapezoidal (official
    Market-1501 MATLAB code). Per-query arrays have one entry per query, NaN (or 0 for
    ``first_match_rank``) for skipped queries.
    """
    cmc: np.ndarray
    mAP: float
    mAP_official: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int
    ap: np.ndarray = field(repr=False)
    ap_official: np.ndarray = field(repr=False)
    inp: np.ndarray = field(repr=False)
    first_match_rank: np.ndarray = field(repr=False)

    @property
    def max_rank(self) -> int:
        return int(self.cmc.size)

    def rank(self, r: int) -> float:
        """CMC at rank ``r`` (1-based)."""
        if not 1 <= r <= self.cmc.size:
            raise ValueError(f"rank {r} is outside 1..{self.cmc.size} (max_rank)")
        return float(self.cmc[r - 1])

    def to_json(self) -> dict:
        """The summary as plain Python types: CMC at ranks 1, 5, 10, 20 (those <= max_rank)."""
        return {
            "cmc": {str(r): float(self.cmc[r - 1]) for r in JSON_CMC_RANKS if r <= self.cmc.size},
            "mAP": float(self.mAP),
            "mAP_official": float(self.mAP_official),
            "mINP": float(self.mINP),
            "num_valid_queries": int(self.num_valid_queries),
            "num_skipped_queries": int(self.num_skipped_queries),
        }


# --- distances ----------------------------------------------------------------------------------

def _features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) feature array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{name}: row {bad} has a NaN or infinite value")
    return x


def _same_dim(qf: np.ndarray, gf: np.ndarray) -> None:
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query features have {qf.shape[1]} dimensions, gallery features "
                         f"{gf.shape[1]}")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, float32; an all-zero row stays zero (no NaN)."""
    x = _features(x, "l2_normalize")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return (x / np.maximum(norms, eps)[:, None]).astype(np.float32, copy=False)


def cosine_distance(qf: np.ndarray, gf: np.ndarray, normalize: bool = True) -> np.ndarray:
    """``1 - cos(q, g)`` for every pair: float32 (Nq, Ng) in [0, 2].

    ``normalize=False`` skips the L2 normalisation when the features already have unit norm
    (then it is ``1 - q.g``)."""
    qf, gf = _features(qf, "query features"), _features(gf, "gallery features")
    _same_dim(qf, gf)
    if normalize:
        qf, gf = l2_normalize(qf), l2_normalize(gf)
    d = qf @ gf.T
    np.subtract(1.0, d, out=d)
    return d


def euclidean_distance(qf: np.ndarray, gf: np.ndarray, squared: bool = False) -> np.ndarray:
    """Euclidean distance ``||q - g||`` for every pair (``squared=True``: ``||q - g||^2``).

    float32 (Nq, Ng), computed as ``|q|^2 + |g|^2 - 2 q.g`` with one matrix product (clamped at
    0 against rounding). The squared form ranks identically and is what torchreid uses."""
    qf, gf = _features(qf, "query features"), _features(gf, "gallery features")
    _same_dim(qf, gf)
    d = qf @ gf.T
    d *= -2.0
    d += np.einsum("ij,ij->i", qf, qf)[:, None]
    d += np.einsum("ij,ij->i", gf, gf)[None, :]
    np.maximum(d, 0.0, out=d)
    if not squared:
        np.sqrt(d, out=d)
    return d


def compute_distance(qf: np.ndarray, gf: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """``cosine_distance`` or (plain) ``euclidean_distance`` by name."""
    if metric == "cosine":
        return cosine_distance(qf, gf)
    if metric == "euclidean":
        return euclidean_distance(qf, gf)
    raise ValueError(f"unknown distance {metric!r}; use 'cosine' or 'euclidean'")


# --- ranking ------------------------------------------------------------------------------------

def _ids(x: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.array_equal(a, np.round(a)):
            raise ValueError(f"{name}: expected integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def stable_order(block: np.ndarray) -> np.ndarray:
    """Column indices sorting each row of ``block`` by increasing value, ties by index.

    The same result as ``np.argsort(block, axis=1, kind="stable")``. For float32 (and float16)
    it packs each value's order-preserving 32-bit key with the column index into one uint64 and
    sorts those unique keys with numpy's fast default sort, which is faster than a stable sort
    of the floats at the Market-1501 gallery size (tools/bench_eval.py). NaN is not allowed (checked by callers).
    """
    block = np.asarray(block)
    if block.dtype == np.float16:
        block = block.astype(np.float32)
    if block.dtype != np.float32 or block.shape[1] >= 2 ** 32:
        return np.argsort(block, axis=1, kind="stable")
    bits = (block + np.float32(0.0)).view(np.uint32)   # a C-contiguous copy; -0.0 -> +0.0
    # IEEE floats order like sign-magnitude integers: flip all bits of negatives, set the sign
    # bit of the others (x ^ 0xFFFFFFFF or x ^ 0x80000000), and unsigned order is float order.
    flip = bits >> np.uint32(31)
    np.negative(flip, out=flip)
    flip |= np.uint32(0x80000000)
    bits ^= flip
    del flip
    key = bits.astype(np.uint64)
    del bits
    key <<= np.uint64(32)
    key |= np.arange(block.shape[1], dtype=np.uint64)
    key.sort(axis=1)
    order = np.empty(key.shape, np.intp)
    np.bitwise_and(key, np.uint64(0xFFFFFFFF), out=order, casting="unsafe")
    return order


class OneIdentityWarning(UserWarning):
    """A gallery (test split) with fewer than two identities: its scores are meaningless."""


def evaluate_rank(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
                  max_rank: int = 20) -> RankResult:
    """CMC, mAP (both conventions) and mINP of a (num_query, num_gallery) distance matrix.

    See the module doc for the protocol, the tie rule and the formulas. Raises ``ValueError``
    for inconsistent shapes, non-integer ids, NaN distances or when no query has a true match.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D (num_query, num_gallery) array, got shape "
                         f"{distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.number):
        raise ValueError(f"distmat: expected numbers, got dtype {distmat.dtype}")
    q_pids, g_pids = _ids(q_pids, "q_pids"), _ids(g_pids, "g_pids")
    q_camids, g_camids = _ids(q_camids, "q_camids"), _ids(g_camids, "g_camids")
    nq, ng = distmat.shape
    for name, arr, n, what in (("q_pids", q_pids, nq, "rows (queries)"),
                               ("q_camids", q_camids, nq, "rows (queries)"),
                               ("g_pids", g_pids, ng, "columns (gallery)"),
                               ("g_camids", g_camids, ng, "columns (gallery)")):
        if arr.size != n:
            raise ValueError(f"{name} has {arr.size} entries but distmat {distmat.shape} has "
                             f"{n} {what}")
    if nq == 0 or ng == 0:
        raise ValueError(f"distmat {distmat.shape}: no queries or no gallery items")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)
    n_ids = len(np.unique(g_pids[g_pids > 0]))
    if n_ids < 2:
        warnings.warn(f"the gallery holds {n_ids} identity (besides distractors and junk): "
                      f"every query looks for the same person, so these scores say nothing "
                      f"about the model", OneIdentityWarning, stacklevel=2)

    ap = np.full(nq, np.nan)
    ap_off = np.full(nq, np.nan)
    inp = np.full(nq, np.nan)
    first = np.zeros(nq, np.int64)
    g_junk = g_pids == JUNK_PID
    for s in range(0, nq, _EVAL_CHUNK):
        e = min(s + _EVAL_CHUNK, nq)
        block = distmat[s:e]
        if np.issubdtype(block.dtype, np.floating) and np.isnan(block).any():
            row = s + int(np.flatnonzero(np.isnan(block).any(axis=1))[0])
            raise ValueError(f"distmat: row {row} (query {row}) contains NaN")
        order = stable_order(block)
        pid = g_pids[order]
        same_pid = pid == q_pids[s:e, None]
        same_cam = g_camids[order] == q_camids[s:e, None]
        junk = (same_pid & same_cam) | g_junk[order]
        good = same_pid & ~junk
        del pid, same_cam, same_pid, order
        # 1-based position of every item in the junk-free list.
        pos = np.cumsum(~junk, axis=1, dtype=np.int32)
        rows, cols = np.nonzero(good)   # row-major: per row, true matches in rank order
        if rows.size == 0:
            continue
        r = pos[rows, cols].astype(np.float64)
        n_good = np.bincount(rows, minlength=e - s)
        row_start = np.concatenate(([0], np.cumsum(n_good)[:-1]))
        k = (np.arange(rows.size) - row_start[rows] + 1).astype(np.float64)
        p_at = k / r
        p_before = np.where(r == 1, 1.0, (k - 1) / np.maximum(r - 1, 1))
        valid = n_good > 0
        nv = n_good[valid]
        ap[s:e][valid] = np.bincount(rows, p_at, minlength=e - s)[valid] / nv
        ap_off[s:e][valid] = np.bincount(rows, (p_before + p_at) / 2, minlength=e - s)[valid] / nv
        last = row_start + n_good - 1
        inp[s:e][valid] = nv / r[last[valid]]
        first[s:e][valid] = r[row_start[valid]].astype(np.int64)

    valid = first > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(f"no query has a true match in the gallery (same pid, another camera, "
                         f"pid not -1): all {nq} queries would be skipped")
    cmc = np.bincount(np.minimum(first[valid], max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(cmc[1:max_rank + 1]) / n_valid
    return RankResult(cmc=cmc, mAP=float(np.mean(ap[valid])),
                      mAP_official=float(np.mean(ap_off[valid])),
                      mINP=float(np.mean(inp[valid])), num_valid_queries=n_valid,
                      num_skipped_queries=nq - n_valid, ap=ap, ap_official=ap_off, inp=inp,
                      first_match_rank=first)


def ranked_gallery(distmat_row: np.ndarray, q_pid: int, q_camid: int, g_pids, g_camids,
                   top_k: int, keep_junk: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` gallery indices of one query (stable order) and their kind.

    Kind: 1 true match, 0 false match, -1 junk (same pid and camera, or pid -1). With
    ``keep_junk=False`` junk is skipped, as the metrics do; with True it is shown (marked), which
    is what a ranked-list picture wants.
    """
    row = np.asarray(distmat_row)[None, :]
    order = stable_order(row)[0]
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    same = g_pids[order] == q_pid
    junk = (same & (g_camids[order] == q_camid)) | (g_pids[order] == JUNK_PID)
    kind = np.where(junk, -1, np.where(same, 1, 0))
    if not keep_junk:
        order, kind = order[~junk], kind[~junk]
    return order[:top_k], kind[:top_k]


# --- verification: ROC and TPR at a false-positive rate ---------------------------------------

ROC_FPRS = (1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class RocResult:
    """The ROC of "same person?" decisions ``distance <= t`` over (query, gallery) pairs.

    Pairs follow the ranking protocol: junk pairs (gallery pid -1, or same pid and same camera)
    are left out; positives are same-pid pairs on different cameras, negatives every pair of
    different pids (distractors included). ``fpr``/``tpr``: the exact step curve, from (0, 0)
    to (1, 1), with a point just below and at each distinct positive distance (``thresholds``,
    -inf/inf at the ends). ``pos_values``: the distinct positive distances, ascending;
    ``pos_le``/``neg_le``: how many positives/negatives are <= each (what the TPR at an FPR
    needs: the best threshold is always one of the positive distances).
    """
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    num_positive: int
    num_negative: int
    pos_values: np.ndarray = field(repr=False)
    pos_le: np.ndarray = field(repr=False)
    neg_le: np.ndarray = field(repr=False)

    def tpr_at_fpr(self, target: float) -> float:
        """The largest TPR over thresholds whose FPR is at most ``target``: with
        ``m = floor(target * num_negative)`` negatives allowed, the fraction of positives
        below the (m+1)-th smallest negative distance (a positive tied with it would accept
        it). fast-reid reports the TPR of the ROC point whose FPR is *nearest* the target,
        which may exceed it; this rule never does."""
        if not 0 <= target <= 1:
            raise ValueError(f"FPR target must be in [0, 1], got {target}")
        if self.num_positive == 0:
            return float("nan")
        m = int(np.floor(target * self.num_negative + 1e-9))
        ok = self.neg_le <= m
        return float(self.pos_le[ok].max() / self.num_positive) if ok.any() else 0.0

    def to_json(self, targets: Sequence[float] = ROC_FPRS) -> dict:
        return {"tpr_at_fpr": {f"{t:g}": self.tpr_at_fpr(t) for t in targets},
                "num_positive_pairs": self.num_positive,
                "num_negative_pairs": self.num_negative,
                "rule": "largest TPR with FPR <= target; pairs exclude junk and same-camera "
                        "same-pid pairs"}


def _roc_blocks(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids):
    """Yield (block, positive mask, negative mask) for row chunks of the distance matrix."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = _ids(q_pids, "q_pids"), _ids(g_pids, "g_pids")
    q_camids, g_camids = _ids(q_camids, "q_camids"), _ids(g_camids, "g_camids")
    if distmat.ndim != 2 or distmat.shape != (q_pids.size, g_pids.size) \
            or q_camids.size != q_pids.size or g_camids.size != g_pids.size:
        raise ValueError(f"distmat {distmat.shape} does not match {q_pids.size} query and "
                         f"{g_pids.size} gallery ids/cameras")
    g_junk = g_pids == JUNK_PID
    for s in range(0, distmat.shape[0], _EVAL_CHUNK):
        e = min(s + _EVAL_CHUNK, distmat.shape[0])
        block = np.asarray(distmat[s:e], dtype=np.float32)
        if np.isnan(block).any():
            raise ValueError("distmat contains NaN")
        same = q_pids[s:e, None] == g_pids[None, :]
        junk = (same & (q_camids[s:e, None] == g_camids[None, :])) | g_junk[None, :]
        yield block, same & ~junk, ~same & ~junk


def roc_pairs(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids
              ) -> tuple[np.ndarray, np.ndarray]:
    """(positive distances, negative distances) of the non-junk (query, gallery) pairs, float32
    (see ``RocResult`` for which pairs count). Holds every negative: for small sets."""
    pos, neg = [], []
    for block, p, n in _roc_blocks(distmat, q_pids, g_pids, q_camids, g_camids):
        pos.append(block[p])
        neg.append(block[n])
    return np.concatenate(pos), np.concatenate(neg)


def roc_curve(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids) -> RocResult:
    """The verification ROC of a (num_query, num_gallery) distance matrix (``RocResult``).

    Two passes over row chunks: the positives first (few: about a dozen per query), then each
    chunk's negatives are counted against the distinct positive distances, so the tens of
    millions of negative pairs at Market-1501 size are never stored or sorted."""
    args = (distmat, q_pids, g_pids, q_camids, g_camids)
    pos = np.sort(np.concatenate([b[p] for b, p, _ in _roc_blocks(*args)]))
    values = np.unique(pos)
    u = values.size
    neg_le = np.zeros(u, np.int64)           # negatives <= values[j]
    neg_lt = np.zeros(u, np.int64)           # negatives <  values[j]
    n_neg = 0
    for b, _, n in _roc_blocks(*args):
        neg = np.sort(b[n])                  # one chunk's negatives: about a million
        n_neg += neg.size
        neg_le += np.searchsorted(neg, values, side="right")
        neg_lt += np.searchsorted(neg, values, side="left")
    if n_neg == 0:
        raise ValueError("no negative (different-identity) pairs: the ROC is undefined")
    pos_le = np.searchsorted(pos, values, side="right")
    P = max(pos.size, 1)
    tpr_at, fpr_at, fpr_before = pos_le / P, neg_le / n_neg, neg_lt / n_neg
    tpr_before = np.concatenate(([0.0], tpr_at[:-1]))
    fpr = np.concatenate(([0.0], np.stack([fpr_before, fpr_at], 1).ravel(), [1.0]))
    tpr = np.concatenate(([0.0], np.stack([tpr_before, tpr_at], 1).ravel(), [1.0]))
    thr = np.concatenate(([-np.inf], np.repeat(values.astype(np.float64), 2), [np.inf]))
    return RocResult(fpr, tpr, thr, int(pos.size), int(n_neg), values, pos_le, neg_le)
