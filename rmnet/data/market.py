"""Market-1501 (and DukeMTMC-reID) dataset parsing, shared by the data layer and the evaluation.

Layout of a dataset root (the official zip, e.g. ``Market-1501-v15.09.15/``)::

    bounding_box_train/   training images (identities disjoint from the test ones)
    bounding_box_test/    the gallery
    query/                the queries

Only file names carry labels:

- Market-1501: ``PPPP_cCsS_FFFFFF_NN.jpg``, e.g. ``0002_c1s1_000451_03.jpg``: person id PPPP,
  camera C (1..6), video sequence S, frame FFFFFF, box NN. The pid is ``-1`` (written without
  zero padding, ``-1_c1s1_000401_03.jpg``) for junk boxes and ``0000`` for distractors; both
  occur only in the gallery.
- DukeMTMC-reID: ``PPPP_cC_fFFFFFFF.jpg``, e.g. ``0005_c2_f0046985.jpg``: camera C (1..8).

``layout="auto"`` (the default) takes the naming of the first image file (in sorted order) of the
train folder; every image of the dataset must then follow that one naming.

Decisions (documented in docs/evaluation.md):

- Which files are images: names ending in .jpg, .jpeg or .png (any case) that do not start with a
  dot. Other entries (the official Market zip ships a ``Thumbs.db`` in its folders; macOS
  ``._*`` files; sub-folders) are skipped, or refused with ``skip_non_images=False``. An image
  whose name does not parse is always an error naming the file.
- Train: junk (-1) and distractor (0000) images are refused (they have no identity to learn; the
  official train set has none). Train pids map to contiguous labels 0..K-1 in increasing pid
  order (``Dataset.train_label``).
- Query: junk and distractors are refused too (a query without an identity cannot be scored; the
  official query set has none).
- Gallery: keeps every image, pid -1 and 0 included; the evaluation protocol
  ignores junk and same-camera matches and counts distractors as negatives.
- Query and gallery keep the original pids. Camera ids are kept 1-based, as in the names.
- Order: every split is sorted by file name, so labels, features and scores line up run to run.
- A split with no images is an error.
- The training split is optional: a root with only ``query/`` and ``bounding_box_test/`` is an
  evaluation set (most published test sets come that way, and a model trained elsewhere needs no
  training images to be scored). Its ``Dataset.train`` is empty, ``has_train`` False, and
  whatever trains on it (``rmnet.data.datasets.combine_train``) stops with a message naming the
  root. ``layout="auto"`` then takes the naming from the first query image.

Only names are read here, never pixels: a corrupt image is found when it is loaded
(``rmnet.data.images.load_bgr``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmnet.data.images import is_image_name

# split name -> folder name
SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# the folders every root needs (the train split is optional: an evaluation set has none)
TEST_SPLITS = (SPLITS["query"], SPLITS["gallery"])

JUNK_PID = -1
DISTRACTOR_PID = 0


@dataclass(frozen=True)
class Layout:
    name: str
    pattern: re.Pattern
    example: str
    max_camera: int


LAYOUTS = {
    "market1501": Layout("market1501",
                         re.compile(r"^(-1|\d{4})_c(\d)s(\d+)_(\d{6})_(\d{2})\.(?:jpe?g|png)$",
                                    re.IGNORECASE),
                         "0002_c1s1_000451_03.jpg", 6),
    "duke": Layout("duke", re.compile(r"^(\d{4})_c(\d)_f(\d{7})\.(?:jpe?g|png)$", re.IGNORECASE),
                   "0005_c2_f0046985.jpg", 8),
}


class DatasetError(ValueError):
    """The dataset root, a folder or a file name is not what a Market-1501 layout requires."""


def expected_layout(root: str | os.PathLike) -> str:
    """A description of what a dataset root must contain, for error messages."""
    folders = ", ".join(f"{Path(root) / f}/" for f in TEST_SPLITS)
    examples = " or ".join(f"{lay.example} ({lay.name})" for lay in LAYOUTS.values())
    return (f"expected the folders {folders} (and {Path(root) / SPLITS['train']}/ to train on) "
            f"holding images named like {examples}")


@dataclass(frozen=True)
class Record:
    """One image: where it is, whose it is (pid: -1 junk, 0 distractor) and which camera."""
    path: Path
    pid: int
    camid: int

    @property
    def name(self) -> str:
        return self.path.name


def _parse(name: str, lay: Layout) -> tuple[int, int]:
    """(pid, camid), or DatasetError with the reason only (the caller names the file)."""
    m = lay.pattern.match(name)
    if not m:
        raise DatasetError(f"file name does not follow the {lay.name} naming, e.g. {lay.example}")
    pid, cam = int(m.group(1)), int(m.group(2))
    if not 1 <= cam <= lay.max_camera:
        raise DatasetError(f"camera {cam} is outside 1..{lay.max_camera} of the {lay.name} naming")
    return pid, cam


def parse_name(name: str, layout: str = "auto") -> tuple[int, int]:
    """(pid, camid) from a file name; ``DatasetError`` naming the file if it does not parse."""
    lay = _layout(detect_layout(name) if layout == "auto" else layout)
    try:
        return _parse(name, lay)
    except DatasetError as e:
        raise DatasetError(f"{name}: {e}") from None


def _layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise DatasetError(f"unknown layout {name!r}; use 'auto' or one of "
                           f"{', '.join(sorted(LAYOUTS))}") from None


def list_images(folder: str | os.PathLike, skip_non_images: bool = True) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (see the module doc for what counts)."""
    folder = Path(folder)
    images = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_file() and is_image_name(e.name) and not e.name.startswith("."):
            images.append(folder / e.name)
        elif not skip_non_images:
            kind = "a folder" if e.is_dir() else "not an image file (.jpg, .jpeg or .png)"
            raise DatasetError(f"{folder / e.name}: {kind} in a dataset folder "
                               f"(pass skip_non_images=True to ignore such entries)")
    return images


def load_split(folder: str | os.PathLike, layout: str = "auto",
               skip_non_images: bool = True) -> tuple[list[Record], str]:
    """Parse one folder: (records sorted by name, the layout name used)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    paths = list_images(folder, skip_non_images)
    if not paths:
        raise DatasetError(f"{folder}: no images (.jpg, .jpeg or .png) in this split")
    if layout == "auto":
        try:
            layout = detect_layout(paths[0].name)
        except DatasetError as e:
            raise DatasetError(f"{folder}{os.sep}{e}") from None
    lay = _layout(layout)
    records = []
    for p in paths:
        try:
            pid, cam = _parse(p.name, lay)
        except DatasetError as e:
            raise DatasetError(f"{p}: {e}") from None
        records.append(Record(p, pid, cam))
    return records, lay.name


def detect_layout(name: str) -> str:
    """The layout whose naming ``name`` follows; ``DatasetError`` if none."""
    for lay in LAYOUTS.values():
        if lay.pattern.match(name):
            return lay.name
    raise DatasetError(f"{name}: file name follows neither naming: "
                       + " nor ".join(f"{lay.example} ({lay.name})" for lay in LAYOUTS.values()))


@dataclass
class Dataset:
    """The three splits of a Market-1501-layout root; see the module doc for the rules."""
    root: Path
    layout: str
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    # False when the source has no camera ids (custom data): the camids are then synthetic
    # (query 1, gallery 2, train 1), so the same-camera exclusion never applies.
    has_camids: bool = True
    # Images of a published validation split not in ``train`` (MSMT17's list_val.txt).
    val: list[Record] = field(default_factory=list)
    train_pids: tuple[int, ...] = field(init=False)
    _labels: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.train_pids = tuple(sorted({r.pid for r in self.train}))
        self._labels = {pid: i for i, pid in enumerate(self.train_pids)}

    def __repr__(self) -> str:   # not thousands of records
        return f"Dataset({self.summary()})"

    @property
    def has_train(self) -> bool:
        """Whether the root has training images (an evaluation set has none)."""
        return bool(self.train)

    @property
    def num_train_ids(self) -> int:
        return len(self.train_pids)

    def train_label(self, pid: int) -> int:
        """Contiguous class label 0..K-1 of a train pid (K train identities, pids sorted)."""
        try:
            return self._labels[pid]
        except KeyError:
            raise KeyError(f"pid {pid} is not a train identity of {self.root}") from None

    def train_labels(self) -> np.ndarray:
        """int64 label of every train record, in ``train`` order."""
        return np.asarray([self._labels[r.pid] for r in self.train], dtype=np.int64)

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def summary(self) -> str:
        parts = [f"{self.root} ({self.layout}):"]
        for name in SPLITS:
            recs = self.split(name)
            if name == "train" and not recs:
                parts.append("no train split (evaluation only)")
                continue
            ids = {r.pid for r in recs if r.pid > 0}
            extra = ""
            if name == "gallery":
                junk = sum(r.pid == JUNK_PID for r in recs)
                dis = sum(r.pid == DISTRACTOR_PID for r in recs)
                extra = f", {junk} junk, {dis} distractors"
            cams = len({r.camid for r in recs})
            where = f" on {cams} cameras" if self.has_camids else ""
            parts.append(f"{name} {len(recs)} images of {len(ids)} ids{where}{extra}")
        if self.val:
            parts.append(f"val {len(self.val)} images (not trained on)")
        if not self.has_camids:
            parts.append("no camera ids (same-camera exclusion not applied)")
        return " ".join(parts[:1]) + " " + "; ".join(parts[1:])


def pids_camids(records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """(pids, camids) of records as int64 arrays, for the evaluation."""
    return (np.asarray([r.pid for r in records], dtype=np.int64),
            np.asarray([r.camid for r in records], dtype=np.int64))


def _missing_folder_error(root: Path, missing: list[str]) -> DatasetError:
    msg = (f"{root} is not a Market-1501-layout dataset: missing "
           f"{', '.join(m + '/' for m in missing)}; {expected_layout(root)}")
    # A common slip: pointing at the folder the zip was extracted into.
    try:
        subdirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
    except OSError:
        subdirs = []
    hits = [d for d in subdirs if all((d / f).is_dir() for f in TEST_SPLITS)]
    if hits:
        msg += f" (did you mean {hits[0]}?)"
    return DatasetError(msg)


def load_market(root: str | os.PathLike, layout: str = "auto",
                skip_non_images: bool = True) -> Dataset:
    """Parse a Market-1501 (or DukeMTMC-reID) root into a ``Dataset``.

    ``layout``: "auto", "market1501" or "duke". ``skip_non_images``: ignore entries that are not
    image files (e.g. Thumbs.db) instead of refusing them. Raises ``DatasetError`` naming the
    folder or file and what is expected.
    """
    root = Path(root)
    if layout != "auto":
        _layout(layout)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DatasetError(f"dataset root {root} {what}; {expected_layout(root)}")
    missing = [f for f in TEST_SPLITS if not (root / f).is_dir()]
    if missing:
        raise _missing_folder_error(root, missing)

    splits: dict[str, list[Record]] = {"train": []}
    auto = layout == "auto"
    first_split = None       # the split whose first image decided the naming for "auto"
    for name, folder in SPLITS.items():
        if name == "train" and not (root / folder).is_dir():
            continue         # an evaluation set: query and gallery only
        try:
            records, used = load_split(root / folder, layout, skip_non_images)
        except DatasetError as e:
            if auto and first_split is not None and "naming" in str(e):
                first = splits[first_split][0].name
                raise DatasetError(f"{e} (the {layout} naming was detected from "
                                   f"{SPLITS[first_split]}/{first})") from None
            raise
        layout = used   # the first split read decides for "auto"; the others must follow it
        first_split = first_split or name
        splits[name] = records

    for name in ("train", "query"):
        for r in splits[name]:
            if r.pid in (JUNK_PID, DISTRACTOR_PID):
                kind = "junk (pid -1)" if r.pid == JUNK_PID else "a distractor (pid 0000)"
                raise DatasetError(f"{r.path}: {kind} image in the {name} split; junk and "
                                   f"distractors belong to {SPLITS['gallery']}/ only")
    return Dataset(root, layout, splits["train"], splits["query"], splits["gallery"])
