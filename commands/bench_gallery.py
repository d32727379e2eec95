"""Gallery search at scale: FAISS indexes against exact search on synthetic descriptors.

    .venv/bin/python tools/bench_gallery.py --sizes 1e5,1e6 --kind auto --kind ivf-sq8 \\
        --quiet-load 1.5 --out results/2026-12-01/bench-gallery.txt      # + .json beside it

For each gallery size, in one run: seeded 256-d descriptors with identity structure
(rmnet/bench/gallery.py), exact answers for the queries by chunked brute force, then

- ``brute force``: the project's numpy search (``rmnet.deploy.embedder.search``), which
  normalises the gallery on every call, as callers use it today;
- ``faiss flat``: exact inner product (IndexFlatIP);
- the approximate index ``auto`` picks for that size (or each ``--kind SPEC``), its search
  breadth (nprobe / ef_search) tuned on a separate query set to the smallest value reaching
  ``--target-recall`` recall@10, the sweep printed;

with build time (train + add), memory (the bytes of the stored entries, and the process's
resident memory growth while building), query latency p50/p99 at batch 1 and 64, and recall@1
and recall@10 against the exact answers. Batch 1 runs on ``--b1-threads`` FAISS threads (1 by
default: one query gains nothing from a second thread, and on a loaded machine waking one costs
more than it saves), batch 64 and the builds on ``--threads``.

Latency on a shared machine measures the machine's load as much as the index, so every row
records the 1-minute load average at the moment its latency was taken, and ``--quiet-load L``
waits (at most ``--quiet-wait`` seconds, sleeping) before each latency measurement until the
load average is below L. Exact rows hold the whole gallery as float32 (4 bytes
a dimension): sizes above ``--max-flat-gb`` skip them and build the approximate index chunk by
chunk, so the largest gallery is bounded by the compressed index, not by the raw descriptors.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from rmnet.atomic import atomic_write_text, check_output
from rmnet.bench.gallery import SyntheticDescriptors, exact_topk, latency, recall_at, rss_bytes
from commands.errors import command
from rmnet.gallery import index as ix

PROG = "bench_gallery"
K = 10


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 1e5,1e6, got "
                                         f"{text!r}") from None
    if not sizes or min(sizes) < 1000:
        raise argparse.ArgumentTypeError("sizes must be >= 1000")
    return sizes


def _search_fn(index, k: int):
    return lambda q: index.search(q, k)


class QuietWait:
    """Sleep before a measurement until the 1-minute load average is below ``limit`` (0: never
    wait), at most ``per_wait`` seconds a time and ``budget`` seconds in all."""

    def __init__(self, limit: float, per_wait: float, budget: float, poll: float = 10.0):
        self.limit, self.per_wait, self.left, self.poll = limit, per_wait, budget, poll

    def __call__(self) -> dict:
        """The load average and the wait, for the row."""
        t = time.perf_counter()
        cap = min(self.per_wait, self.left) if self.limit > 0 else 0.0
        while os.getloadavg()[0] >= self.limit and time.perf_counter() - t < cap:
            time.sleep(min(self.poll, max(0.0, cap - (time.perf_counter() - t))))
        waited = time.perf_counter() - t
        self.left -= waited
        return {"loadavg": os.getloadavg()[0], "waited_s": waited}


@contextlib.contextmanager
def faiss_threads(n: int):
    """FAISS (OpenMP) threads ``n`` inside the block (0: leave as is)."""
    faiss = ix.faiss_module()
    before = faiss.omp_get_max_threads()
    if n:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def breadth_values(spec: ix.IndexSpec) -> tuple[str, list[int]]:
    if spec.kind.startswith("ivf"):
        vals = [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
                if v <= spec.nlist]
        return "nprobe", vals
    if spec.kind == "hnsw":
        return "ef_search", [16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512]
    return "", []


def tune(built: ix.Built, tune_q: np.ndarray, gt_tune: np.ndarray, target: float):
    """Smallest breadth reaching ``target`` recall@10 on the tuning queries; and the sweep."""
    name, values = breadth_values(built.spec)
    if not name:
        return built.spec, []
    sweep, chosen = [], None
    for v in values:
        spec = ix.IndexSpec(**{**built.spec.__dict__, name: v})
        ix.set_search_params(built.index, spec)
        t = time.perf_counter()
        _, ids = built.index.search(tune_q, K)
        ms = (time.perf_counter() - t) * 1e3 / len(tune_q)
        r10 = recall_at(ids, gt_tune, K)
        sweep.append({name: v, "recall@10": r10, "ms_per_query_batch": ms})
        log(f"  {built.spec.kind} {name}={v}: recall@10 {r10:.4f}, {ms:.3f} ms/query "
            f"(batch {len(tune_q)})")
        if r10 >= target:
            chosen = spec
            break
    if chosen is None:
        chosen = spec
        log(f"  {built.spec.kind}: target recall@10 {target} not reached; using {name}={v}")
    ix.set_search_params(built.index, chosen)
    return chosen, sweep


def measure(fn, eval_q: np.ndarray, gt: np.ndarray, repeats1: int, repeats64: int,
            b1_threads: int, quiet: QuietWait, recall_queries: int | None = None) -> dict:
    """Latency at batch 1 (on ``b1_threads``) and 64 after waiting for a quiet machine, and
    recall@1/10 against ``gt``."""
    waited = quiet()
    with faiss_threads(b1_threads):
        b1 = latency(fn, eval_q, 1, repeats1)
    b64 = latency(fn, eval_q, 64, repeats64)
    waited["loadavg_after"] = os.getloadavg()[0]
    n = len(eval_q) if recall_queries is None else recall_queries
    ids = np.concatenate([np.asarray(fn(eval_q[s:s + 256])[1])
                          for s in range(0, n, 256)])[:n]
    return {"batch1": b1, "batch64": b64, "recall@1": recall_at(ids, gt[:n], 1),
            "recall@10": recall_at(ids, gt[:n], K), "recall_queries": n, **waited}


def build_chunked(spec: ix.IndexSpec, data: SyntheticDescriptors, x: np.ndarray | None,
                  seed: int):
    """An index of ``spec`` filled with the gallery chunk by chunk (a progress bar), trained
    (IVF) on its first TRAIN_PER_CELL x nlist descriptors; from ``x`` when it is held, else
    from regenerated chunks, so the raw gallery never has to be in memory."""
    from tqdm import tqdm

    def chunks():
        if x is None:
            yield from data.chunks()
        else:
            for s in range(0, len(x), data.chunk):
                yield x[s:s + data.chunk], np.arange(s, min(s + data.chunk, len(x)))

    sample = None
    if ix.needs_training(spec):
        limit, parts, have = ix.TRAIN_PER_CELL * spec.nlist, [], 0
        for xc, _ in chunks():
            if have >= limit:
                break
            parts.append(xc[:limit - have])
            have += len(parts[-1])
        sample = np.concatenate(parts)
    t = time.perf_counter()
    index = ix.build(spec, data.dim, sample, seed=seed)
    if sample is not None:
        log(f"  trained in {time.perf_counter() - t:.1f} s")
    del sample
    with tqdm(total=data.n, desc=str(spec), unit="entry", unit_scale=True) as bar:
        for xc, ids in chunks():
            ix.add(index, xc, ids)
            bar.update(len(xc))
    return index


def run_size(n: int, args, kinds: list[ix.IndexSpec | None], quiet: QuietWait) -> dict:
    data = SyntheticDescriptors(n, dim=args.dim, images_per_id=args.images_per_id,
                                noise=args.noise, decay=args.decay, exponent=args.exponent,
                                seed=args.seed)
    eval_q = data.queries(args.queries, stream=0)
    tune_q = data.queries(args.tune_queries, stream=1)
    t = time.perf_counter()
    gt, _ = exact_topk(np.concatenate([eval_q, tune_q]), data.chunks, K)
    gt_eval, gt_tune = gt[:len(eval_q)], gt[len(eval_q):]
    log(f"n={n}: exact top-{K} of {len(gt)} queries by chunked brute force in "
        f"{time.perf_counter() - t:.1f} s")
    out = {"n": n, "rows": []}
    flat_bytes = n * args.dim * 4
    hold = flat_bytes <= args.max_flat_gb * 2 ** 30
    x = data.all() if hold else None
    small = n <= 200_000
    if hold:
        from rmnet.deploy.embedder import search as brute_search
        log(f"n={n}: brute force (rmnet.deploy.embedder.search)")
        res = measure(lambda q: brute_search(q, x, K)[::-1], eval_q, gt_eval,
                      50 if small else 10, 10 if small else 3, args.b1_threads, quiet,
                      recall_queries=256)
        out["rows"].append({"index": "brute force (numpy, rmnet.deploy.embedder.search)",
                            "build_s": 0.0, "payload_bytes": flat_bytes, "rss_growth_bytes": 0,
                            **res})
        log(f"n={n}: faiss flat")
        r0, t = rss_bytes(), time.perf_counter()
        built = ix.build_filled(ix.IndexSpec("flat"), x)
        build_s = time.perf_counter() - t
        res = measure(_search_fn(built.index, K), eval_q, gt_eval, 200 if small else 30,
                      20 if small else 5, args.b1_threads, quiet)
        out["rows"].append({"index": "faiss flat (exact)", "build_s": build_s,
                            "payload_bytes": ix.payload_bytes(built.index),
                            "rss_growth_bytes": rss_bytes() - r0, **res})
        del built
    else:
        out["skipped_exact"] = (f"{flat_bytes / 2 ** 30:.1f} GiB of float32 descriptors is "
                                f"over --max-flat-gb {args.max_flat_gb}: no brute-force or "
                                f"flat rows; exact answers by chunked brute force")
    for request in kinds:
        spec = ix.resolve(request or ix.auto_spec(n), n, args.dim)
        if spec.kind == "flat":
            continue
        if spec.kind == "hnsw" and n > args.hnsw_max:
            out.setdefault("skipped", []).append(f"{spec}: over --hnsw-max {args.hnsw_max}")
            continue
        log(f"n={n}: {spec} ({'auto' if request is None else 'asked'})")
        r0, t = rss_bytes(), time.perf_counter()
        built = ix.Built(build_chunked(spec, data, x, args.seed), spec)
        build_s = time.perf_counter() - t
        rss = rss_bytes() - r0
        log(f"  built in {build_s:.1f} s")
        chosen, sweep = tune(built, tune_q, gt_tune, args.tune_recall)
        res = measure(_search_fn(built.index, K), eval_q, gt_eval, 200, 20, args.b1_threads,
                      quiet)
        out["rows"].append({"index": str(chosen), "auto": request is None, "build_s": build_s,
                            "payload_bytes": ix.payload_bytes(built.index),
                            "rss_growth_bytes": rss, "sweep": sweep, **res})
        del built
    return out


def table(results: list[dict]) -> str:
    head = (f"{'entries':>9}  {'index':<44} {'build s':>8} {'MiB':>7} "
            f"{'b1 p50':>7} {'b1 p99':>7} {'b64 p50':>8} {'b64 p99':>8} {'/q p50':>7} "
            f"{'R@1':>6} {'R@10':>6} {'load':>5}")
    lines = [head, "-" * len(head)]
    for r in results:
        for row in r["rows"]:
            b1, b64 = row["batch1"], row["batch64"]
            name = row["index"] + (" [auto]" if row.get("auto") else "")
            lines.append(
                f"{r['n']:>9}  {name[:44]:<44} {row['build_s']:>8.1f} "
                f"{row['payload_bytes'] / 2 ** 20:>7.0f} {b1['p50_ms']:>7.2f} "
                f"{b1['p99_ms']:>7.2f} {b64['p50_ms']:>8.1f} {b64['p99_ms']:>8.1f} "
                f"{b64['p50_ms_per_query']:>7.3f} {row['recall@1']:>6.3f} "
                f"{row['recall@10']:>6.3f} {row['loadavg']:>5.1f}")
        for note in [r.get("skipped_exact")] + r.get("skipped", []):
            if note:
                lines.append(f"{r['n']:>9}  ({note})")
    lines.append("")
    lines.append("b1/b64: latency of one search call of 1 / 64 queries, ms; /q p50: the batch-64 "
                 "p50 per query, ms; MiB: stored entries (codes + ids; brute force: the float32 "
                 "array); R@k: recall@k against exact search; load: the 1-minute load "
                 "average when the row's latency was measured.")
    return "\n".join(lines)


def sweeps(results: list[dict]) -> str:
    lines = []
    for r in results:
        for row in r["rows"]:
            if row.get("sweep"):
                name = next(k for k in row["sweep"][0] if k not in ("recall@10",
                                                                   "ms_per_query_batch"))
                pts = ", ".join(f"{s[name]}: {s['recall@10']:.3f} ({s['ms_per_query_batch']:.3f})"
                                for s in row["sweep"])
                lines.append(f"{r['n']:>9}  {row['index']}: {name} -> tuning recall@10 "
                             f"(ms/query, batch of tuning queries): {pts}")
    return "\n".join(lines)


def targets(results: list[dict], target: float, p50_ms: float) -> str:
    lines = []
    for r in results:
        if r["n"] != 1_000_000:
            continue
        for row in r["rows"]:
            if "auto" in row:    # the approximate rows
                ok_r = row["recall@10"] >= target
                ok_t = row["batch1"]["p50_ms"] < p50_ms
                lines.append(f"target at 10^6 ({row['index']}"
                             f"{' [auto]' if row['auto'] else ''}): recall@10 "
                             f"{row['recall@10']:.3f} >= {target}: {'yes' if ok_r else 'NO'}; "
                             f"batch-1 p50 {row['batch1']['p50_ms']:.2f} ms < {p50_ms} ms: "
                             f"{'yes' if ok_t else 'NO'} (load average {row['loadavg']:.1f})")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench_gallery.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_sizes, default=_sizes("1e5,1e6"),
                    help="gallery sizes (default 1e5,1e6)")
    ap.add_argument("--kind", action="append", default=None,
                    help="approximate index spec to measure (repeatable; default: auto's "
                         "choice; 'auto' for it among others), e.g. ivf-pq:m=64 or hnsw:m=32")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--images-per-id", type=int, default=10)
    ap.add_argument("--noise", type=float, default=1.0, help="image noise / centre norm")
    ap.add_argument("--decay", type=float, default=8.0,
                    help="spectrum: std of dimension j ~ (1 + j / decay) ** -exponent")
    ap.add_argument("--exponent", type=float, default=1.0, help="0: isotropic descriptors")
    ap.add_argument("--queries", type=int, default=1000, help="evaluation queries")
    ap.add_argument("--tune-queries", type=int, default=500, help="tuning queries (separate)")
    ap.add_argument("--target-recall", type=float, default=0.95,
                    help="recall@10 the 10^6 target asks for (default 0.95)")
    ap.add_argument("--tune-recall", type=float, default=None,
                    help="recall@10 the search breadth is tuned to on the tuning queries "
                         "(default: --target-recall + 0.005, a margin for the evaluation "
                         "queries being another sample)")
    ap.add_argument("--target-p50-ms", type=float, default=5.0)
    ap.add_argument("--max-flat-gb", type=float, default=4.0,
                    help="largest float32 gallery held for the exact rows (default 4 GiB)")
    ap.add_argument("--hnsw-max", type=int, default=1_000_000,
                    help="largest size an hnsw --kind is built at (slow to build)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="FAISS threads for builds and batch 64 (0: its default, one a CPU)")
    ap.add_argument("--b1-threads", type=int, default=1,
                    help="FAISS threads for batch-1 latency (default 1; 0: as --threads)")
    ap.add_argument("--quiet-load", type=float, default=0.0,
                    help="before each latency measurement, wait until the 1-minute load "
                         "average is below this (0: do not wait)")
    ap.add_argument("--quiet-wait", type=float, default=300.0,
                    help="longest wait for --quiet-load before one row, seconds (default 300)")
    ap.add_argument("--quiet-budget", type=float, default=1200.0,
                    help="longest wait for --quiet-load in all, seconds (default 1200)")
    ap.add_argument("--out", type=Path, help="text report (and .json beside it)")
    args = ap.parse_args(argv)
    if args.queries < 64 or args.tune_queries < 1:
        ap.error("--queries must be >= 64 and --tune-queries >= 1")
    if min(args.threads, args.b1_threads, args.quiet_wait, args.quiet_budget) < 0:
        ap.error("--threads, --b1-threads, --quiet-wait and --quiet-budget must be >= 0")
    if args.tune_recall is None:
        args.tune_recall = min(1.0, args.target_recall + 0.005)
    return args


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_output(args.out, "--out")
    check_output(args.out.with_suffix(".json") if args.out else None, "--out (.json)")
    faiss = ix.faiss_module()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    try:
        kinds = [None] if not args.kind else [ix.parse_spec(k) for k in args.kind]
    except ix.IndexSpecError as e:
        log(str(e))
        return 2
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    quiet = QuietWait(args.quiet_load, args.quiet_wait, args.quiet_budget)
    results = [run_size(n, args, kinds, quiet) for n in args.sizes]
    eff = SyntheticDescriptors(1000, dim=args.dim, decay=args.decay,
                               exponent=args.exponent).effective_dim
    header = (f"gallery search benchmark: {args.dim}-d synthetic descriptors "
              f"({args.images_per_id} images an identity, noise {args.noise}, spectrum decay "
              f"{args.decay} exponent {args.exponent}: effective dimension {eff:.1f}, "
              f"seed {args.seed}), "
              f"{args.queries} evaluation + {args.tune_queries} tuning queries, k={K}; "
              f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads "
              f"(batch 1: {args.b1_threads or faiss.omp_get_max_threads()}), "
              f"breadth tuned to recall@10 {args.tune_recall}, "
              f"{os.cpu_count()} CPUs, load average {load0[0]:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at end; {time.perf_counter() - t0:.0f} s in all")
    text = "\n".join([header, "", table(results), "", "search breadth tuning:", sweeps(results),
                      "", targets(results, args.target_recall, args.target_p50_ms)]) + "\n"
    print(text, flush=True)
    if args.out:
        atomic_write_text(args.out, text)
        atomic_write_text(args.out.with_suffix(".json"),
                          json.dumps({"config": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in vars(args).items()},
                                      "faiss_version": faiss.__version__,
                                      "threads": faiss.omp_get_max_threads(),
                                      "loadavg_start": load0[0],
                                      "loadavg_end": os.getloadavg()[0],
                                      "results": results}, indent=1) + "\n")
        log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
