"""The maths of the gallery benchmark: seeded synthetic descriptors with identity structure,
exact top-k by chunked brute force, recall of an approximate answer, latency percentiles.

Synthetic descriptors (``SyntheticDescriptors``): a gallery of ``n`` entries holds
``n / images_per_id`` identities. Each identity has a centre on the unit sphere; an image is its
centre plus noise of about ``noise`` times the centre's norm, re-normalised; queries are fresh
images of gallery identities. Centres and noise are Gaussian with the same decaying spectrum
(standard deviation of dimension j proportional to ``(1 + j / decay) ** -exponent``), because
learnt descriptors spread their variance over a few dozen directions rather than all 256; the
``effective_dim`` is the participation ratio of that spectrum, and ``exponent=0`` gives
isotropic descriptors (256). The defaults keep an identity's images clearly closer to each other
than to other identities, yet in a large gallery part of a query's exact top 10 are images of
other identities that happen to be close: the hard part for an approximate index, which has to
find those too (docs/gallery.md, for what this costs).

Everything is generated chunk by chunk from ``(seed, chunk)``, so a 10^7-entry gallery never has
to be in memory at once: the benchmark adds it to a compressed index chunk by chunk and computes
the exact answers for a sample of queries by brute force over regenerated chunks
(``exact_topk``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticDescriptors:
    n: int
    dim: int = 256
    images_per_id: int = 10
    noise: float = 1.0
    decay: float = 8.0            # spectrum: std of dimension j proportional to
    exponent: float = 1.0         # (1 + j / decay) ** -exponent (exponent 0: isotropic)
    seed: int = 0
    chunk: int = 100_000          # entries a chunk (a multiple of images_per_id)

    def __post_init__(self):
        if self.n < 1 or self.dim < 2 or self.images_per_id < 1 or self.chunk < 1:
            raise ValueError(f"bad synthetic descriptor config {self}")
        if self.chunk % self.images_per_id:
            raise ValueError(f"chunk {self.chunk} must be a multiple of images_per_id "
                             f"{self.images_per_id}")

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk)

    def _scale(self) -> np.ndarray:
        j = np.arange(self.dim, dtype=np.float64)
        s = (1.0 + j / self.decay) ** -self.exponent
        return (s / np.sqrt(np.sum(s ** 2))).astype(np.float32)

    @property
    def effective_dim(self) -> float:
        """Participation ratio (sum of variances)^2 / sum of squared variances."""
        v = self._scale().astype(np.float64) ** 2
        return float(v.sum() ** 2 / (v ** 2).sum())

    def centres(self, c: int) -> np.ndarray:
        """Unit centres of the identities of chunk ``c``."""
        rows = min(self.chunk, self.n - c * self.chunk)
        ids = -(-rows // self.images_per_id)
        rng = np.random.default_rng([self.seed, c, 0])
        x = rng.standard_normal((ids, self.dim), dtype=np.float32) * self._scale()
        return _unit(x)

    def _images(self, centres: np.ndarray, which: np.ndarray, rng) -> np.ndarray:
        noise = rng.standard_normal((len(which), self.dim), dtype=np.float32)
        noise *= self._scale() * np.float32(self.noise)
        noise += centres[which]
        return _unit(noise)

    def chunk_data(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(descriptors, ids) of chunk ``c``: unit float32 rows, global ids c*chunk + row."""
        rows = min(self.chunk, self.n - c * self.chunk)
        centres = self.centres(c)
        which = np.arange(rows) // self.images_per_id
        x = self._images(centres, which, np.random.default_rng([self.seed, c, 1]))
        return x, np.arange(c * self.chunk, c * self.chunk + rows, dtype=np.int64)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for c in range(self.n_chunks):
            yield self.chunk_data(c)

    def all(self) -> np.ndarray:
        return np.concatenate([x for x, _ in self.chunks()])

    def queries(self, count: int, stream: int = 0) -> np.ndarray:
        """``count`` new images of random gallery identities (``stream`` tells query sets
        apart, e.g. the tuning set from the evaluation set)."""
        rng = np.random.default_rng([self.seed, 1 << 20, stream])
        chunk_of = rng.integers(0, self.n_chunks, count)
        out = np.zeros((count, self.dim), np.float32)
        for c in np.unique(chunk_of):
            rows = np.flatnonzero(chunk_of == c)
            centres = self.centres(int(c))
            which = rng.integers(0, len(centres), len(rows))
            out[rows] = self._images(centres, which, rng)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return x


def merge_topk(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` (by similarity, ties by smaller id) of two candidate sets per row."""
    s_all = np.concatenate([best_s, s], axis=1)
    i_all = np.concatenate([best_i, i], axis=1)
    order = np.lexsort((i_all, -s_all), axis=1)[:, :k]
    return np.take_along_axis(s_all, order, 1), np.take_along_axis(i_all, order, 1)


def exact_topk(queries: np.ndarray, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of unit ``queries`` against a gallery given as chunks of
    (descriptors, ids): (ids (Q, k), sims (Q, k)), best first; ties across chunks by smaller
    id (within a chunk as FAISS's brute force returns them)."""
    q = np.ascontiguousarray(queries, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    import faiss
    for x, ids in chunks():
        kk = min(k, len(x))
        # FAISS's brute-force k-NN (BLAS products + heaps) of the chunk; merged exactly here
        s, i = faiss.knn(q, np.ascontiguousarray(x, np.float32), kk,
                         metric=faiss.METRIC_INNER_PRODUCT)
        best_s, best_i = merge_topk(best_s, best_i, s, ids[i], k)
    return best_i, best_s


def recall_at(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k  intersect  exact top-k| / k ("k-recall@k"); for
    k = 1, the fraction of queries whose top answer is the exact one."""
    a, e = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if a.shape[1] < k or e.shape[1] < k:
        raise ValueError(f"recall@{k} needs at least {k} answers a query")
    hits = [len(np.intersect1d(ar[ar >= 0], er)) for ar, er in zip(a, e)]
    return float(np.mean(hits) / k)


def latency(fn: Callable[[np.ndarray], object], queries: np.ndarray, batch: int,
            repeats: int, warmup: int = 2) -> dict:
    """Wall time of ``fn(batch of queries)``: p50/p99 per call and per query, in ms."""
    times = []
    n = len(queries)
    for r in range(warmup + repeats):
        s = (r * batch) % max(1, n - batch + 1)
        qb = queries[s:s + batch]
        t = time.perf_counter()
        fn(qb)
        if r >= warmup:
            times.append(time.perf_counter() - t)
    t = np.array(times) * 1e3
    return {"batch": batch, "calls": len(times),
            "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
            "p50_ms_per_query": float(np.percentile(t, 50) / batch),
            "p99_ms_per_query": float(np.percentile(t, 99) / batch)}


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os
    return pages * os.sysconf("SC_PAGE_SIZE")
