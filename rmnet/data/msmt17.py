"""MSMT17 (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person Re-Identification",
CVPR 2018), versions V1 and V2, read from the list files the authors publish.

Layout of a root (``MSMT17_V1/`` or ``MSMT17_V2/`` as unpacked)::

    list_train.txt  list_val.txt     training split and the published validation split
    list_query.txt  list_gallery.txt  the test split
    train/  test/                     V1: the images (``train/0000/0000_000_01_0303morning_0015_0.jpg``)
    mask_train_v2/  mask_test_v2/     V2: the same, faces masked

Each list line is ``relative/path label``: the path relative to the train folder (for
``list_train.txt`` and ``list_val.txt``) or the test folder (``list_query.txt``,
``list_gallery.txt``), and the 0-based identity label of that split. The file name is
``PPPP_III_CC_DATETIME_FFFF_N.jpg``: its third ``_``-separated field is the camera, 1..15.

Protocol, as published (and as torchreid and fast-reid read it):

- identities: the list labels. They are 0-based, so they are stored as ``pid = label + 1``:
  pid 0 keeps the meaning it has everywhere in ``rmnet.data`` (a distractor) and -1 (junk); MSMT17
  has neither. Train and test identities are disjoint (1,041 and 3,060); query and gallery share
  the test labels. Gallery identities without a query are ordinary negatives.
- cameras: parsed from the file name (1..15, kept 1-based as in the names); the evaluation's
  same-camera exclusion applies as for Market-1501.
- train/val: ``list_val.txt`` holds further images of the training identities. By default only
  ``list_train.txt`` is trained on and the validation images are in ``Dataset.val``;
  ``trainval=True`` trains on both, which is what most published MSMT17 numbers do (torchreid's
  and fast-reid's readers merge them).
- every listed image must exist; a line that does not parse, a camera outside 1..15, a path
  listed twice in one list or a missing file is an error naming the list file and line.
- order: as listed (the lists are sorted), so labels and features line up run to run.
- ``list_train.txt``, ``list_val.txt`` and the train image folder are optional: a root with the
  query and gallery lists and the test folder only is an evaluation set (``Dataset.train``
  empty).
"""
from __future__ import annotations

import os
from pathlib import Path

from rmnet.data.market import Dataset, DatasetError, Record

LISTS = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt",
         "gallery": "list_gallery.txt"}
# the lists every root needs (list_train.txt and list_val.txt are optional: an evaluation set)
TEST_LISTS = ("query", "gallery")
# version -> (train image folder, test image folder)
IMAGE_DIRS = {"msmt17_v1": ("train", "test"), "msmt17_v2": ("mask_train_v2", "mask_test_v2")}
NUM_CAMERAS = 15
EXAMPLE_LINE = "0000/0000_000_01_0303morning_0015_0.jpg 0"


def expected_msmt17(root: str | os.PathLike) -> str:
    lists = ", ".join(LISTS[s] for s in TEST_LISTS)
    dirs = " or ".join(f"{a}/ and {b}/" for a, b in IMAGE_DIRS.values())
    return (f"an MSMT17 root {Path(root)} holds {lists} (and {LISTS['train']}, {LISTS['val']} "
            f"to train on; lines like '{EXAMPLE_LINE}') and the image folders {dirs}")


def has_train_lists(root: Path) -> bool:
    """Whether ``root`` has a training split (list_train.txt; list_val.txt goes with it)."""
    return (root / LISTS["train"]).is_file()


def msmt17_version(root: str | os.PathLike) -> str | None:
    """"msmt17_v1" or "msmt17_v2" if ``root`` has the lists and that version's image folders
    (the test lists and folder only, for a root without a training split)."""
    root = Path(root)
    train = has_train_lists(root)
    if not all((root / LISTS[s]).is_file() for s in TEST_LISTS):
        return None
    for version, dirs in IMAGE_DIRS.items():
        if all((root / d).is_dir() for d in (dirs if train else dirs[1:])):
            return version
    return None


def camera_of(name: str) -> int:
    """The camera (1..15) of an MSMT17 file name, e.g. 1 for ``0000_000_01_0303morning_0015_0.jpg``;
    ``DatasetError`` (reason only) if the name does not have one."""
    parts = Path(name).stem.split("_")
    if len(parts) < 3 or not parts[2].isdigit():
        raise DatasetError(f"file name {name!r} has no camera field (expected names like "
                           f"0000_000_01_0303morning_0015_0.jpg, camera = the third field)")
    cam = int(parts[2])
    if not 1 <= cam <= NUM_CAMERAS:
        raise DatasetError(f"camera {cam} of {name!r} is outside 1..{NUM_CAMERAS}")
    return cam


def read_list(list_file: Path, image_dir: Path) -> list[Record]:
    """The records of one list file (see the module doc); ``DatasetError`` naming file:line."""
    records: list[Record] = []
    seen: set[str] = set()
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{list_file}: cannot read: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{list_file}:{n}"
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"{where}: expected 'relative/path label', e.g. "
                               f"'{EXAMPLE_LINE}', got {line.strip()!r}")
        rel, label = fields[0], int(fields[1])
        if label < 0:
            raise DatasetError(f"{where}: label {label} is negative (labels are 0-based ids)")
        if rel in seen:
            raise DatasetError(f"{where}: {rel} is listed twice")
        seen.add(rel)
        try:
            cam = camera_of(rel)
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}") from None
        path = image_dir / rel
        if not path.is_file():
            raise DatasetError(f"{where}: image {path} does not exist")
        records.append(Record(path, label + 1, cam))
    if not records:
        raise DatasetError(f"{list_file}: no images listed")
    return records


def load_msmt17(root: str | os.PathLike, trainval: bool = False) -> Dataset:
    """Parse an MSMT17 V1 or V2 root into a ``Dataset`` (see the module doc for the protocol)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; "
                           f"{expected_msmt17(root)}")
    train_lists = has_train_lists(root)
    needed = LISTS if train_lists else {s: LISTS[s] for s in TEST_LISTS}
    missing = [f for f in needed.values() if not (root / f).is_file()]
    if not train_lists and (root / LISTS["val"]).is_file():
        missing.insert(0, LISTS["train"])   # a validation split of no training split
    if missing:
        hint = ""
        subs = [d for d in sorted(root.iterdir()) if d.is_dir() and msmt17_version(d)]
        if subs:
            hint = f" (did you mean {subs[0]}?)"
        raise DatasetError(f"{root} is not an MSMT17 root: missing {', '.join(missing)}; "
                           f"{expected_msmt17(root)}{hint}")
    version = msmt17_version(root)
    if version is None:
        raise DatasetError(f"{root}: MSMT17 lists found but no image folders; "
                           f"{expected_msmt17(root)}")
    train_dir, test_dir = (root / d for d in IMAGE_DIRS[version])
    splits = {name: read_list(root / f, train_dir if name in ("train", "val") else test_dir)
              for name, f in needed.items()}
    for name in ("train", "val"):
        splits.setdefault(name, [])          # an evaluation set: no training split
    train_pids = {r.pid for r in splits["train"]}
    for r in splits["val"]:
        if r.pid not in train_pids:
            raise DatasetError(f"{root / LISTS['val']}: {r.path.name} has label {r.pid - 1}, "
                               f"which is no identity of {LISTS['train']} (the validation "
                               f"split holds images of the training identities)")
    train = splits["train"] + splits["val"] if trainval else splits["train"]
    val = [] if trainval else splits["val"]
    layout = version + ("+val" if trainval else "")
    return Dataset(root, layout, train, splits["query"], splits["gallery"], val=val)
