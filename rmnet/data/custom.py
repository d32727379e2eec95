"""A user's own data, in one of two plain layouts a tracker's output is easily turned into.

**Folders** (format ``folders``)::

    train/<pid>/<image>              or  train/<pid>/<camid>/<image>
    query/<pid>/<image>              or  query/<pid>/<camid>/<image>
    gallery/<pid>/<image>            or  gallery/<pid>/<camid>/<image>

**Lists** (format ``csv``): ``train.csv``, ``query.csv``, ``gallery.csv`` in the root (or
``.tsv``, tab-separated), one image per line: ``path,pid`` or ``path,pid,camid``. Paths are
relative to the root (absolute paths must lie inside it). An optional first line starting with
``path`` is a header; blank lines and lines starting with ``#`` are skipped. One file per split
was chosen over one file with a split column because splits are usually made by separate
tracker runs, and a split file can be swapped without touching the others.

Rules, for both:

- ``query`` and ``gallery`` are required, ``train`` is optional (a set only evaluated on).
- Identities: the pid folder names (or the pid column). ``-1`` is junk and ``0`` a distractor,
  as in Market-1501 names; they are allowed in the gallery only. When every other name is an
  integer >= 1 it is the pid as written; otherwise all names of the dataset are numbered 1..K in
  sorted (string) order, one numbering over all splits, so a query and a gallery image of the
  same name share the pid.
- Camera ids: the camid folders (or column), numbered the same way (integers >= 1 as written,
  else 1..C in sorted order). A dataset has camera ids everywhere or nowhere: a mix is refused.
- **Without camera ids** the evaluation's same-camera exclusion cannot apply. Every gallery
  image then counts as seen by another camera than the query: queries get camid 1, gallery
  images 2 (train 1), and ``Dataset.has_camids`` is False, which the evaluation reports. The
  numbers are then those of a protocol without the exclusion and are not comparable with
  published Market-1501 tables: a query's own tracklet in the gallery is an easy match.
- Which files are images and the order: as ``rmnet.data.market`` (sorted by path).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from rmnet.data.images import is_image_name
from rmnet.data.market import DISTRACTOR_PID, JUNK_PID, Dataset, DatasetError, Record

SPLIT_NAMES = ("train", "query", "gallery")
REQUIRED = ("query", "gallery")
LIST_SUFFIXES = (".csv", ".tsv")
# synthetic camera ids without real ones: queries and gallery never share a camera
NO_CAMERA = {"train": 1, "query": 1, "gallery": 2}
RESERVED = {"-1": JUNK_PID, "0": DISTRACTOR_PID}


def expected_folders(root: str | os.PathLike) -> str:
    r = Path(root)
    return (f"custom folders: {r / 'query'}/<pid>/<image> and {r / 'gallery'}/<pid>/<image> "
            f"(optionally {r / 'train'}/<pid>/<image>; or <pid>/<camid>/<image> throughout)")


def expected_lists(root: str | os.PathLike) -> str:
    r = Path(root)
    return (f"custom lists: {r / 'query.csv'} and {r / 'gallery.csv'} (optionally "
            f"{r / 'train.csv'}; or .tsv), lines 'path,pid' or 'path,pid,camid'")


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit() and s.count("-") <= 1


def number_names(names: set[str], reserved: dict[str, int], what: str) -> dict[str, int]:
    """name -> id: integers >= 1 as written when every non-reserved name is one, else 1..K in
    sorted order (``reserved`` names keep their ids)."""
    plain = sorted(n for n in names if n not in reserved)
    if all(_is_int(n) and int(n) >= 1 for n in plain):
        ids = {n: int(n) for n in plain}
        if len(set(ids.values())) != len(ids):     # "7" and "007"
            dup = sorted(plain, key=lambda n: (int(n), n))
            raise DatasetError(f"{what} names {', '.join(dup)} include the same number twice "
                               f"written differently")
    else:
        ids = {n: i for i, n in enumerate(plain, 1)}
    ids.update({n: reserved[n] for n in names if n in reserved})
    return ids


def _check_reserved(split: str, pid: int, where: str) -> None:
    if split != "gallery" and pid in (JUNK_PID, DISTRACTOR_PID):
        kind = "junk (pid -1)" if pid == JUNK_PID else "a distractor (pid 0)"
        raise DatasetError(f"{where}: {kind} in the {split} split; junk and distractors belong "
                           f"to the gallery only")


# one image: (path, pid name, camid name or None, where it was listed, for errors)
Row = tuple[Path, str, str | None, str]


def _finish(root: Path, layout: str, raw: dict[str, list[Row]], has_cams: bool) -> Dataset:
    pid_ids = number_names({p for rows in raw.values() for _, p, _, _ in rows}, RESERVED, "pid")
    cam_ids = number_names({c for rows in raw.values() for _, _, c, _ in rows if c is not None},
                           {}, "camera") if has_cams else {}
    splits: dict[str, list[Record]] = {}
    for split in SPLIT_NAMES:
        recs = []
        for path, pid_name, cam_name, where in raw.get(split, []):
            pid = pid_ids[pid_name]
            _check_reserved(split, pid, where)
            cam = cam_ids[cam_name] if has_cams else NO_CAMERA[split]
            recs.append(Record(path, pid, cam))
        splits[split] = sorted(recs, key=lambda r: str(r.path))
    return Dataset(root, layout, splits["train"], splits["query"], splits["gallery"],
                   has_camids=has_cams)


# --- folders ------------------------------------------------------------------------------------

def _images_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, sub-folders) directly in ``folder``, sorted; hidden entries skipped."""
    files, dirs = [], []
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            dirs.append(folder / e.name)
        elif e.is_file() and is_image_name(e.name):
            files.append(folder / e.name)
    return files, dirs


def load_folders(root: str | os.PathLike) -> Dataset:
    """Parse a custom folder layout (module doc) into a ``Dataset``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; "
                           f"expected {expected_folders(root)}")
    missing = [s + "/" for s in REQUIRED if not (root / s).is_dir()]
    if missing:
        raise DatasetError(f"{root}: missing {', '.join(missing)}; expected "
                           f"{expected_folders(root)}")
    raw: dict[str, list[Row]] = {}
    with_cams: Path | None = None
    without_cams: Path | None = None
    for split in SPLIT_NAMES:
        base = root / split
        if not base.is_dir():
            continue
        loose, pid_dirs = _images_in(base)
        if loose:
            raise DatasetError(f"{loose[0]}: an image directly in {base}/; images go in "
                               f"{base}/<pid>/ (or {base}/<pid>/<camid>/)")
        rows: list[Row] = []
        for pdir in pid_dirs:
            files, cam_dirs = _images_in(pdir)
            if files and cam_dirs:
                raise DatasetError(f"{pdir}: holds both images and folders; a pid folder holds "
                                   f"either images or <camid>/ folders of images")
            if files:
                without_cams = without_cams or pdir
                rows += [(f, pdir.name, None, str(f)) for f in files]
            for cdir in cam_dirs:
                cfiles, deeper = _images_in(cdir)
                if deeper:
                    raise DatasetError(f"{deeper[0]}: too deep; expected "
                                       f"{base}/<pid>/<camid>/<image>")
                with_cams = with_cams or cdir
                rows += [(f, pdir.name, cdir.name, str(f)) for f in cfiles]
        if not rows:
            if split in REQUIRED:
                raise DatasetError(f"{base}: no images in <pid>/ folders; expected "
                                   f"{expected_folders(root)}")
            continue
        raw[split] = rows
    if with_cams and without_cams:
        raise DatasetError(f"{root}: camera folders in {with_cams.parent} but images without "
                           f"one in {without_cams}; use <pid>/<camid>/<image> everywhere or "
                           f"nowhere")
    return _finish(root, "folders", raw, with_cams is not None)


# --- lists --------------------------------------------------------------------------------------

def list_file(root: Path, split: str) -> Path | None:
    found = [root / (split + s) for s in LIST_SUFFIXES if (root / (split + s)).is_file()]
    if len(found) > 1:
        raise DatasetError(f"{root}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def _read_list(path: Path, root: Path) -> list[Row]:
    delim = "\t" if path.suffix == ".tsv" else ","
    rows: list[Row] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    width: int | None = None
    seen: set[Path] = set()
    root_abs = root.resolve()
    for n, fields in enumerate(csv.reader(text.splitlines(), delimiter=delim), 1):
        where = f"{path}:{n}"
        fields = [f.strip() for f in fields]
        if not fields or not any(fields) or fields[0].startswith("#"):
            continue
        if n == 1 and fields[0].lower() == "path":
            continue
        if len(fields) not in (2, 3) or not all(fields):
            sep = "tab" if delim == "\t" else "comma"
            raise DatasetError(f"{where}: expected path,pid or path,pid,camid ({sep}-separated), "
                               f"got {delim.join(fields)!r}")
        if width is not None and len(fields) != width:
            raise DatasetError(f"{where}: {len(fields)} columns, but earlier lines have {width}; "
                               f"give a camid on every line or on none")
        width = len(fields)
        p = Path(fields[0])
        try:
            inside = (p if p.is_absolute() else root / p).resolve().relative_to(root_abs)
        except ValueError:
            raise DatasetError(f"{where}: {fields[0]} is outside the dataset root {root} "
                               f"(paths are relative to it)") from None
        full = root / inside        # under root as given, like every other reader's paths
        if not is_image_name(full.name):
            raise DatasetError(f"{where}: {fields[0]} is not an image file (.jpg, .jpeg, .png)")
        if not full.is_file():
            raise DatasetError(f"{where}: image {full} does not exist")
        if full in seen:
            raise DatasetError(f"{where}: {fields[0]} is listed twice")
        seen.add(full)
        rows.append((full, fields[1], fields[2] if width == 3 else None, where))
    return rows


def load_lists(root: str | os.PathLike) -> Dataset:
    """Parse custom list files (module doc) into a ``Dataset``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; "
                           f"expected {expected_lists(root)}")
    raw: dict[str, list[Row]] = {}
    widths: dict[Path, bool] = {}
    for split in SPLIT_NAMES:
        f = list_file(root, split)
        if f is None:
            if split in REQUIRED:
                raise DatasetError(f"{root}: no {split}.csv or {split}.tsv; expected "
                                   f"{expected_lists(root)}")
            continue
        rows = _read_list(f, root)
        if not rows:
            raise DatasetError(f"{f}: no images listed")
        raw[split] = rows
        widths[f] = rows[0][2] is not None
    if len(set(widths.values())) > 1:
        has = [f.name for f, w in widths.items() if w]
        hasnt = [f.name for f, w in widths.items() if not w]
        raise DatasetError(f"{root}: camera ids in {', '.join(has)} but not in "
                           f"{', '.join(hasnt)}; give them in every list or in none")
    return _finish(root, "csv", raw, all(widths.values()))
