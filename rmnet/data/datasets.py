"""One entry point for every dataset layout the project reads, and several sets trained at once.

``load_dataset(root, format=None)`` returns the ``rmnet.data.market.Dataset`` record structure
(train/query/gallery lists of ``Record(path, pid, camid)``, pid -1 junk and 0 distractor,
``has_camids``) for every format, so the data layer, training and evaluation take them all:

==================== ==========================================================================
format               layout (protocol in the reader's module doc)
==================== ==========================================================================
``market``           Market-1501: bounding_box_train/, bounding_box_test/, query/ (market.py)
``duke``             DukeMTMC-reID: the same folders, Duke names (market.py)
``msmt17``           MSMT17 V1 or V2: list_*.txt + train/ test/ or mask_*_v2/ (msmt17.py)
``cuhk03-labeled``   CUHK03-NP, hand-drawn boxes: labeled/ (cuhk03.py)
``cuhk03-detected``  CUHK03-NP, detected boxes: detected/ (cuhk03.py)
``folders``          custom: train/ query/ gallery/ of <pid>/[<camid>/]<image> (custom.py)
``csv``              custom: train.csv query.csv gallery.csv (or .tsv) of path,pid[,camid]
==================== ==========================================================================

Every format reads a root without a training split (only query and gallery: an evaluation
set) into a ``Dataset`` with an empty ``train`` (``has_train`` False); evaluation takes it as it
is, and training (``combine_train``) stops with a message naming the root.

``format=None`` detects the layout from what the root holds (the checks are listed in
``detect_format``); a root that matches none is an error naming it, listing what each layout
expects and what was found. A CUHK03-NP root with both subsets needs the format (the two are
separate benchmarks). ``trainval=True`` trains MSMT17 on list_train + list_val.

Several training sets (``combine_train``): each set's identities stay apart (a pid 5 of one
set is not the pid 5 of another); labels are the sets' contiguous labels offset by the number of
identities of the sets before, in the order given, and the class count is the sum.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmnet.data.cuhk03 import SUBSETS, expected_cuhk03, is_cuhk03_name, load_cuhk03
from rmnet.data.custom import (expected_folders, expected_lists, list_file, load_folders,
                               load_lists)
from rmnet.data.market import (SPLITS, TEST_SPLITS, Dataset, DatasetError, expected_layout,
                               list_images, load_market)
from rmnet.data.msmt17 import LISTS as MSMT17_LISTS
from rmnet.data.msmt17 import expected_msmt17, load_msmt17, msmt17_version

FORMATS = ("market", "duke", "msmt17", "cuhk03-labeled", "cuhk03-detected", "folders", "csv")


def _market_like(root: Path) -> bool:
    """query/ and bounding_box_test/ (bounding_box_train/ is optional: an evaluation set)."""
    return all((root / f).is_dir() for f in TEST_SPLITS)


def _first_image(root: Path) -> list[Path]:
    """The first image of the train split, or of the query split without one (at most one)."""
    for folder in (SPLITS["train"], SPLITS["query"]):
        if (root / folder).is_dir():
            first = list_images(root / folder)[:1]
            if first:
                return first
    return []


def detect_format(root: str | os.PathLike) -> str:
    """The format of ``root``, checked in this order: the three Market-1501 folders (Market or
    Duke names; CUHK03-NP names there mean one CUHK03-NP subset folder), the MSMT17 lists,
    ``labeled/``/``detected/`` (CUHK03-NP), ``query/`` and ``gallery/`` folders (custom),
    ``query.csv``/``gallery.csv`` (custom lists). ``DatasetError`` if none matches."""
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DatasetError(f"dataset root {root} {what}; expected one of: {expected_any(root)}")
    if _market_like(root):
        first = _first_image(root)
        if first and is_cuhk03_name(first[0].name):
            sub = root.name if root.name in SUBSETS else None
            if sub is None:
                raise DatasetError(f"{root}: CUHK03-NP names ({first[0].name}) in a folder "
                                   f"not named labeled/ or detected/: pass format "
                                   f"cuhk03-labeled or cuhk03-detected")
            return f"cuhk03-{sub}"
        return "market"      # load_market tells Market from Duke names
    if msmt17_version(root):
        return "msmt17"
    subsets = [s for s in SUBSETS if _market_like(root / s)]
    if len(subsets) == 2:
        raise DatasetError(f"{root}: a CUHK03-NP root with both labeled/ and detected/ (two "
                           f"separate benchmarks): pass format cuhk03-labeled or "
                           f"cuhk03-detected (--format)")
    if len(subsets) == 1:
        return f"cuhk03-{subsets[0]}"
    if (root / "query").is_dir() and (root / "gallery").is_dir():
        return "folders"
    if list_file(root, "query") and list_file(root, "gallery"):
        return "csv"
    # Part of one layout: let its reader say what is missing.
    if any((root / f).is_dir() for f in (SPLITS["train"], SPLITS["gallery"])):
        return "market"
    if any((root / f).is_file() for f in MSMT17_LISTS.values()):
        return "msmt17"
    if (root / "gallery").is_dir() or (root / "query").is_dir():
        return "folders"
    if any(list_file(root, s) for s in ("train", "query", "gallery")):
        return "csv"
    try:
        found = sorted(e.name + ("/" if e.is_dir() else "") for e in root.iterdir())
    except OSError:
        found = []
    shown = ", ".join(found[:12]) + (f" and {len(found) - 12} more" if len(found) > 12 else "")
    raise DatasetError(f"{root}: no known dataset layout (found: {shown or 'nothing'}); "
                       f"expected one of: {expected_any(root)}")


def expected_any(root: str | os.PathLike) -> str:
    """What each layout expects at ``root``, for error messages."""
    return (f"Market-1501/DukeMTMC-reID: {expected_layout(root)}; MSMT17: "
            f"{expected_msmt17(root)}; CUHK03-NP: {expected_cuhk03(root)}; "
            f"{expected_folders(root)}; {expected_lists(root)}")


def load_dataset(root: str | os.PathLike, format: str | None = None,
                 trainval: bool = False) -> Dataset:
    """Parse ``root`` in ``format`` (None: detected) into a ``Dataset``; see the module doc."""
    root = Path(root)
    if format is not None and format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; one of {', '.join(FORMATS)} "
                           f"(or none: detected from the folder)")
    fmt = format or detect_format(root)
    if trainval and fmt != "msmt17":
        raise DatasetError(f"{root}: trainval applies to MSMT17 only (its list_val.txt); this "
                           f"is {fmt}")
    if fmt in ("market", "duke"):
        layout = "auto" if format is None else {"market": "market1501", "duke": "duke"}[fmt]
        return load_market(root, layout=layout)
    if fmt == "msmt17":
        return load_msmt17(root, trainval=trainval)
    if fmt.startswith("cuhk03-"):
        return load_cuhk03(root, fmt.split("-", 1)[1])
    if fmt == "folders":
        return load_folders(root)
    return load_lists(root)


# --- several datasets ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One dataset to read: its root and format (None: detected)."""
    root: str
    format: str | None = None


def sources(root: str | list[str], format: str | list[str | None] | None = None) -> list[Source]:
    """Pair roots with formats: one format for all, or one per root (the data layer's
    ``root``/``format`` param_str keys and the command lines' ``--data``/``--format``)."""
    roots = [root] if isinstance(root, str) else list(root)
    if not roots:
        raise DatasetError("no dataset root given")
    if format is None or isinstance(format, str):
        formats = [format] * len(roots)
    else:
        formats = list(format)
        if len(formats) != len(roots):
            raise DatasetError(f"{len(formats)} formats for {len(roots)} dataset roots: give "
                               f"one format for all or one per root")
    for f in formats:
        if f is not None and f not in FORMATS:
            raise DatasetError(f"unknown dataset format {f!r}; one of {', '.join(FORMATS)}")
    return [Source(str(r), f) for r, f in zip(roots, formats)]


def split_list(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated command-line values as one list (``--data a,b --data c``)."""
    out: list[str] = []
    for v in values or []:
        out += [s.strip() for s in str(v).split(",") if s.strip()]
    return out


@dataclass(frozen=True)
class TrainSet:
    """The training images of one or more datasets, labelled for one classifier."""
    paths: list[str]
    labels: np.ndarray            # int64, 0..num_classes-1
    num_classes: int
    offsets: tuple[int, ...]      # first label of each dataset
    datasets: tuple[Dataset, ...]


def combine_train(datasets: list[Dataset]) -> TrainSet:
    """Every dataset's train split, labels offset so identities of different sets stay apart."""
    paths: list[str] = []
    labels: list[np.ndarray] = []
    offsets = []
    offset = 0
    for ds in datasets:
        if not ds.train:
            raise DatasetError(no_train_error(ds))
        offsets.append(offset)
        paths += [str(r.path) for r in ds.train]
        labels.append(ds.train_labels() + offset)
        offset += ds.num_train_ids
    return TrainSet(paths, np.concatenate(labels), offset, tuple(offsets), tuple(datasets))


def no_train_error(ds: Dataset, what: str = "training") -> str:
    """The message for a dataset without a training split given to something that needs one."""
    return (f"{ds.root}: no training images: this {ds.layout} root has no training split (only "
            f"query and gallery, an evaluation set), and {what} needs one; it can still be "
            f"scored (tools/eval_market.py --data {ds.root})")


def load_train_sets(root: str | list[str], format: str | list[str | None] | None = None,
                    trainval: bool = False) -> TrainSet:
    """``combine_train`` of the datasets at ``root`` (one or a list) in ``format``;
    ``trainval`` applies to the MSMT17 sets among them (at least one)."""
    srcs = sources(root, format)
    formats = [s.format or detect_format(s.root) for s in srcs]
    if trainval and "msmt17" not in formats:
        raise DatasetError(f"trainval applies to MSMT17 sets only (its list_val.txt); "
                           f"{', '.join(s.root for s in srcs)} holds none")
    return combine_train([load_dataset(s.root, s.format, trainval=trainval and f == "msmt17")
                          for s, f in zip(srcs, formats)])
