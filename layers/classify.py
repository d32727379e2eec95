"""Image-classification data layer for backbone pre-training (paper V.ii).

`ClassificationDataLayer` (tops: data (N, 3, H, W) raw BGR 0..255 float32, label (N,)) reads a
classification folder ``root/<class>/*.jpg`` (``rmnet.data.classes``): each pass over the
images is a seeded permutation, and in the TRAIN phase every image is augmented by
``layers.augment`` (flip, zoom-crop, random erasing) at a fixed ``difficulty``. Images are
decoded in Caffe's thread (``rmnet.data.images.load_bgr``); an unreadable image stops training
with its path (a classification folder has no per-sample weight to switch it off with).

``BatchPlan.batch(i)``: which images and which augmentation batch ``i`` gets is a
plain function of (seed, i), so the same seed gives the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layers import augment

try:
    import caffe
except ImportError:  # pragma: no cover
    caffe = None


@dataclass(frozen=True)
class ClassDataConfig:
    """param_str of ClassificationDataLayer (JSON). Unknown keys are refused."""
    root: str
    height: int = 224
    width: int = 224
    batch_size: int = 32
    num_classes: int | None = None
    augment: bool = True
    difficulty: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.height < 16 or self.width < 16:
            raise ValueError("height and width must be >= 16")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= self.difficulty <= 1:
            raise ValueError("difficulty must be in [0, 1]")


class BatchPlan:
    """Batches of (image indices, augmentation parameters) from a seeded permutation per pass."""

    def __init__(self, n_images: int, cfg: ClassDataConfig, train: bool):
        self.n, self.cfg, self.train = n_images, cfg, train
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(self.n)
                            if self.train else np.arange(self.n)}
        return self._orders[epoch]

    def batch(self, i: int) -> tuple[np.ndarray, list[augment.AugmentParams | None]]:
        bs = self.cfg.batch_size
        flat = np.arange(i * bs, (i + 1) * bs)
        ids = np.array([self.order(int(k // self.n))[k % self.n] for k in flat])
        if not (self.train and self.cfg.augment):
            return ids, [None] * bs
        rng = np.random.default_rng([self.cfg.seed, 1, i])
        return ids, [augment.draw_params(rng, self.cfg.difficulty) for _ in ids]


def load_batch(paths: list[str], params, height: int, width: int) -> np.ndarray:
    """float32 (N, 3, height, width) raw BGR of the images, each augmented by its params."""
    from rmnet.data.images import load_bgr

    out = np.empty((len(paths), 3, height, width), np.float32)
    for k, (path, p) in enumerate(zip(paths, params)):
        out[k] = augment.apply(load_bgr(path), height, width, p).transpose(2, 0, 1)
    return out


if caffe is not None:
    from rmnet.config import parse_config
    from layers.errors import reports_errors

    @reports_errors
    class ClassificationDataLayer(caffe.Layer):
        """Tops: data (N, 3, H, W) raw BGR 0..255, label (N,)."""

        def setup(self, bottom, top):
            from rmnet.data.classes import load_class_folder

            if bottom or len(top) != 2:
                raise ValueError("ClassificationDataLayer: no bottoms, two tops (data, label)")
            self.cfg = parse_config(ClassDataConfig, self.param_str, "ClassificationDataLayer")
            folder = load_class_folder(self.cfg.root)
            if self.cfg.num_classes is not None and folder.num_classes != self.cfg.num_classes:
                raise ValueError(f"ClassificationDataLayer: {self.cfg.root} has "
                                 f"{folder.num_classes} classes but the net was generated for "
                                 f"num_classes={self.cfg.num_classes}")
            self.paths, self.labels = folder.paths, folder.labels
            self.plan = BatchPlan(len(self.paths), self.cfg, self.phase == caffe.TRAIN)
            self.i = 0

        def reshape(self, bottom, top):
            top[0].reshape(self.cfg.batch_size, 3, self.cfg.height, self.cfg.width)
            top[1].reshape(self.cfg.batch_size)

        def forward(self, bottom, top):
            ids, params = self.plan.batch(self.i)
            self.i += 1
            top[0].data[...] = load_batch([self.paths[j] for j in ids], params,
                                          self.cfg.height, self.cfg.width)
            top[1].data[...] = self.labels[ids]

        def backward(self, top, propagate_down, bottom):
            pass
