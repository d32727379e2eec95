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
one are deleted after a save. Loading checks every file against the manifest (size, sha256) and
the index against the metadata (same count), so a damaged gallery is an error naming the file,
never wrong answers.

Concurrent writers: a change is a transaction on top of the version it was loaded from. A save
takes the folder's exclusive lock (``.lock``, waiting up to ``lock_timeout`` for another save to
finish) and, under it, compares the manifest's version with the one this gallery was loaded
from (or last saved): if another process saved in between, the save raises ``GalleryConflict``
and writes nothing, since saving would replace that process's version and lose its entries
(the lost update). ``update(folder, change)`` is the whole transaction with retries: load, apply
``change``, save; on a conflict load the newer version and apply ``change`` again, a bounded
number of times. A gallery made by ``create`` expects no gallery in the folder (another process
that created one first is a conflict); ``create(..., overwrite=True)`` replaces whatever is
there. Readers take no lock: ``load`` reads the version the manifest names, and when a save
switches the manifest and prunes that version under it, loads the newer one.

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
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from rmnet.atomic import LockBusy, atomic_write_text, exclusive_lock, fsync_path, write_bytes
from rmnet.caffe.caffemodel import sha256_file
from rmnet.gallery import index as ix
from rmnet.gallery.store import Entry, MetadataStore, Record, StoreError

MANIFEST = "MANIFEST.json"
INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"
FORMAT = "rmnet-gallery"
FORMAT_VERSION = 1
VERSION_RE = re.compile(r"^v(\d{6,})$")
LOCK = ".lock"
LOCK_TIMEOUT = 60.0        # seconds a save waits for another process's save
LOAD_ATTEMPTS = 10         # loads that met a version pruned by a concurrent save, at most
ATTEMPTS = 10              # update(): tries of a change that met a concurrent save, at most
RETRY_WAIT = 0.05          # update(): seconds before the n-th retry, times n (at most 1 s)


class GalleryError(ValueError):
    """A gallery that cannot be read, or input it refuses; the message names the folder."""


class GalleryConflict(GalleryError):
    """Another process saved the gallery after this one loaded it: nothing was saved (load the
    newer version and apply the change again; ``update`` does). ``loaded``: the version this
    one was loaded from (0: created new); ``found``: the version saved meanwhile (0: none)."""

    def __init__(self, message: str, loaded: int = 0, found: int = 0):
        super().__init__(message)
        self.loaded, self.found = loaded, found


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


def embed_images(embedder, paths: Sequence[str | os.PathLike], chunk: int = 256,
                 progress: bool = True) -> np.ndarray:
    """(N, D) descriptors of image files, ``chunk`` images a call of ``embedder.embed_paths``;
    a progress bar over the images."""
    from tqdm import tqdm
    paths = list(paths)
    out = []
    with tqdm(total=len(paths), desc="gallery", unit="img", disable=not progress) as bar:
        for s in range(0, len(paths), chunk):
            out.append(np.asarray(embedder.embed_paths(paths[s:s + chunk]), np.float32))
            bar.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


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
        self.expect: int | None = 0   # the manifest version a save must find (None: any)
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
        if overwrite:
            g.expect = None           # replaces whatever is there when it is saved
            if (folder / MANIFEST).exists():
                try:
                    g.version = int(json.loads((folder / MANIFEST).read_text()).get("version",
                                                                                    0))
                except (OSError, ValueError, AttributeError):
                    g.version = 0
        return g

    @classmethod
    def load(cls, folder: str | os.PathLike, verify: bool = True) -> "Gallery":
        """The gallery saved in ``folder``; ``GalleryError`` naming what is wrong.

        ``verify``: check both files' sha256 against the manifest (reads them once more).

        A save by another process may switch the manifest and prune the version being read
        meanwhile: then the newer version is loaded (``LOAD_ATTEMPTS`` tries at most)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise GalleryError(f"{folder}: no such gallery folder")
        mpath = folder / MANIFEST
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            text = _read_manifest_text(mpath)
            try:
                return cls._load_version(folder, text, verify)
            except (GalleryError, FileNotFoundError):   # (a file pruned under the reader)
                if attempt == LOAD_ATTEMPTS or _read_manifest_text(mpath) == text:
                    raise                 # the same manifest: a real problem, not a switch
        raise AssertionError("unreachable")

    @classmethod
    def _load_version(cls, folder: Path, text: str, verify: bool) -> "Gallery":
        """``load`` of the manifest ``text`` read from ``folder``."""
        mpath = folder / MANIFEST
        try:
            m = json.loads(text)
        except json.JSONDecodeError as e:
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
        g.expect = g.version
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
        given), ``chunk`` images an add; a progress bar over the images."""
        paths = list(paths)
        entries = [entry_from_path(p) for p in paths] if entries is None else list(entries)
        if len(entries) != len(paths):
            raise GalleryError(f"{self.folder}: {len(paths)} images but {len(entries)} entries")
        self.check_model(embedder.model_sha256)
        feats = embed_images(embedder, paths, chunk, progress)
        return self.add_chunked(feats, entries, embedder.model_sha256, chunk)

    def add_chunked(self, descriptors: np.ndarray, entries: Sequence[Entry], model_sha256: str,
                    chunk: int = 256) -> np.ndarray:
        """``add``, ``chunk`` descriptors at a time (an auto index grows as it would image by
        image); returns the new ids."""
        entries = list(entries)
        if len(entries) != len(descriptors):
            raise GalleryError(f"{self.folder}: {len(descriptors)} descriptors but "
                               f"{len(entries)} entries")
        out = [self.add(descriptors[s:s + chunk], entries[s:s + chunk],
                        model_sha256=model_sha256) for s in range(0, len(entries), chunk)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def check_model(self, model_sha256: str) -> None:
        """``GalleryError`` if descriptors of the model ``model_sha256`` do not belong here."""
        self._descriptors(np.zeros((0, self.dim), np.float32), model_sha256,
                          "the embedder's descriptors")

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
    def _lock(self, timeout: float) -> Iterator[None]:
        with _folder_lock(self.folder, timeout):
            yield

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

    def _on_disk(self) -> tuple[int, str | None]:
        """(version, current folder) of the saved manifest, (0, None) when there is none."""
        mpath = self.folder / MANIFEST
        if not mpath.is_file():
            return 0, None
        try:
            m = json.loads(mpath.read_text())
            return int(m["version"]), str(m["current"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            if self.expect is None:       # replacing it anyway
                return 0, None
            raise GalleryError(f"{mpath}: corrupt gallery manifest ({e}): cannot tell "
                               f"whether another process changed the gallery") from None

    def _check_unchanged(self, on_disk: int) -> None:
        """``GalleryConflict`` unless the saved version is the one this gallery builds on."""
        if self.expect is None or on_disk == self.expect:
            return
        if self.expect == 0:
            message = (f"{self.folder}: another process created a gallery here meanwhile "
                       f"(v{on_disk:06d}); nothing was saved")
        elif on_disk == 0:
            message = (f"{self.folder}: the gallery's {MANIFEST} is gone since "
                       f"v{self.expect:06d} was loaded (removed by another process?); nothing "
                       f"was saved")
        else:
            message = (f"{self.folder}: the gallery changed since it was loaded (loaded "
                       f"v{self.expect:06d}, another process saved v{on_disk:06d}); nothing "
                       f"was saved: load it again and retry")
        raise GalleryConflict(message, self.expect, on_disk)

    def save(self, keep_previous: bool = True, lock_timeout: float = LOCK_TIMEOUT) -> Path:
        """Write the gallery as a new version and switch the manifest to it (module doc);
        returns the new version's folder. ``GalleryConflict`` (nothing written) if another
        process saved since this gallery was loaded; waits up to ``lock_timeout`` seconds for
        another process's save to finish."""
        with self._lock(lock_timeout):
            on_disk, prev_current = self._on_disk()
            self._check_unchanged(on_disk)
            version = max([self.version, on_disk, *self._versions_on_disk()]) + 1
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
                self.expect = version
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            keep = {name} | ({prev_current} if keep_previous and prev_current else set())
            manifest_tmp = f".{Path(MANIFEST).stem}.tmp-"    # rmnet.atomic's temporary names
            for p in self.folder.iterdir():
                stale_version = VERSION_RE.match(p.name) and p.name not in keep
                leftover = p.name.startswith(".v") and ".tmp-" in p.name
                if p.is_dir() and (stale_version or leftover):
                    shutil.rmtree(p, ignore_errors=True)
                elif p.name.startswith(manifest_tmp) and p.is_file():   # a killed save's
                    p.unlink(missing_ok=True)
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


# --- transactions and locks ----------------------------------------------------------------

def _read_manifest_text(mpath: Path) -> str:
    if not mpath.is_file():
        raise GalleryError(f"{mpath.parent}: not a gallery (no {MANIFEST})")
    try:
        return mpath.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GalleryError(f"{mpath}: corrupt gallery manifest ({e})") from None


@contextlib.contextmanager
def _folder_lock(folder: Path, timeout: float) -> Iterator[None]:
    """The gallery folder's exclusive lock (its saves), waiting up to ``timeout`` seconds."""
    try:
        with exclusive_lock(folder / LOCK, timeout):
            yield
    except LockBusy:
        raise GalleryError(f"{folder}: another process is saving this gallery (waited "
                           f"{timeout:g} s for it)") from None


def update(folder: str | os.PathLike, change: Callable[[Gallery], object], *,
           attempts: int = ATTEMPTS, lock_timeout: float = LOCK_TIMEOUT,
           on_retry: Callable[[GalleryConflict, int], None] | None = None,
           keep_previous: bool = True) -> tuple[Gallery, object]:
    """Load the gallery in ``folder``, apply ``change(gallery)`` and save, as one transaction:
    when another process saved meanwhile (``GalleryConflict``), load the newer version and
    apply ``change`` again, ``attempts`` times at most (``on_retry(conflict, attempt)`` is
    called before each new attempt). Returns the saved gallery and what ``change`` returned.
    ``change`` must be repeatable: it sees a freshly loaded gallery each time. After the last
    attempt the conflict is raised, saying how many were made; nothing of this change is
    saved then."""
    folder = Path(folder)
    if attempts < 1:
        raise GalleryError(f"{folder}: attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        g = Gallery.load(folder)
        result = change(g)
        try:
            g.save(keep_previous=keep_previous, lock_timeout=lock_timeout)
            return g, result
        except GalleryConflict as e:
            if attempt >= attempts:
                during = (f"each of the {attempts} attempts" if attempts > 1 else
                          "the one attempt")
                raise GalleryConflict(f"{folder}: another process saved the gallery during "
                                      f"{during}; nothing of this change was saved: run it "
                                      f"again", e.loaded, e.found) from e
            if on_retry is not None:
                on_retry(e, attempt + 1)
            time.sleep(min(RETRY_WAIT * attempt, 1.0))
    raise AssertionError("unreachable")


def discard_unsaved(folder: str | os.PathLike, lock_timeout: float = LOCK_TIMEOUT) -> bool:
    """Remove ``folder`` if it holds no saved gallery (what a failed build that created it
    leaves); under the folder's lock, so a gallery another process saved there meanwhile is
    kept. Returns whether it was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    with _folder_lock(folder, lock_timeout):
        if (folder / MANIFEST).exists():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
