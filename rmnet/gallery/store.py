"""The gallery's metadata store: one SQLite row per entry, keyed by the entry's FAISS id.

Each entry records where its descriptor came from and who it shows, so a search answers with
"this crop, camera 3, at this time, person 17" rather than a row number:

- ``path``: the image path or any crop id the caller uses (text, required);
- ``camera``: integer camera id, or NULL;
- ``timestamp``: seconds (float, e.g. Unix time or a video's frame time), or NULL;
- ``pid``: the person id when known (a labelled gallery), or NULL.

The working copy lives in memory (``sqlite3`` from the standard library), next to the in-memory
FAISS index, so an add or a remove changes both together and nothing reaches the disk until the
gallery is saved; ``save_copy``/``load_copy`` move the whole database to and from a file with
SQLite's online backup, which writes a complete, consistent database file.
"""
from __future__ import annotations

import math
import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    camera INTEGER,
    timestamp REAL,
    pid INTEGER
);
CREATE INDEX entries_path ON entries(path);
"""
COLUMNS = ("id", "path", "camera", "timestamp", "pid")


class StoreError(ValueError):
    """Bad metadata, or a metadata file that is not a gallery's (the message names it)."""


@dataclass(frozen=True)
class Entry:
    """What the caller says about one descriptor (see the module doc)."""
    path: str
    camera: int | None = None
    timestamp: float | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Record(Entry):
    """An entry as stored, with its id."""
    id: int = -1

    def to_json(self) -> dict:
        return asdict(self)


def _check(i: int, e: Entry) -> tuple:
    if not isinstance(e, Entry):
        raise StoreError(f"entry {i}: expected an Entry, got {type(e).__name__}")
    if not isinstance(e.path, str) or not e.path:
        raise StoreError(f"entry {i}: path must be a non-empty string, got {e.path!r}")
    for name in ("camera", "pid"):
        v = getattr(e, name)
        if v is not None and not isinstance(v, (int, np.integer)):
            raise StoreError(f"entry {i} ({e.path}): {name} must be an integer or None, got {v!r}")
    t = e.timestamp
    if t is not None and (not isinstance(t, (int, float, np.floating, np.integer))
                          or not math.isfinite(float(t))):
        raise StoreError(f"entry {i} ({e.path}): timestamp must be a finite number or None, "
                         f"got {t!r}")
    return (e.path, None if e.camera is None else int(e.camera),
            None if t is None else float(t), None if e.pid is None else int(e.pid))


class MetadataStore:
    """The in-memory SQLite table of entries (module doc)."""

    def __init__(self, conn: sqlite3.Connection | None = None):
        if conn is None:
            conn = sqlite3.connect(":memory:")
            conn.executescript(SCHEMA)
        self.conn = conn

    @classmethod
    def load_copy(cls, path: str | os.PathLike) -> "MetadataStore":
        """Read a saved database file into memory; ``StoreError`` naming it if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: no such metadata file")
        mem = sqlite3.connect(":memory:")
        try:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                src.backup(mem)
            finally:
                src.close()
            cols = [r[1] for r in mem.execute("PRAGMA table_info(entries)")]
        except sqlite3.DatabaseError as e:
            mem.close()
            raise StoreError(f"{path}: not a gallery metadata database ({e})") from None
        if tuple(cols) != COLUMNS:
            mem.close()
            raise StoreError(f"{path}: expected a table 'entries' with columns "
                             f"{', '.join(COLUMNS)}, found {', '.join(cols) or 'none'}")
        return cls(mem)

    def save_copy(self, path: str | os.PathLike) -> None:
        """Write the whole database to a new file ``path`` (complete when this returns)."""
        dst = sqlite3.connect(str(path))
        try:
            self.conn.backup(dst)
            dst.commit()
        finally:
            dst.close()

    def close(self) -> None:
        self.conn.close()

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def add(self, ids: np.ndarray, entries: list[Entry]) -> None:
        rows = [(int(i), *_check(n, e)) for n, (i, e) in enumerate(zip(ids, entries))]
        with self.conn:
            self.conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", rows)

    def validate(self, entries: list[Entry]) -> None:
        """Raise ``StoreError`` for the first bad entry (before anything is added)."""
        for n, e in enumerate(entries):
            _check(n, e)

    def remove(self, ids: np.ndarray) -> int:
        with self.conn:
            cur = self.conn.executemany("DELETE FROM entries WHERE id = ?",
                                        [(int(i),) for i in ids])
        return cur.rowcount

    def existing(self, ids: np.ndarray) -> np.ndarray:
        """The subset of ``ids`` that are stored."""
        found = self.get(ids)
        return np.array(sorted(found), np.int64)

    def get(self, ids) -> dict[int, Record]:
        """id -> Record for the stored ones among ``ids``."""
        out: dict[int, Record] = {}
        ids = [int(i) for i in np.asarray(ids).ravel() if int(i) >= 0]
        for s in range(0, len(ids), 900):   # SQLite's default limit on bound parameters
            chunk = ids[s:s + 900]
            q = (f"SELECT id, path, camera, timestamp, pid FROM entries WHERE id IN "
                 f"({','.join('?' * len(chunk))})")
            for i, path, cam, ts, pid in self.conn.execute(q, chunk):
                out[i] = Record(path=path, camera=cam, timestamp=ts, pid=pid, id=i)
        return out

    def ids_for_paths(self, paths: list[str]) -> np.ndarray:
        found = []
        for p in paths:
            found += [r[0] for r in self.conn.execute("SELECT id FROM entries WHERE path = ?",
                                                      (p,))]
        return np.array(sorted(found), np.int64)

    def all_ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.conn.execute("SELECT id FROM entries ORDER BY id")],
                        np.int64)
