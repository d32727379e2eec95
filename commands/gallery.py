"""Build, grow and search a persistent gallery of person descriptors (FAISS + SQLite).

    # embed a folder of crops into a new gallery
    .venv/bin/python tools/gallery.py build --prototxt prototxt/light/deploy.prototxt \\
        --weights model.caffemodel --images crops/ --out gallery/
    # add more crops to it (same model; the index grows, the save is atomic)
    .venv/bin/python tools/gallery.py add gallery/ --images more_crops/
    # the top 10 entries for each query crop, with their metadata
    .venv/bin/python tools/gallery.py search gallery/ --images queries/ --k 10 --json out.json
    # what is in it
    .venv/bin/python tools/gallery.py info gallery/

``--images`` is a folder of crops (.jpg, .jpeg, .png directly in it, sorted by name). Each entry
records the image path, and camera and pid parsed from Market-1501 (or DukeMTMC-reID) names
when the name follows one (else they stay empty). The gallery remembers its model files; ``add``
and ``search`` reuse them unless ``--prototxt``/``--weights`` are given, and a model whose files
differ from the gallery's (another hash) is refused. ``--index`` chooses the FAISS index:
``auto`` (by size: exact below 50,000 entries, an HNSW graph below 2,000,000, IVF with 8-bit
codes above), ``flat``, ``ivf-flat``, ``ivf-sq8``, ``ivf-pq``, ``hnsw``, with parameters as
``ivf-sq8:nlist=1024,nprobe=32`` or ``hnsw:ef_search=256`` (see rmnet/gallery/index.py).
``search --nprobe`` / ``--ef-search`` override the search breadth.

Bad input (a missing folder or model file, no images, a corrupt manifest, another model's
descriptors) ends with a one-line message naming the file and exit status 2.

Several processes may add to one gallery at once (two cameras' workers): each ``add`` embeds its
crops, then loads the newest version, adds and saves as one transaction; when another process
saved in between, it says so on stderr and adds again on top of the newer version, up to
``--attempts`` times (default 10). If every attempt meets another save it ends with exit status
75 (EX_TEMPFAIL) and a message saying nothing was added: run it again. Searches read complete
versions and are never blocked (docs/concurrency.md).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from rmnet.atomic import atomic_write_text, check_output  # noqa: E402
from commands.errors import command  # noqa: E402
from rmnet.data.images import ImageError  # noqa: E402
from rmnet.data.market import DatasetError, list_images  # noqa: E402
from rmnet.gallery.gallery import (ATTEMPTS, Gallery, GalleryConflict, GalleryError,  # noqa: E402
                                   discard_unsaved, embed_images, entry_from_path, update)
from rmnet.gallery.index import IndexSpecError  # noqa: E402

PROG = "gallery"
EXIT_CONFLICT = 75       # sysexits' EX_TEMPFAIL: other writers kept saving; nothing added, retry


class UsageError(ValueError):
    """Bad command-line input: message, exit status 2."""


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such image folder")
    paths = list_images(folder)
    if not paths:
        raise UsageError(f"{folder}: no images (.jpg, .jpeg or .png) in this folder")
    return paths


def model_paths(args, gallery: Gallery | None) -> list[Path]:
    """The model files: --prototxt/--weights, else the ones the gallery was built with."""
    if args.prototxt or args.weights:
        if not (args.prototxt and args.weights):
            raise UsageError("give both --prototxt and --weights")
        paths = [args.prototxt, args.weights]
    elif gallery is not None and gallery.model_info.get("files"):
        paths = [Path(p) for p in gallery.model_info["files"]]
    else:
        raise UsageError("--prototxt and --weights are needed")
    for p in paths:
        if not p.is_file():
            hint = "" if args.prototxt else " (the gallery's model file: give --prototxt " \
                                            "and --weights)"
            raise UsageError(f"{p}: no such model file{hint}")
    return paths


def load_embedder(args, gallery: Gallery | None):
    from rmnet.deploy.embedder import Embedder, RuntimeUnavailable
    paths = model_paths(args, gallery)
    try:
        emb = Embedder.load(paths, runtime=args.runtime, batch_size=args.batch)
    except RuntimeUnavailable as e:
        raise UsageError(str(e)) from None
    if gallery is not None and emb.model_sha256 != gallery.model_sha256:
        raise GalleryError(f"{gallery.folder}: model {', '.join(map(str, paths))} (sha256 "
                           f"{emb.model_sha256[:12]}) is not the one this gallery was built "
                           f"with ({gallery.model_sha256[:12]}: "
                           f"{', '.join(gallery.model_info.get('files', []))})")
    log(f"model {', '.join(map(str, paths))} on {emb.runtime}")
    return emb


def cmd_build(args) -> int:
    paths = images_in(args.images)
    if (args.out / "MANIFEST.json").exists() and not args.force:
        raise UsageError(f"{args.out}: already holds a gallery (use `add` to grow it, or "
                         f"--force to replace it)")
    emb = load_embedder(args, None)
    files = [str(p.resolve()) for p in model_paths(args, None)]
    created = not args.out.exists()
    try:
        g = Gallery.create(args.out, emb.dim, emb.model_sha256, index=args.index,
                           model_info={"files": files, "runtime_at_build": emb.runtime},
                           overwrite=args.force)
        g.add_images(emb, [str(p) for p in paths], progress=not args.no_progress)
        where = g.save()
    except BaseException:
        if created:       # a failed build leaves no folder it made behind (another's is kept)
            with contextlib.suppress(OSError, GalleryError):   # (the first error is the news)
                discard_unsaved(args.out)
        raise
    log(f"wrote {len(g)} entries to {args.out} ({where.name}, index {g.spec})")
    return 0


def cmd_add(args) -> int:
    paths = images_in(args.images)
    emb = load_embedder(args, Gallery.load(args.gallery))
    feats = embed_images(emb, [str(p) for p in paths], progress=not args.no_progress)
    entries = [entry_from_path(p) for p in paths]

    def retrying(conflict: GalleryConflict, attempt: int) -> None:
        log(f"{args.gallery}: another process saved v{conflict.found:06d} after this add "
            f"loaded v{conflict.loaded:06d}; adding again on top of it (attempt {attempt} of "
            f"{args.attempts})")

    g, ids = update(args.gallery, lambda g: g.add_chunked(feats, entries, emb.model_sha256),
                    attempts=args.attempts, on_retry=retrying)
    log(f"added {len(ids)} entries to {args.gallery}: {len(g)} now (v{g.version:06d}, "
        f"index {g.spec})")
    return 0


def cmd_search(args) -> int:
    paths = images_in(args.images)
    g = Gallery.load(args.gallery)
    if args.nprobe is not None or args.ef_search is not None:
        kind = g.spec.kind if g.spec is not None else "none (empty gallery)"
        for opt, value, applies in (("--nprobe", args.nprobe, kind.startswith("ivf")),
                                    ("--ef-search", args.ef_search, kind == "hnsw")):
            if value is not None and not applies:
                log(f"note: {opt} does not apply to this gallery's index ({kind}); ignored")
        g.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    emb = load_embedder(args, g)
    feats = emb.embed_paths(paths)
    hits = g.search(feats, args.k, model_sha256=emb.model_sha256)
    out = {"gallery": str(args.gallery), "entries": len(g), "index": str(g.spec), "k": args.k,
           "queries": []}
    for p, row in zip(paths, hits):
        out["queries"].append({"path": str(p), "hits": [
            {"rank": r, **h.to_json()} for r, h in enumerate(row, 1)]})
        best = row[0] if row else None
        print(f"{p.name}: " + (f"{Path(best.path).name} (score {best.score:.3f}, camera "
                               f"{best.camera}, pid {best.pid})" if best else "no match"))
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0


def cmd_info(args) -> int:
    g = Gallery.load(args.gallery)
    print(json.dumps(g.summary(), indent=1))
    return 0


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="gallery.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def model_opts(p, required: bool = False):
        p.add_argument("--prototxt", type=Path, required=required, help="deploy prototxt")
        p.add_argument("--weights", type=Path, required=required, help="caffemodel")
        p.add_argument("--runtime", default="auto",
                       choices=("auto", "openvino", "onnxruntime", "opencv", "pycaffe"),
                       help="inference runtime (default: the fastest installed)")
        p.add_argument("--batch", type=int, default=16, help="crops a forward pass")

    b = sub.add_parser("build", help="embed a folder of crops into a new gallery")
    model_opts(b, required=True)
    b.add_argument("--images", type=Path, required=True, help="folder of crops")
    b.add_argument("--out", type=Path, required=True, help="gallery folder to create")
    b.add_argument("--index", default="auto", help="index kind[:params] (default auto)")
    b.add_argument("--force", action="store_true", help="replace an existing gallery")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(fn=cmd_build)

    a = sub.add_parser("add", help="embed more crops into an existing gallery")
    a.add_argument("gallery", type=Path)
    model_opts(a)
    a.add_argument("--images", type=Path, required=True, help="folder of crops")
    a.add_argument("--attempts", type=int, default=ATTEMPTS,
                   help="tries when other processes save the gallery meanwhile "
                        "(default %(default)s)")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(fn=cmd_add)

    s = sub.add_parser("search", help="top-k gallery entries for each query crop")
    s.add_argument("gallery", type=Path)
    model_opts(s)
    s.add_argument("--images", type=Path, required=True, help="folder of query crops")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--nprobe", type=int, help="IVF cells to scan (overrides the gallery's)")
    s.add_argument("--ef-search", type=int, help="HNSW search breadth")
    s.add_argument("--json", type=Path, help="write the results here")
    s.set_defaults(fn=cmd_search)

    i = sub.add_parser("info", help="what a gallery holds")
    i.add_argument("gallery", type=Path)
    i.set_defaults(fn=cmd_info)
    args = ap.parse_args(argv)
    if getattr(args, "k", 1) < 1 or getattr(args, "batch", 1) < 1 or \
            getattr(args, "attempts", 1) < 1:
        ap.error("--k, --batch and --attempts must be >= 1")
    for opt in ("nprobe", "ef_search"):
        if getattr(args, opt, None) is not None and getattr(args, opt) < 1:
            ap.error(f"--{opt.replace('_', '-')} must be >= 1")
    return args


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if getattr(args, "out", None) is not None:
        check_output(args.out, "--out", folder=True)
    check_output(getattr(args, "json", None), "--json")
    try:
        return args.fn(args)
    except GalleryConflict as e:
        log(str(e))
        return EXIT_CONFLICT
    except (GalleryError, IndexSpecError, UsageError, DatasetError, ImageError,
            FileNotFoundError) as e:
        log(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
