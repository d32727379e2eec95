"""Image-classification folders (``DIR/<class>/*.jpg``), the layout most crop datasets use:
what backbone pre-training (paper V.ii: the backbone is first trained to classify object crops)
reads.

``load_class_folder(root)``: every sub-folder of ``root`` with at least one image file is a
class, in sorted name order (label = position); images directly in ``root`` or in deeper
folders are not used. Fewer than two classes is a ``DatasetError`` naming the folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmnet.data.market import DatasetError, list_images


@dataclass(frozen=True)
class ClassFolder:
    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray     # int64, index into classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> str:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return (f"{self.root} (classification): {len(self.paths)} images of "
                f"{self.num_classes} classes ({counts.min()}..{counts.max()} per class)")


def load_class_folder(root: str | os.PathLike) -> ClassFolder:
    """Read ``root/<class>/*`` (see the module doc)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected DIR/<class>/*.jpg)")
    classes, paths, labels = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(sub)
        if not images:
            continue
        labels += [len(classes)] * len(images)
        classes.append(sub.name)
        paths += [str(p) for p in images]
    if len(classes) < 2:
        raise DatasetError(f"{root}: {len(classes)} class folder(s) with images; a "
                           f"classification folder needs at least 2 (DIR/<class>/*.jpg)")
    return ClassFolder(root, classes, paths, np.asarray(labels, np.int64))
