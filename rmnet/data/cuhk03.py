"""CUHK03 in the new protocol of Zhong et al. ("Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017): CUHK03-NP, as the authors distribute it.

Layout of a root (``cuhk03-np/``)::

    labeled/    boxes drawn by hand
    detected/   boxes from a pedestrian detector
        each with bounding_box_train/  bounding_box_test/  query/

Names are Market-like, ``PPPP_cC_N.png`` (e.g. ``0001_c1_1.png``): person PPPP, camera C (1 or
2, the camera pair's two views), image N.

Protocol (the new one, which replaced CUHK03's 20 random splits):

- 767 training identities, 700 test identities, disjoint. Labeled: 7,368 train, 1,400 query
  and 5,328 gallery images; detected: 7,365, 1,400 and 5,332. The reader does not insist on
  these counts (tests use a small synthetic copy); ``Dataset.summary()`` shows what was read.
- ``labeled`` and ``detected`` are two benchmarks, reported separately: the format
  ``cuhk03-labeled`` or ``cuhk03-detected`` says which. The root may be ``cuhk03-np/`` or the
  chosen subfolder itself.
- Each test identity has one query per camera; the same-camera exclusion applies as for
  Market-1501, so a query's true matches are its images from the other camera. There is no
  junk and no distractor: a name with pid 0 or -1 is refused.
- Which files are images and the sort order: as ``rmnet.data.market`` (PNG and JPEG).
- ``bounding_box_train/`` is optional, as for Market-1501: without it the subset is scored only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from rmnet.data.market import SPLITS, TEST_SPLITS, Dataset, DatasetError, Record, list_images

SUBSETS = ("labeled", "detected")
PATTERN = re.compile(r"^(\d{1,4})_c([12])_(\d+)\.(?:png|jpe?g)$", re.IGNORECASE)
EXAMPLE = "0001_c1_1.png"


def expected_cuhk03(root: str | os.PathLike) -> str:
    folders = ", ".join(f + "/" for f in SPLITS.values())
    return (f"a CUHK03-NP root {Path(root)} holds labeled/ and detected/, each with {folders} "
            f"and images named like {EXAMPLE}")


def is_cuhk03_name(name: str) -> bool:
    return PATTERN.match(name) is not None


def subset_root(root: Path, subset: str) -> Path:
    """The folder with the three splits: ``root/subset`` or ``root`` itself."""
    if subset not in SUBSETS:
        raise DatasetError(f"unknown CUHK03-NP subset {subset!r}; one of {', '.join(SUBSETS)}")
    for cand in (root / subset, root):
        if all((cand / f).is_dir() for f in TEST_SPLITS):
            return cand
    missing = [f + "/" for f in TEST_SPLITS if not (root / subset / f).is_dir()]
    raise DatasetError(f"{root / subset}: missing {', '.join(missing)}; {expected_cuhk03(root)}")


def _read_split(folder: Path) -> list[Record]:
    paths = list_images(folder)
    if not paths:
        raise DatasetError(f"{folder}: no images (.png, .jpg or .jpeg) in this split")
    out = []
    for p in paths:
        m = PATTERN.match(p.name)
        if not m:
            raise DatasetError(f"{p}: file name does not follow the CUHK03-NP naming, e.g. "
                               f"{EXAMPLE} (PPPP_cC_N with camera 1 or 2)")
        pid = int(m.group(1))
        if pid < 1:
            raise DatasetError(f"{p}: pid {pid}: CUHK03-NP has no junk or distractor images "
                               f"(pids start at 1)")
        out.append(Record(p, pid, int(m.group(2))))
    return out


def load_cuhk03(root: str | os.PathLike, subset: str) -> Dataset:
    """Parse one CUHK03-NP subset ("labeled" or "detected") into a ``Dataset``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; "
                           f"{expected_cuhk03(root)}")
    base = subset_root(root, subset)
    splits = {name: _read_split(base / folder) for name, folder in SPLITS.items()
              if name != "train" or (base / folder).is_dir()}   # train: optional
    splits.setdefault("train", [])
    return Dataset(base, f"cuhk03-np-{subset}", splits["train"], splits["query"],
                   splits["gallery"])
