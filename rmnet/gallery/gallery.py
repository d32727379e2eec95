"""A persistent gallery of person descriptors: a FAISS index plus a SQLite metadata store, saved
together atomically, tied to the model that made the descriptors.

    from rmnet.deploy.embedder import Embedder
    from rmnet.gallery import Gallery
    emb = Embedder.load(["prototxt/light/deploy.prototxt", "model.caffemodel"])
    g = Gallery.create("gallery/", dim=emb.dim, model_sha256=emb.model_sha256)
    g.add_images(emb, paths)                      # camera/pid parsed from Market-1501 names
    g.save()
    g = Gallery.load("gallery/")
    hits = g.search(emb.embed(crops), k=10, model_sha256=emb.model_sha256)
    hits[0][0].path, hits[0][0].camera, hits[0][0].score

Folder layout::

    gallery/
      MANIFEST.json      which version is current, the model hash, dim, index spec, counts,
                         and the sha256 and size of the current version's two files
      v000007/index.faiss  meta.sqlite
      v000006/...        the previous version, kept for readers that opened it mid-switch

A save writes a complete new version folder under a temporary name, fsyncs it, renames it to
``vNNNNNN`` and only then replaces ``MANIFEST.json`` (written to a temporary file, fsynced and
renamed: ``rmnet.atomic``). A crash or an error at any point before that last rename leaves the
old manifest pointing at the old, untouched version, so the previous gallery stays readable;
leftovers of an interrupted save are removed by the next one. Older versions than the previous
one are deleted after a save. Saves take an exclusive lock (``.lock``): two writers cannot
interleave. Loading checks every file against the manifest (size, sha256) and the index against
the metadata (same count), so a damaged gallery is an error naming the file, never wrong answers.

Adding to a loaded gallery is incremental: new descriptors go into the existing index (an IVF
index is not retrained) and the next save writes the new version. Descriptors are L2-normalised
on the way in (cosine = inner product). A gallery refuses descriptors of another length and
descriptors from another model: every add and search names the model (``model_sha256``, the
``Embedder``'s), compared with the one stored at creation.

Index choice (``rmnet.gallery.index``): ``"auto"`` (the default) picks by size at the first add,
and an auto gallery that grows into the next size class is converted once: ``flat`` to ``hnsw``
past ``FLAT_MAX`` entries, ``hnsw`` to ``ivf-sq8`` past ``HNSW_MAX`` (both hold the descriptors
exactly, so the new index is built, and an IVF one trained, on all of them). An ``hnsw`` search
breadth left at its default follows the gallery's size as it grows. An IVF index is trained
once: after a gallery has grown more than tenfold past its training size, rebuild it (build a
new gallery from the images) for cells of the right size.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from rmnet.atomic import atomic_write_text, fsync_path, write_bytes
from rmnet.caffe.caffemodel import sha256_file
from rmnet.gallery import index as ix
from rmnet.gallery.store import Entry, MetadataStore, Record, StoreError

MANIFEST = "MANIFEST.json"
INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"
FORMAT = "rmnet-gallery"
FORMAT_VERSION = 1
VERSION_RE = re.compile(r"^v(\d{6,})$")


class GalleryError(ValueError):
    """A gallery that cannot be read, or input it refuses; the message names the folder."""


@dataclass(frozen=True)
class Hit:
    """One search result: the entry's id, its cosine similarity to the query, its metadata."""
    id: int
    score: float
    path: str
    camera: int | None
    timestamp: float | None
    pid: int | None

    def to_json(self) -> dict:
        return asdict(self)


def entry_from_path(path: str | os.PathLike) -> Entry:
    """An Entry for an image file: camera and pid from a Market-1501 (or DukeMTMC-reID) name
    when the name follows one, else left empty."""
    from rmnet.data.market import DatasetError, parse_name
    try:
        pid, cam = parse_name(Path(path).name)
    except DatasetError:
        return Entry(path=str(path))
    return Entry(path=str(path), camera=cam, pid=pid)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# Hooks the save goes through, one per file it writes: tests replace them to inject failures.
def write_index_file(index, path: Path) -> None:
    # serialised in memory and written by Python: FAISS's own writer reports a full disk as a
    # RuntimeError from C++, this way it is the OSError every other output gives
    write_bytes(path, ix.faiss_module().serialize_index(index).tobytes())


def write_meta_file(store: MetadataStore, path: Path) -> None:
    store.save_copy(path)


def write_manifest(manifest: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")


class Gallery:
    """Descriptors + metadata + model identity; see the module doc."""

    def __init__(self, folder: str | os.PathLike, dim: int, model_sha256: str,
                 index_request: ix.IndexSpec | None = None, model_info: dict | None = None):
        if int(dim) < 1:
            raise GalleryError(f"{folder}: descriptor length must be >= 1, got {dim}")
        if not isinstance(model_sha256, str) or not model_sha256:
            raise GalleryError(f"{folder}: a gallery needs the model's hash (model_sha256)")
        self.folder = Path(folder)
        self.dim = int(dim)
        self.model_sha256 = model_sha256
        self.model_info = dict(model_info or {})
        self.index_request = index_request          # None: auto
        self.spec: ix.IndexSpec | None = None       # resolved, once the index exists
        self.index = None
        self.store = MetadataStore()
        self.next_id = 0
        self.version = 0
        self.trained_on = 0
        self.created = _now()

    # --- creating and loading -------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, dim: int, model_sha256: str,
               index: str | ix.IndexSpec | None = "auto", model_info: dict | None = None,
               overwrite: bool = False) -> "Gallery":
        """A new, empty gallery for ``folder`` (written by ``save``). An existing gallery there
        is refused unless ``overwrite`` (its versions are replaced at the first save)."""
        folder = Path(folder)
        if (folder / MANIFEST).exists() and not overwrite:
            raise GalleryError(f"{folder}: already holds a gallery (load it to add to it, or "
                               f"overwrite it)")
        if folder.exists() and not folder.is_dir():
            raise GalleryError(f"{folder}: exists and is not a folder")
        if isinstance(index, str):
            try:
                index = ix.parse_spec(index)
            except ix.IndexSpecError as e:
                raise GalleryError(f"{folder}: {e}") from None
        g = cls(folder, dim, model_sha256, index, model_info)
        if overwrite and (folder / MANIFEST).exists():
            try:
                g.version = int(json.loads((folder / MANIFEST).read_text()).get("version", 0))
            except (OSError, ValueError, AttributeError):
                g.version = 0
        return g

    @classmethod
    def load(cls, folder: str | os.PathLike, verify: bool = True) -> "Gallery":
        """The gallery saved in ``folder``; ``GalleryError`` naming what is wrong.

        ``verify``: check both files' sha256 against the manifest (reads them once more)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise GalleryError(f"{folder}: no such gallery folder")
        mpath = folder / MANIFEST
        if not mpath.is_file():
            raise GalleryError(f"{folder}: not a gallery (no {MANIFEST})")
        try:
            m = json.loads(mpath.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GalleryError(f"{mpath}: corrupt gallery manifest ({e})") from None
        need = ("format", "format_version", "version", "current", "dim", "model_sha256",
                "index", "count", "next_id", "files")
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise GalleryError(f"{mpath}: not a {FORMAT} manifest")
        missing = [k for k in need if k not in m]
        if missing:
            raise GalleryError(f"{mpath}: corrupt gallery manifest (missing "
                               f"{', '.join(missing)})")
        if m["format_version"] != FORMAT_VERSION:
            raise GalleryError(f"{mpath}: gallery format {m['format_version']}, this code reads "
                               f"{FORMAT_VERSION}")
        current = str(m["current"])
        if not VERSION_RE.match(current):
            raise GalleryError(f"{mpath}: corrupt gallery manifest (current {current!r})")
        vdir = folder / current
        try:
            request = None if m.get("index_request") in (None, "auto") else \
                ix.IndexSpec.from_json(m["index_request"])
            spec = None if m["index"] is None else ix.IndexSpec.from_json(m["index"])
            g = cls(folder, int(m["dim"]), str(m["model_sha256"]), request, m.get("model"))
            files = {name: m["files"][name] for name in (INDEX_FILE, META_FILE)
                     if name in m["files"]}
        except (ix.IndexSpecError, GalleryError, TypeError, ValueError, KeyError) as e:
            raise GalleryError(f"{mpath}: corrupt gallery manifest ({e})") from None
        for name, info in files.items():
            p = vdir / name
            if not p.is_file():
                raise GalleryError(f"{p}: missing (the manifest names it)")
            if p.stat().st_size != info.get("bytes"):
                raise GalleryError(f"{p}: {p.stat().st_size} bytes, the manifest says "
                                   f"{info.get('bytes')} (damaged)")
            if verify and sha256_file(p) != info.get("sha256"):
                raise GalleryError(f"{p}: sha256 differs from the manifest's (damaged)")
        if META_FILE not in files:
            raise GalleryError(f"{mpath}: corrupt gallery manifest (no {META_FILE})")
        try:
            g.store = MetadataStore.load_copy(vdir / META_FILE)
        except StoreError as e:
            raise GalleryError(str(e)) from None
        if spec is not None:
            if INDEX_FILE not in files:
                raise GalleryError(f"{mpath}: corrupt gallery manifest (no {INDEX_FILE})")
            try:
                g.index = ix.faiss_module().read_index(str(vdir / INDEX_FILE))
            except RuntimeError as e:
                raise GalleryError(f"{vdir / INDEX_FILE}: not a FAISS index "
                                   f"({str(e).splitlines()[0]})") from None
            g.spec = spec
            ix.set_search_params(g.index, spec)
            if g.index.d != g.dim:
                raise GalleryError(f"{vdir / INDEX_FILE}: {g.index.d}-d index, the manifest "
                                   f"says {g.dim}-d")
        n_index = 0 if g.index is None else int(g.index.ntotal)
        if n_index != len(g.store) or n_index != int(m["count"]):
            raise GalleryError(f"{vdir}: the index holds {n_index} entries, the metadata "
                               f"{len(g.store)}, the manifest {m['count']} (inconsistent)")
        g.next_id, g.version = int(m["next_id"]), int(m["version"])
        g.trained_on = int(m.get("trained_on", 0))
        g.created = m.get("created", g.created)
        return g

    # --- checks ----------------------------------------------------------------------------

    def _descriptors(self, x: np.ndarray, model_sha256: str | None, what: str) -> np.ndarray:
        from rmnet.eval.metrics import l2_normalize
        if model_sha256 is not None and model_sha256 != self.model_sha256:
            made = self.model_info.get("files")
            made = f" ({', '.join(made)})" if made else ""
            raise GalleryError(f"{self.folder}: {what} come from model {model_sha256[:12]}, "
                               f"this gallery holds descriptors of model "
                               f"{self.model_sha256[:12]}{made}; descriptors of two models "
                               f"cannot be compared: build a new gallery for the new model")
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise GalleryError(f"{self.folder}: {what} must be a (N, {self.dim}) array, got "
                               f"shape {x.shape}")
        if x.shape[1] != self.dim:
            raise GalleryError(f"{self.folder}: {what} are {x.shape[1]}-d, this gallery holds "
                               f"{self.dim}-d descriptors")
        try:
            return l2_normalize(x)
        except ValueError as e:
            raise GalleryError(f"{self.folder}: {what}: {e}") from None

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def __repr__(self) -> str:
        return (f"Gallery({self.folder}, {len(self)} entries, {self.dim}-d, "
                f"index {self.spec or 'not built'}, model {self.model_sha256[:12]})")

    # --- changing ----------------------------------------------------------------------------

    def _make_index(self, x: np.ndarray, ids: np.ndarray, request: ix.IndexSpec) -> None:
        spec = ix.resolve(request, len(x), self.dim)
        try:
            index = ix.build(spec, self.dim, x if ix.needs_training(spec) else None)
        except ix.IndexSpecError as e:
            raise GalleryError(f"{self.folder}: {e}") from None
        ix.add(index, x, ids)
        self.index, self.spec, self.trained_on = index, spec, len(x)

    def add(self, descriptors: np.ndarray, entries: Sequence[Entry], *,
            model_sha256: str) -> np.ndarray:
        """Add descriptors with one Entry each; returns their new ids. Nothing is added when
        anything is refused."""
        x = self._descriptors(descriptors, model_sha256, "descriptors")
        entries = list(entries)
        if len(entries) != len(x):
            raise GalleryError(f"{self.folder}: {len(x)} descriptors but {len(entries)} entries")
        try:
            self.store.validate(entries)
        except StoreError as e:
            raise GalleryError(f"{self.folder}: {e}") from None
        if not len(x):
            return np.zeros(0, np.int64)
        ids = np.arange(self.next_id, self.next_id + len(x), dtype=np.int64)
        if self.index is None:
            self._make_index(x, ids, self.index_request or ix.auto_spec(len(x)))
        else:
            before, grown = len(self), len(self) + len(x)
            target = ix.auto_spec(grown)
            if (self.index_request is None and self.spec.kind in ("flat", "hnsw")
                    and target.kind != self.spec.kind):
                old_ids, old_x = ix.stored_vectors(self.index)
                self._make_index(np.concatenate([old_x, x]), np.concatenate([old_ids, ids]),
                                 target)
            else:
                ix.add(self.index, x, ids)
                if (self.spec.kind == "hnsw"
                        and self.spec.ef_search == ix.default_ef_search(before)):
                    self.spec = replace(self.spec, ef_search=ix.default_ef_search(grown))
                    ix.set_search_params(self.index, self.spec)
        self.store.add(ids, entries)
        self.next_id += len(x)
        return ids

    def add_images(self, embedder, paths: Sequence[str | os.PathLike],
                   entries: Sequence[Entry] | None = None, chunk: int = 256,
                   progress: bool = True) -> np.ndarray:
        """Embed image files with ``embedder`` and add them (Entry from the file name unless
        given); a progress bar over the images."""
        from tqdm import tqdm
        paths = list(paths)
        entries = [entry_from_path(p) for p in paths] if entries is None else list(entries)
        if len(entries) != len(paths):
            raise GalleryError(f"{self.folder}: {len(paths)} images but {len(entries)} entries")
        self._descriptors(np.zeros((0, self.dim), np.float32), embedder.model_sha256,
                          "the embedder's descriptors")
        out = []
        with tqdm(total=len(paths), desc="gallery", unit="img", disable=not progress) as bar:
            for s in range(0, len(paths), chunk):
                feats = embedder.embed_paths(paths[s:s + chunk])
                out.append(self.add(feats, entries[s:s + chunk],
                                    model_sha256=embedder.model_sha256))
                bar.update(len(feats))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove entries by id (unknown ids are ignored); returns how many were removed."""
        ids = np.unique(np.asarray(ids, np.int64).ravel())
        present = self.store.existing(ids)
        if not len(present) or self.index is None:
            return 0
        self.index = ix.remove(self.index, self.spec, present)
        self.store.remove(present)
        return int(len(present))

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Record | None]:
        """Stored metadata of ``ids``, in order (None for unknown ids)."""
        found = self.store.get(ids)
        return [found.get(int(i)) for i in np.asarray(ids).ravel()]

    # --- searching ---------------------------------------------------------------------------

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search breadth of an approximate index (kept by the next save)."""
        if self.spec is None:
            return
        changes = {}
        if nprobe is not None and self.spec.kind.startswith("ivf"):
            if nprobe < 1:
                raise GalleryError(f"{self.folder}: nprobe must be >= 1, got {nprobe}")
            changes["nprobe"] = min(int(nprobe), self.spec.nlist)
        if ef_search is not None and self.spec.kind == "hnsw":
            if ef_search < 1:
                raise GalleryError(f"{self.folder}: ef_search must be >= 1, got {ef_search}")
            changes["ef_search"] = int(ef_search)
        if changes:
            self.spec = replace(self.spec, **changes)
            ix.set_search_params(self.index, self.spec)

    def search_ids(self, queries: np.ndarray, k: int, *,
                   model_sha256: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine similarities), each (Q, k), best first; id -1 past what was found."""
        q = self._descriptors(queries, model_sha256, "queries")
        if k < 1:
            raise GalleryError(f"{self.folder}: k must be >= 1, got {k}")
        if self.index is None:
            return np.full((len(q), k), -1, np.int64), np.full((len(q), k), -np.inf, np.float32)
        return ix.search(self.index, q, k)

    def search(self, queries: np.ndarray, k: int = 10, *,
               model_sha256: str | None) -> list[list[Hit]]:
        """Top-``k`` entries per query with their metadata, best first.

        ``model_sha256``: the model the queries come from (checked like ``add``'s); None skips
        the check, for descriptors whose model the caller vouches for."""
        ids, sims = self.search_ids(queries, k, model_sha256=model_sha256)
        meta = self.store.get(ids)
        out = []
        for row_ids, row_sims in zip(ids, sims):
            hits = []
            for i, s in zip(row_ids, row_sims):
                r = meta.get(int(i))
                if r is not None:
                    hits.append(Hit(int(i), float(s), r.path, r.camera, r.timestamp, r.pid))
            out.append(hits)
        return out

    # --- saving ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GalleryError(f"{self.folder}: another process is saving this gallery") \
                    from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _versions_on_disk(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir()
                      if (m := VERSION_RE.match(p.name)) and p.is_dir())

    def manifest(self, current: str, files: dict) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "version": self.version, "current": current,
            "dim": self.dim, "metric": "inner product of L2-normalised descriptors (cosine)",
            "model_sha256": self.model_sha256, "model": self.model_info,
            "index_request": "auto" if self.index_request is None else
            self.index_request.to_json(),
            "index": None if self.spec is None else self.spec.to_json(),
            "count": len(self), "next_id": self.next_id, "trained_on": self.trained_on,
            "files": files, "faiss_version": ix.faiss_module().__version__,
            "created": self.created, "saved": _now(),
        }

    def save(self, keep_previous: bool = True) -> Path:
        """Write the gallery as a new version and switch the manifest to it (module doc);
        returns the new version's folder."""
        with self._lock():
            previous = self.folder / MANIFEST
            prev_current = None
            if previous.is_file():
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    prev_current = json.loads(previous.read_text()).get("current")
            version = max([self.version, *self._versions_on_disk()]) + 1
            name = f"v{version:06d}"
            tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{name}.tmp-"))
            try:
                files = {}
                if self.index is not None:
                    write_index_file(self.index, tmp / INDEX_FILE)
                write_meta_file(self.store, tmp / META_FILE)
                for fname in (INDEX_FILE, META_FILE):
                    p = tmp / fname
                    if p.exists():
                        fsync_path(p)
                        files[fname] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                os.chmod(tmp, 0o755)
                os.replace(tmp, self.folder / name)
                fsync_path(self.folder)
                old_version = self.version
                self.version = version
                try:
                    write_manifest(self.manifest(name, files), self.folder / MANIFEST)
                except BaseException:
                    self.version = old_version
                    shutil.rmtree(self.folder / name, ignore_errors=True)
                    raise
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            keep = {name} | ({prev_current} if keep_previous and prev_current else set())
            for p in self.folder.iterdir():
                stale_version = VERSION_RE.match(p.name) and p.name not in keep
                leftover = p.name.startswith(".v") and ".tmp-" in p.name
                if p.is_dir() and (stale_version or leftover):
                    shutil.rmtree(p, ignore_errors=True)
            return self.folder / name

    def summary(self) -> dict:
        """What ``tools/gallery.py info`` prints."""
        return {"folder": str(self.folder), "entries": len(self), "dim": self.dim,
                "index": None if self.spec is None else str(self.spec),
                "index_request": "auto" if self.index_request is None else
                str(self.index_request),
                "model_sha256": self.model_sha256, "model": self.model_info,
                "version": self.version, "next_id": self.next_id,
                "payload_bytes": 0 if self.index is None else ix.payload_bytes(self.index)}
