"""Evaluate a person re-identification model on Market-1501 or any dataset rmnet.data.datasets
reads (MSMT17, CUHK03-NP, DukeMTMC-reID, custom folders or lists; --format, else detected): the
model may come from training on another set (cross-dataset evaluation). Only the query and
gallery are read: a root without a training split (e.g. only query/ and bounding_box_test/, an
evaluation set) is scored as it is.

    # extract descriptors with a caffemodel and score them
    .venv/bin/python tools/eval_market.py --prototxt prototxt/light/deploy.prototxt \\
        --weights model.caffemodel --data Market-1501-v15.09.15 --flip --cache feats.h5 \\
        --json results.json
    # score a features file (from this tool's --cache, or any model's in the same format)
    .venv/bin/python tools/eval_market.py --features feats.h5 --rerank
    # ranked lists of 8 random queries
    .venv/bin/python tools/eval_market.py --features feats.h5 --data ROOT \\
        --rank-list ranks.png --num-queries 8 --top-k 10

Protocol (the official Market-1501 evaluation, see rmnet/eval/metrics.py): same-pid same-camera gallery images and pid -1
are junk, pid 0 distractors are negatives, queries without a true match are skipped and counted.
Two mAP conventions are reported, labelled: the non-interpolated AP of torchreid/fast-reid
("mAP" in the JSON) and the official Market-1501 MATLAB code's trapezoidal AP
("mAP_official", also what OpenVINO's accuracy checker and Intel's published numbers use).

Descriptors (rmnet/eval/features.py): images resized to the prototxt's Input size, raw BGR 0..255,
the net's last output (or --blob), L2-normalised; --flip adds the mirrored image's descriptor
(concatenated, normalised again). --cache FILE.h5 stores them with the sha256 of the prototxt and
caffemodel, the flip flag and the blob name, and is reused only when all of those and the image
list match. --rerank applies k-reciprocal re-ranking (rmnet/eval/rerank.py) before scoring, in
the authors' convention or torchreid's (--rerank-convention; the output and JSON say which).

Verification: the ROC of "same person" decisions over the non-junk (query, gallery) pairs, TPR
at FPR 1e-4, 1e-3, 1e-2 in the output and the JSON ("roc"), the curve with --roc out.png.
Without camera ids (custom data) the same-camera exclusion cannot apply: the output and the JSON
("camera_ids": false) say so.

Bad input (missing folders, unparseable names, corrupt or wrongly shaped images, a caffemodel
that does not fit the prototxt, a malformed features file) ends with a one-line message naming
the file and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402


from rmnet.atomic import atomic_path, atomic_write_text  # noqa: E402
from rmnet.caffe.caffemodel import WeightsError, sha256_file  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402
from rmnet.data.images import MAX_ASPECT_CHANGE, ImageError  # noqa: E402
from rmnet.data.market import DatasetError, pids_camids  # noqa: E402
from rmnet.data.datasets import FORMATS, load_dataset  # noqa: E402
from rmnet.deploy.backends import PycaffeBackend, RuntimeUnavailable  # noqa: E402
from rmnet.deploy.embedder import Embedder  # noqa: E402
from rmnet.deploy.export import ExportCheckError  # noqa: E402
from rmnet.eval.descriptors import describe  # noqa: E402
from rmnet.eval.evaluate import Rerank, score  # noqa: E402
from rmnet.eval.features import FeatureSet, FeaturesFileError, read_features, write_features  # noqa: E402
from rmnet.eval.metrics import ROC_FPRS, RankResult, ranked_gallery, roc_curve  # noqa: E402

PROG = "eval_market"
# Features-file attributes that must match for a cache to be reused.
CACHE_KEYS = ("prototxt_sha256", "weights_sha256", "flip", "blob", "runtime")


class UsageError(ValueError):
    """A problem with the command line or the input files: message, exit status 2."""


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# --- features -----------------------------------------------------------------------------------

def _cache_problem(path: Path, attrs: dict, want: dict, ds, query: FeatureSet,
                   gallery: FeatureSet) -> str | None:
    """Why the cache at ``path`` cannot be reused, or None if it can."""
    for k in CACHE_KEYS:
        if str(attrs.get(k)) != str(want[k]):
            return f"{k} differs ({attrs.get(k)!r} in the cache, now {want[k]!r})"
    for name, fs in (("query", query), ("gallery", gallery)):
        records = getattr(ds, name)
        names = [str(r.path.relative_to(ds.root)) for r in records]
        if fs.paths != names:
            return f"the {name} image list differs from {ds.root}"
        pids, camids = pids_camids(records)
        if not (np.array_equal(fs.pids, pids) and np.array_equal(fs.camids, camids)):
            return f"the {name} labels differ from {ds.root}"
    return None


def extract_dataset(args) -> tuple[FeatureSet, FeatureSet, dict]:
    """Query and gallery features of --data with --prototxt/--weights, through --cache."""
    for opt in ("prototxt", "weights", "data"):
        if getattr(args, opt) is None:
            raise UsageError(f"--{opt} is needed (or score a features file with --features)")
    for p, what in ((args.prototxt, "prototxt"), (args.weights, "caffemodel")):
        if not p.is_file():
            raise UsageError(f"{p}: no such {what} file")
    ds = load_dataset(args.data, None if args.format == "auto" else args.format)
    log(ds.summary())
    want = {"prototxt_sha256": sha256_file(args.prototxt),
            "weights_sha256": sha256_file(args.weights),
            "flip": int(args.flip), "blob": args.blob or "", "runtime": args.runtime}
    if args.cache and args.cache.exists():
        # Only a features file this tool wrote may be replaced: anything else given as --cache
        # by mistake (a caffemodel, another tool's HDF5) is refused, not overwritten.
        try:
            q, g, attrs = read_features(args.cache)
        except FeaturesFileError as e:
            raise UsageError(f"--cache {args.cache}: exists and is not a features file ({e}); "
                             f"refusing to overwrite it: remove it or give another path"
                             ) from None
        if not all(k in attrs for k in CACHE_KEYS):
            raise UsageError(f"--cache {args.cache}: a features file this tool did not write "
                             f"(no {', '.join(k for k in CACHE_KEYS if k not in attrs)} "
                             f"attributes); refusing to overwrite it")
        problem = _cache_problem(args.cache, attrs, want, ds, q, g)
        if problem is None:
            log(f"reusing cached features {args.cache}")
            return q, g, attrs
        log(f"stale features cache {args.cache}: {problem}; re-extracting")

    if args.runtime == "pycaffe":
        backend = PycaffeBackend(args.prototxt, args.weights, blob=args.blob)
    else:   # exported once (checked against pycaffe) and cached next to the caffemodel
        backend = Embedder.load([args.prototxt, args.weights], runtime=args.runtime).backend
    q, g = describe(backend, ds, batch=args.batch, flip=args.flip,
                    max_aspect_change=args.max_aspect_change, progress=not args.no_progress)
    total_images, total_time = len(q) + len(g), q.seconds + g.seconds
    rate = total_images / max(total_time, 1e-9)
    log(f"feature extraction: {total_images} images in {total_time:.1f} s, {rate:.1f} images/s"
        f"{' (two forward passes each: --flip)' if args.flip else ''}; "
        f"{q.features.shape[1]}-d descriptors")
    attrs = dict(want, prototxt=str(args.prototxt), weights=str(args.weights),
                 data_root=str(ds.root.resolve()), images_per_second=rate,
                 data_format=ds.layout, camera_ids=int(ds.has_camids))
    if args.cache:
        write_features(args.cache, q, g, attrs)
        log(f"wrote features cache {args.cache}")
    return q, g, attrs


# --- scoring ------------------------------------------------------------------------------------

def results_table(res: RankResult, title: str) -> str:
    rows = [(f"rank-{r}", res.rank(r)) for r in (1, 5, 10, 20) if r <= res.max_rank]
    rows += [("mAP (non-interpolated, torchreid)", res.mAP),
             ("mAP (official, trapezoidal)", res.mAP_official),
             ("mINP", res.mINP)]
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * max(len(title), width + 10)]
    lines += [f"{k:<{width}}  {100 * v:6.2f} %" for k, v in rows]
    lines.append(f"{'queries scored':<{width}}  {res.num_valid_queries}"
                 f" (skipped, no true match: {res.num_skipped_queries})")
    return "\n".join(lines)


# --- ranked lists -------------------------------------------------------------------------------

BORDER = {1: (0, 170, 0), 0: (0, 0, 220), -1: (150, 150, 150)}   # BGR: green, red, grey
CELL_H, CELL_W, PAD = 128, 64, 4


def _resolve(path: str, roots: list[Path]) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    for root in roots:
        if (root / p).exists():
            return root / p
    where = ", ".join(str(r) for r in roots) or "no root known: pass --data"
    raise UsageError(f"{path}: image not found under {where}")


def _cell(path: Path, colour: tuple[int, int, int], label: str) -> np.ndarray:
    import cv2
    from rmnet.data.images import load_bgr, resize_to
    img = resize_to(load_bgr(path), CELL_H, CELL_W)
    cell = np.full((CELL_H + 2 * PAD + 14, CELL_W + 2 * PAD, 3), 255, np.uint8)
    cell[:CELL_H + 2 * PAD] = colour
    cell[PAD:PAD + CELL_H, PAD:PAD + CELL_W] = img
    cv2.putText(cell, label, (2, CELL_H + 2 * PAD + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                (0, 0, 0), 1, cv2.LINE_AA)
    return cell


def rank_list_image(dist: np.ndarray, q: FeatureSet, g: FeatureSet, queries: list[int],
                    top_k: int, roots: list[Path]) -> np.ndarray:
    """One row per query: the query (blue border), a gap, then its top_k gallery images with
    green (true match), red (false match) or grey (junk) borders; labels show rank and pid."""
    rows = []
    for qi in queries:
        idx, kind = ranked_gallery(dist[qi], int(q.pids[qi]), int(q.camids[qi]), g.pids,
                                   g.camids, top_k)
        cells = [_cell(_resolve(q.paths[qi], roots), (200, 80, 0),
                       f"q{qi} id{q.pids[qi]}"),
                 np.full((CELL_H + 2 * PAD + 14, 12, 3), 255, np.uint8)]
        for rank, (gi, k) in enumerate(zip(idx, kind), 1):
            cells.append(_cell(_resolve(g.paths[gi], roots), BORDER[int(k)],
                               f"{rank} id{g.pids[gi]}"))
        blank = np.full_like(cells[-1], 255)
        cells += [blank] * (top_k - len(idx))
        rows.append(np.concatenate(cells, axis=1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def write_rank_list(args, dist: np.ndarray, q: FeatureSet, g: FeatureSet, attrs: dict) -> None:
    import cv2
    nq = len(q)
    if args.queries:
        try:
            chosen = [int(s) for s in args.queries.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--queries: expected comma-separated indices, got "
                             f"{args.queries!r}") from None
        bad = [i for i in chosen if not 0 <= i < nq]
        if bad or not chosen:
            raise UsageError(f"--queries: indices must be in 0..{nq - 1}, got {args.queries!r}")
    else:
        rng = np.random.default_rng(args.seed)
        chosen = sorted(rng.choice(nq, size=min(args.num_queries, nq), replace=False).tolist())
    roots = [args.data] if args.data else []
    if attrs.get("data_root"):
        roots.append(Path(attrs["data_root"]))
    img = rank_list_image(dist, q, g, chosen, args.top_k, roots)
    with atomic_path(args.rank_list) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise UsageError(f"{args.rank_list}: OpenCV could not write a PNG there")
    log(f"wrote ranked lists of queries {','.join(map(str, chosen))} to {args.rank_list}")


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="eval_market.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("model and data")
    src.add_argument("--prototxt", type=Path, help="deploy prototxt (with an Input layer)")
    src.add_argument("--weights", type=Path, help="caffemodel")
    src.add_argument("--data", type=Path, help="dataset root (any format of rmnet.data.datasets: "
                     "Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP, custom folders or lists)")
    src.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                     help="the layout of --data (default: detected from the folder)")
    src.add_argument("--features", type=Path,
                     help="score this features HDF5 file instead of extracting")
    src.add_argument("--cache", type=Path, help="features HDF5 to reuse or write")
    src.add_argument("--blob", help="output blob (default: the net's last output)")
    src.add_argument("--batch", type=int, default=32)
    src.add_argument("--runtime", default="pycaffe",
                     choices=("pycaffe", "auto", "openvino", "onnxruntime", "opencv"),
                     help="feature extraction runtime (default pycaffe, the reference; auto: the "
                          "fastest installed, via an export checked against pycaffe)")
    src.add_argument("--flip", action="store_true",
                     help="add the mirrored image's descriptor (concatenate, re-normalise)")
    src.add_argument("--max-aspect-change", type=float, default=MAX_ASPECT_CHANGE,
                     help="refuse images whose height/width is this many times off the net "
                          "input's (0: resize anything; default %(default)s)")
    src.add_argument("--no-progress", action="store_true", help="no progress bar")
    sc = ap.add_argument_group("scoring")
    sc.add_argument("--distance", choices=("cosine", "euclidean"), default="cosine")
    sc.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    sc.add_argument("--rerank-convention", choices=("authors", "torchreid"), default="authors",
                    help="authors: squared Euclidean original distance, as the authors' code "
                         "(default); torchreid: that distance squared again, as torchreid's "
                         "pipeline (rmnet/eval/rerank.py)")
    sc.add_argument("--roc", type=Path, help="PNG of the verification ROC (TPR vs FPR)")
    sc.add_argument("--k1", type=int, default=20)
    sc.add_argument("--k2", type=int, default=6)
    sc.add_argument("--lambda", dest="lambda_value", type=float, default=0.3)
    sc.add_argument("--index", help="rank through a FAISS gallery index: exact, approx (the "
                    "approximate index of large galleries) or a spec like "
                    "ivf-sq8:nlist=256,nprobe=16 (rmnet/gallery/evaluate.py); cosine only")
    sc.add_argument("--index-k", type=int, default=1000,
                    help="entries retrieved a query with --index (default %(default)s)")
    sc.add_argument("--max-rank", type=int, default=20)
    sc.add_argument("--json", type=Path, help="write the results as JSON here")
    rl = ap.add_argument_group("ranked lists")
    rl.add_argument("--rank-list", type=Path, help="PNG of queries and their top-k")
    rl.add_argument("--num-queries", type=int, default=8)
    rl.add_argument("--queries", help="comma-separated query indices (instead of random)")
    rl.add_argument("--top-k", type=int, default=10)
    rl.add_argument("--seed", type=int, default=0, help="for the random query choice")
    args = ap.parse_args(argv)
    given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv)
             if str(a).startswith("--")}
    for needs, opts in (("--rerank", ("--k1", "--k2", "--lambda", "--rerank-convention")),
                        ("--index", ("--index-k",)),
                        ("--rank-list", ("--num-queries", "--queries", "--top-k", "--seed"))):
        stray = [o for o in opts if o in given]
        if stray and not getattr(args, needs[2:].replace("-", "_")):
            ap.error(f"{', '.join(stray)} {'applies' if len(stray) == 1 else 'apply'} only "
                     f"with {needs}")
    if args.features and ({"--batch", "--max-aspect-change"} & given):
        ap.error("--features scores a features file: --batch and --max-aspect-change only "
                 "apply when extracting")
    if args.features and (args.prototxt or args.weights or args.cache or args.flip
                          or args.blob or args.runtime != "pycaffe"):
        ap.error("--features scores a features file: --prototxt, --weights, --cache, --flip, "
                 "--blob and --runtime only apply when extracting")
    if args.index and (args.rerank or args.distance != "cosine"):
        ap.error("--index ranks by cosine similarity: not with --rerank or --distance euclidean")
    if args.blob and args.runtime != "pycaffe":
        ap.error("--blob names a pycaffe blob: it needs --runtime pycaffe")
    for opt in ("batch", "k1", "k2", "max_rank", "top_k", "num_queries", "index_k"):
        if getattr(args, opt) < 1:
            ap.error(f"--{opt.replace('_', '-')} must be >= 1")
    if args.max_aspect_change and args.max_aspect_change < 1:
        ap.error("--max-aspect-change must be >= 1 (or 0 to disable)")
    for opt in ("json", "cache", "rank_list", "roc"):       # before any extraction work
        check_output(getattr(args, opt), f"--{opt.replace('_', '-')}")
    return args


def run(args) -> int:
    if args.features:
        q, g, attrs = read_features(args.features)
        source = str(args.features)
    else:
        q, g, attrs = extract_dataset(args)
        source = str(args.weights)
    t = time.perf_counter()
    rerank = Rerank(args.k1, args.k2, args.lambda_value, args.rerank_convention) \
        if args.rerank else None
    if args.index:
        from rmnet.gallery.evaluate import index_score
        dist, res, spec, k = index_score(q, g, args.index, args.index_k, args.max_rank)
        log(f"ranked through a FAISS index {spec}, top {k} a query (the rest after them)")
    else:
        dist, res = score(q, g, args.distance, rerank, args.max_rank)
    t_score = time.perf_counter() - t
    rr = rerank.describe() if rerank else "no re-ranking"
    if args.index:
        rr += f", through a FAISS index ({args.index}, top {args.index_k})"
    camera_ids = bool(int(attrs.get("camera_ids", 1)))
    flip = attrs.get("flip")
    title = (f"{source}: {len(q)} queries x {len(g)} gallery, "
             f"{q.features.shape[1]}-d{', flip' if flip in (1, True) else ''}, "
             f"{args.distance} distance, {rr}")
    if not camera_ids:
        title += ("\nno camera ids: the same-camera exclusion was not applied (every gallery "
                  "image counts as another camera)")
    roc = roc_curve(dist, q.pids, g.pids, q.camids, g.camids)
    table = results_table(res, title)
    table += "\n" + "  ".join(f"TPR@FPR={t:g} {100 * v:.2f} %"
                              for t, v in ((t, roc.tpr_at_fpr(t)) for t in ROC_FPRS))
    print(table, flush=True)
    log(f"scoring took {t_score:.1f} s")
    if args.json:
        out = res.to_json()
        out["config"] = {"source": source, "distance": args.distance,
                         "rerank": {"k1": args.k1, "k2": args.k2,
                                    "lambda": args.lambda_value,
                                    "convention": args.rerank_convention}
                         if args.rerank else None,
                         "camera_ids": camera_ids, "same_camera_exclusion": camera_ids,
                         "data_format": attrs.get("data_format"),
                         "flip": None if flip is None else bool(flip),
                         "index": ({"mode": args.index, "k": args.index_k}
                                   if args.index else None),
                         "feature_dim": int(q.features.shape[1]),
                         "num_query": len(q), "num_gallery": len(g)}
        out["roc"] = roc.to_json()
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.roc:
        from rmnet.eval.roc_plot import plot_roc
        plot_roc(roc, args.roc, title=f"{Path(source).name}, {rr}")
        log(f"wrote {args.roc}")
    if args.rank_list:
        write_rank_list(args, dist, q, g, attrs)
    return 0


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (DatasetError, ImageError, WeightsError, FeaturesFileError, UsageError,
            FileNotFoundError, ValueError, ExportCheckError, RuntimeUnavailable) as e:
        log(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
