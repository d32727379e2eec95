"""Speed and memory of the evaluation at Market-1501 size, with random features.

    .venv/bin/python tools/bench_eval.py                       # 3368 x 19732, 256-d
    .venv/bin/python tools/bench_eval.py --no-rerank --queries 500

Times the cosine distance matrix, ``evaluate_rank`` (CMC, both mAPs, mINP) and k-reciprocal
re-ranking (``re_rank_features``, k1 20, k2 6, lambda 0.3) and reports the process's peak
resident memory (``ru_maxrss``), each with its target and PASS/FAIL:
distances + evaluation under 10 s, re-ranking under 120 s, peak memory under 8 GB.

Identities and cameras are drawn like Market-1501's (751 test ids, 6 cameras, pid -1 junk and
pid 0 distractors in the gallery) so the protocol's masks do real work. Features are random, so
the metric values are near chance; only the timings mean something. Exit status 1 if a target
is missed.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


from rmnet.eval.metrics import cosine_distance, evaluate_rank  # noqa: E402
from rmnet.eval.rerank import re_rank_features  # noqa: E402

TARGET_EVAL_S = 10.0
TARGET_RERANK_S = 120.0
TARGET_RSS_GB = 8.0


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def market_like_ids(rng: np.random.Generator, nq: int, ng: int):
    """(q_pids, g_pids, q_camids, g_camids) with Market-1501's proportions."""
    ids = 751
    q_pids = rng.integers(1, ids + 1, nq)
    g_pids = rng.integers(1, ids + 1, ng)
    kind = rng.random(ng)
    g_pids[kind < 0.142] = -1                       # Market: 2,798 of 19,732 are junk
    g_pids[(kind >= 0.142) & (kind < 0.335)] = 0    # and 3,819 distractors (0000)
    return q_pids, g_pids, rng.integers(1, 7, nq), rng.integers(1, 7, ng)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=19732)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-rerank", action="store_true", help="skip the re-ranking timing")
    args = ap.parse_args(argv)
    if min(args.queries, args.gallery, args.dim) < 1:
        ap.error("--queries, --gallery and --dim must be >= 1")

    rng = np.random.default_rng(args.seed)
    qf = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    gf = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    ids = market_like_ids(rng, args.queries, args.gallery)
    print(f"{args.queries} queries x {args.gallery} gallery, {args.dim}-d random features, "
          f"seed {args.seed}")

    t0 = time.perf_counter()
    dist = cosine_distance(qf, gf)
    t1 = time.perf_counter()
    res = evaluate_rank(dist, *ids)
    t2 = time.perf_counter()
    t_dist, t_eval = t1 - t0, t2 - t1
    ok = True
    total = t_dist + t_eval
    print(f"distance matrix        {t_dist:8.2f} s")
    print(f"evaluate_rank          {t_eval:8.2f} s   (rank-1 {res.rank(1):.4f}, "
          f"mAP {res.mAP:.4f}: chance level)")
    print(f"distance + evaluation  {total:8.2f} s   target < {TARGET_EVAL_S:.0f} s   "
          f"{verdict(total < TARGET_EVAL_S)}")
    ok &= total < TARGET_EVAL_S
    del dist

    if not args.no_rerank:
        t0 = time.perf_counter()
        rr = re_rank_features(qf, gf, k1=20, k2=6, lambda_value=0.3)
        t_rr = time.perf_counter() - t0
        res_rr = evaluate_rank(rr, *ids)
        print(f"re-ranking             {t_rr:8.2f} s   target < {TARGET_RERANK_S:.0f} s  "
              f"{verdict(t_rr < TARGET_RERANK_S)}   (mAP after {res_rr.mAP:.4f})")
        ok &= t_rr < TARGET_RERANK_S
    rss = peak_rss_gb()
    print(f"peak memory (RSS)      {rss:8.2f} GB  target < {TARGET_RSS_GB:.0f} GB   "
          f"{verdict(rss < TARGET_RSS_GB)}")
    ok &= rss < TARGET_RSS_GB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
