"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), in bounded memory at full Market-1501 scale.

``re_rank_features(qf, gf)`` re-ranks from features (what ``tools/eval_market.py`` uses);
``re_rank(q_g_dist, q_q_dist, g_g_dist)`` takes the three distance blocks instead (the classic
interface; it holds the full (N, N) matrix, so it is for small sets). Both return the re-ranked
(num_query, num_gallery) float32 distance matrix.

Conventions (``re_rank_convention``): the authors' feature code starts from squared Euclidean
distances, and so does ``re_rank_features`` ("authors"). Their distance-block function, like
torchreid's ``re_ranking`` of the same name and signature, squares its inputs: given plain
Euclidean distances it computes the same thing, and so does ``re_rank`` here. torchreid feeds
that function its own distance matrices, which are already squared Euclidean (or ``1 - cos``),
so its original distance is the *square* of the authors' ("torchreid": ``||q - g||^4``, or
``(1 - cos)^2``). Ranks by the original distance alone do not change, but the row-normalised
``D`` does, hence the Gaussian weights, the expansion and the final blend: torchreid's re-ranked
numbers differ from the authors' and ours, and each result should say which it used.

The method, over all N = num_query + num_gallery items (queries and gallery alike):

1. Original distance ``d(i, j)``: squared Euclidean distance of the features (as the authors'
   released code does; ``metric="cosine"`` uses ``1 - cos``: on L2-normalised features it is
   ``d/2``, and after step 2 the two are identical). Normalised per row by the row's maximum,
   ``D[i, j] = d(i, j) / max_l d(i, l)`` (the released code's ``dist / max(dist, axis=0)``
   followed by a transpose; ``D`` is not symmetric). The neighbour lists ``N(i, k)``, the k
   nearest items of i including i itself, rank by ``D[i, :]`` (ties by item index).
2. k-reciprocal neighbours: ``R(i, k) = {j in N(i, k+1) : i in N(j, k+1)}`` (k+1 because the
   list contains i itself).
3. Expansion: ``R*(i) = R(i, k1)`` united with every ``R(c, round(k1/2))``, c in ``R(i, k1)``,
   that shares more than two thirds of its members with ``R(i, k1)``:
   ``|R(c, k1/2) & R(i, k1)| > 2/3 |R(c, k1/2)|``. (The paper writes >=; the authors' code,
   which produced the published numbers, uses a strict >, and so does this module.)
   ``round`` is Python's (ties to even), as ``np.around`` in the released code.
4. Gaussian-kernel encoding: ``V[i, j] = exp(-D[i, j]) / sum_{l in R*(i)} exp(-D[i, l])`` for
   j in R*(i), 0 elsewhere. Rows sum to 1.
5. Local query expansion (k2 > 1): ``V[i] <- mean of V[j] over j in N(i, k2)`` (the k2 nearest
   items, i included). Rows still sum to 1.
6. Jaccard distance ``J[i, j] = 1 - sum_l min(V[i,l], V[j,l]) / sum_l max(V[i,l], V[j,l])``,
   computed as ``1 - m / (2 - m)`` with ``m = sum_l min(..)`` because both rows sum to 1.
7. Final distance ``J * (1 - lambda) + D * lambda``, its query x gallery block.

How it stays within memory and time at 3,368 + 19,732 = 23,100 items (the released code builds
dense 23,100 x 23,100 matrices for D, its argsort, V and the Jaccard distances, several GB):

- D is computed in row chunks and never stored whole: each chunk keeps only its row maxima and
  the sorted indices of its ``max(k1 + 1, k2)`` nearest items (found with a block-minimum bound
  and a sort of the few candidates under it, instead of sorting all 23,100 columns).
- Steps 2-3 work on those neighbour lists, vectorised over rows.
- V is sparse (CSR: each row has |R*(i)| entries before, at most k2 times that after query
  expansion); D values needed for the weights are computed pairwise from the features.
- The Jaccard step visits, for each query and each of its non-zero columns l, the gallery rows
  with V[j, l] != 0 (a column index of V restricted to the gallery), accumulating the minima,
  in query chunks bounded by the number of visited pairs.

Precision: float32 for distances and V (the released code uses float16 for both, which rounds
distances to ~3 significant digits and creates ties), float64 for sums. Results therefore match
the method to float32 accuracy, not the released code's float16 rounding.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rmnet.eval.metrics import l2_normalize

# Rows of the distance matrix held at once (chunk x N float32: 92 MB at N = 23,100).
_ROW_CHUNK = 1024
# Rows per step of the vectorised reciprocal/expansion steps.
_SET_CHUNK = 2048
# Queries per Jaccard chunk (a few chunk x gallery float64 arrays: 40 MB each at 256).
_QUERY_CHUNK = 256
# (query, gallery) pairs visited per Jaccard chunk (a few arrays of this many 8-byte entries).
_PAIR_BUDGET = 6_000_000


class _Distances:
    """Raw (unnormalised) original distances between the N items, by row blocks or by pairs."""
    n: int

    def rows(self, i0: int, i1: int) -> np.ndarray:
        """float32 (i1 - i0, N): distances of items i0..i1-1 to all items; 0 on the diagonal."""
        raise NotImplementedError

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """float64 distances of items i[t] and j[t], elementwise."""
        raise NotImplementedError


class _FeatureDistances(_Distances):
    def __init__(self, feats: np.ndarray, metric: str, power: int = 1):
        # power 2: the original distance squared once more (torchreid's convention)
        self.power = power
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"unknown metric {metric!r}; use 'euclidean' (squared Euclidean, "
                             f"as the paper's code) or 'cosine'")
        self.metric = metric
        self.f = l2_normalize(feats) if metric == "cosine" else feats
        self.sq = np.einsum("ij,ij->i", self.f, self.f)
        self.n = feats.shape[0]

    def rows(self, i0: int, i1: int) -> np.ndarray:
        d = self.f[i0:i1] @ self.f.T
        if self.metric == "euclidean":
            d *= -2.0
            d += self.sq[i0:i1, None]
            d += self.sq[None, :]
        else:
            np.subtract(1.0, d, out=d)
        np.maximum(d, 0.0, out=d)
        d[np.arange(i1 - i0), np.arange(i0, i1)] = 0.0
        if self.power == 2:
            d *= d
        return d

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.empty(i.size, np.float64)
        step = 1 << 15   # 32768 pairs: two 32 MB float32 temporaries at 256-d
        for s in range(0, i.size, step):
            a = self.f[i[s:s + step]]
            b = self.f[j[s:s + step]]
            if self.metric == "euclidean":
                a -= b   # differences, not |a|^2+|b|^2-2ab: no cancellation
                out[s:s + step] = np.einsum("ij,ij->i", a, a)
            else:
                out[s:s + step] = np.maximum(1.0 - np.einsum("ij,ij->i", a, b), 0.0)
        out[i == j] = 0.0
        if self.power == 2:
            out *= out
        return out


class _MatrixDistances(_Distances):
    def __init__(self, full: np.ndarray):
        self.d = full
        self.n = full.shape[0]

    def rows(self, i0: int, i1: int) -> np.ndarray:
        return np.array(self.d[i0:i1], dtype=np.float32)

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self.d[i, j].astype(np.float64)


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if int(k1) != k1 or k1 < 1:
        raise ValueError(f"k1 must be an integer >= 1, got {k1}")
    if int(k2) != k2 or k2 < 1:
        raise ValueError(f"k2 must be an integer >= 1, got {k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def smallest_k_sorted(d: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest values of each row, sorted by (value, index).

    Equal to ``np.argsort(d, axis=1, kind="stable")[:, :k]`` but without sorting whole rows:
    the rows are cut into blocks, the k-th smallest block minimum ``t`` bounds the k-th
    smallest value from above (k blocks have a member <= t), and only the members <= t are
    sorted. ``d`` must not contain NaN.
    """
    c, n = d.shape
    k = min(k, n)
    block = max(1, n // (8 * k))
    nb = n // block
    if nb < 2 * k or c == 0:
        return np.argsort(d, axis=1, kind="stable")[:, :k]
    mins = d[:, :nb * block].reshape(c, nb, block).min(axis=2)
    if nb * block < n:
        mins = np.concatenate([mins, d[:, nb * block:].min(axis=1, keepdims=True)], axis=1)
    t = np.partition(mins, k - 1, axis=1)[:, k - 1]
    rows, cols = np.nonzero(d <= t[:, None])
    vals = d[rows, cols]
    order = np.lexsort((cols, vals, rows))
    rows, cols = rows[order], cols[order]
    start = np.searchsorted(rows, np.arange(c))
    take = start[:, None] + np.arange(k)[None, :]
    return cols[take]


def _reciprocal(nb: np.ndarray) -> np.ndarray:
    """mask[i, c]: item i is among the neighbours of its neighbour nb[i, c] (nb: (N, m))."""
    n = nb.shape[0]
    mask = np.empty(nb.shape, bool)
    for s in range(0, n, _SET_CHUNK):
        e = min(s + _SET_CHUNK, n)
        back = nb[nb[s:e]]                                 # (C, m, m)
        mask[s:e] = (back == np.arange(s, e)[:, None, None]).any(axis=2)
    return mask


def _expansion_sets(nb1: np.ndarray, ok1: np.ndarray, nbh: np.ndarray, okh: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-3: (rows, cols) of every R*(i) member, sorted by row then column, unique."""
    n = nb1.shape[0]
    sentinel = n
    all_rows, all_cols = [], []
    for s in range(0, n, _SET_CHUNK):
        e = min(s + _SET_CHUNK, n)
        cand, cand_ok = nb1[s:e], ok1[s:e]                 # R(i, k1) as (list, mask)
        half, half_ok = nbh[cand], okh[cand]               # R(c, k1/2) for every candidate c
        member = (half[..., None] == cand[:, None, None, :]) & cand_ok[:, None, None, :]
        inter = (member.any(axis=3) & half_ok).sum(axis=2)
        size = half_ok.sum(axis=2)
        # |R(c, k1/2) & R(i, k1)| > 2/3 |R(c, k1/2)|, in exact integers
        accept = cand_ok & (3 * inter > 2 * size)
        half_ok = half_ok & accept[..., None]
        members = np.concatenate([np.where(cand_ok, cand, sentinel),
                                  np.where(half_ok, half, sentinel).reshape(e - s, -1)], axis=1)
        members.sort(axis=1)
        first = np.ones(members.shape, bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        keep = first & (members != sentinel)
        r, c = np.nonzero(keep)
        all_rows.append(r + s)
        all_cols.append(members[r, c])
    return np.concatenate(all_rows), np.concatenate(all_cols)


def _csr_from_sorted(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int):
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols.astype(np.int64), vals


def _query_expansion(indptr, indices, data, nbk2: np.ndarray):
    """Step 5: row i of the result is the mean of rows nbk2[i, :] of the CSR matrix."""
    n, m = nbk2.shape
    counts = indptr[1:] - indptr[:-1]
    out_rows, out_cols, out_vals = [], [], []
    for s in range(0, n, _SET_CHUNK):
        e = min(s + _SET_CHUNK, n)
        src = nbk2[s:e].ravel()                            # source rows, grouped by target row
        tgt = np.repeat(np.arange(s, e), m)
        cnt = counts[src]
        total = int(cnt.sum())
        offs = np.repeat(indptr[src] - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt)
        pos = offs + np.arange(total)
        t = np.repeat(tgt, cnt)
        key = t.astype(np.int64) * n + indices[pos]
        uniq, inv = np.unique(key, return_inverse=True)
        sums = np.bincount(inv, weights=data[pos].astype(np.float64), minlength=uniq.size)
        out_rows.append(uniq // n)
        out_cols.append(uniq % n)
        out_vals.append((sums / m).astype(np.float32))
    rows = np.concatenate(out_rows)
    return _csr_from_sorted(rows, np.concatenate(out_cols), np.concatenate(out_vals), n)


def _rerank(dist: _Distances, num_query: int, k1: int, k2: int, lambda_value: float,
            progress: Callable[[str], None] | None = None) -> np.ndarray:
    n = dist.n
    nq, ng = num_query, n - num_query
    say = progress or (lambda msg: None)
    kh = int(round(k1 / 2))
    n1, nh, nk2 = min(k1 + 1, n), min(kh + 1, n), min(k2, n)
    kmax = max(n1, nk2)

    # Step 1: row maxima and the sorted nearest-neighbour lists, one row chunk at a time.
    say("neighbour lists")
    row_max = np.empty(n, np.float64)
    nearest = np.empty((n, kmax), np.int64)
    for s in range(0, n, _ROW_CHUNK):
        e = min(s + _ROW_CHUNK, n)
        d = dist.rows(s, e)
        if np.isnan(d).any():
            raise ValueError("re-ranking: the original distances contain NaN")
        m = d.max(axis=1)
        m[m <= 0] = 1.0     # a row of zeros (all items identical) stays zeros, not NaN
        row_max[s:e] = m
        d /= m[:, None]     # rank by D itself, as the method does (division may create ties)
        nearest[s:e] = smallest_k_sorted(d, kmax)
        del d

    # Steps 2-3.
    say("k-reciprocal sets")
    nb1, nbh = nearest[:, :n1], nearest[:, :nh]
    rows, cols = _expansion_sets(nb1, _reciprocal(nb1), nbh, _reciprocal(nbh))

    # Step 4: Gaussian-kernel weights, normalised per row.
    say(f"Gaussian encoding ({rows.size} non-zeros)")
    w = np.exp(-(dist.pairs(rows, cols) / row_max[rows]))
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    indptr, indices, data = _csr_from_sorted(rows, cols, w.astype(np.float32), n)
    del rows, cols, w

    # Step 5.
    if k2 != 1:
        say("query expansion")
        indptr, indices, data = _query_expansion(indptr, indices, data, nearest[:, :nk2])
        say(f"query expansion done ({indices.size} non-zeros)")
    del nearest

    # Step 6: a column index of V over the gallery rows (items nq..n-1).
    say("jaccard distance")
    g0 = indptr[nq]
    g_rows = np.repeat(np.arange(nq, n), np.diff(indptr[nq:])) - nq
    g_cols, g_vals = indices[g0:], data[g0:]
    by_col = np.argsort(g_cols, kind="stable")
    col_rows, col_vals = g_rows[by_col], g_vals[by_col].astype(np.float64)
    col_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(g_cols, minlength=n), out=col_ptr[1:])
    col_cnt = np.diff(col_ptr)
    del g_rows, g_cols, g_vals, by_col

    # Pairs each query visits: sum over its non-zero columns of the column's gallery count.
    visits = np.concatenate(([0], np.cumsum(col_cnt[indices[:indptr[nq]]])))
    q_pairs = visits[indptr[1:nq + 1]] - visits[indptr[:nq]]

    out = np.empty((nq, ng), np.float32)
    s = 0
    while s < nq:
        e, total = s, 0
        while e < nq and (e == s or total + q_pairs[e] <= _PAIR_BUDGET) and e - s < _QUERY_CHUNK:
            total += int(q_pairs[e])
            e += 1
        a, b = indptr[s], indptr[e]
        q_row = np.repeat(np.arange(e - s), np.diff(indptr[s:e + 1]))
        q_col, q_val = indices[a:b], data[a:b].astype(np.float64)
        cnt = col_cnt[q_col]
        tot = int(cnt.sum())
        rep = np.repeat(np.arange(q_col.size), cnt)
        pos = np.repeat(col_ptr[q_col] - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt) \
            + np.arange(tot)
        mins = np.minimum(q_val[rep], col_vals[pos])
        acc = np.bincount(q_row[rep] * ng + col_rows[pos], weights=mins,
                          minlength=(e - s) * ng).reshape(e - s, ng)
        jac = 1.0 - acc / (2.0 - acc)
        # Step 7, with the row-normalised original distances of these queries.
        if lambda_value > 0:
            d = dist.rows(s, e)[:, nq:].astype(np.float64) / row_max[s:e, None]
            out[s:e] = jac * (1.0 - lambda_value) + d * lambda_value
        else:
            out[s:e] = jac
        s = e
    return out


def re_rank_features(qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3, metric: str = "euclidean",
                     progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Re-ranked (num_query, num_gallery) float32 distances from query and gallery features.

    ``metric``: "euclidean" (squared Euclidean, the paper's code) or "cosine"; on L2-normalised
    features both give the same result (see the module doc). ``progress(step_name)`` is called
    at the start of each step.
    """
    _check_params(k1, k2, lambda_value)
    qf, gf = np.asarray(qf), np.asarray(gf)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"re_rank_features: expected (Nq, D) and (Ng, D) features, got "
                         f"{qf.shape} and {gf.shape}")
    if qf.shape[0] == 0 or gf.shape[0] == 0:
        raise ValueError(f"re_rank_features: no queries or no gallery items ({qf.shape}, "
                         f"{gf.shape})")
    feats = np.concatenate([qf, gf]).astype(np.float32)
    if not np.isfinite(feats).all():
        raise ValueError("re_rank_features: features contain NaN or infinite values")
    return _rerank(_FeatureDistances(feats, metric), qf.shape[0], int(k1), int(k2),
                   float(lambda_value), progress)


def re_rank(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20,
            k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked (num_query, num_gallery) float32 distances from the three distance blocks.

    The blocks are assembled into one (N, N) matrix (so memory grows with N^2; use
    ``re_rank_features`` at Market-1501 scale) and **squared**, as the authors' and torchreid's
    functions of this name do: pass plain Euclidean distances to reproduce the authors' method
    (the same result as ``re_rank_features``); torchreid passes squared ones (see the module
    doc). The diagonal is taken as 0.
    """
    _check_params(k1, k2, lambda_value)
    q_g, q_q, g_g = (np.asarray(x, dtype=np.float32) for x in (q_g_dist, q_q_dist, g_g_dist))
    nq, ng = q_g.shape if q_g.ndim == 2 else (-1, -1)
    if q_g.ndim != 2 or q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
        raise ValueError(f"re_rank: expected q_g (Nq, Ng), q_q (Nq, Nq), g_g (Ng, Ng); got "
                         f"{q_g.shape}, {q_q.shape}, {g_g.shape}")
    if nq == 0 or ng == 0:
        raise ValueError(f"re_rank: no queries or no gallery items (q_g {q_g.shape})")
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    if np.isnan(full).any():
        raise ValueError("re_rank: the distances contain NaN")
    np.fill_diagonal(full, 0.0)
    np.square(full, out=full)
    return _rerank(_MatrixDistances(full), nq, int(k1), int(k2), float(lambda_value))


CONVENTIONS = ("authors", "torchreid")


def re_rank_convention(qf: np.ndarray, gf: np.ndarray, convention: str = "authors",
                       k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                       metric: str = "euclidean",
                       progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Re-ranked distances from features in a named convention (module doc): "authors" is
    ``re_rank_features``; "torchreid" starts from the square of that original distance, as
    torchreid's pipeline does (``||q - g||^4`` for "euclidean", ``(1 - cos)^2`` for
    "cosine"), in the same bounded memory."""
    if convention == "authors":
        return re_rank_features(qf, gf, k1, k2, lambda_value, metric, progress)
    if convention != "torchreid":
        raise ValueError(f"unknown re-ranking convention {convention!r}; one of "
                         f"{', '.join(CONVENTIONS)}")
    _check_params(k1, k2, lambda_value)
    qf, gf = np.asarray(qf), np.asarray(gf)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1] or not len(qf) or not len(gf):
        raise ValueError(f"re_rank_convention: expected (Nq, D) and (Ng, D) features, Nq and "
                         f"Ng >= 1, got {qf.shape} and {gf.shape}")
    feats = np.concatenate([qf, gf]).astype(np.float32)
    if not np.isfinite(feats).all():
        raise ValueError("re_rank_convention: features contain NaN or infinite values")
    return _rerank(_FeatureDistances(feats, metric, power=2), qf.shape[0], int(k1), int(k2),
                   float(lambda_value), progress)
