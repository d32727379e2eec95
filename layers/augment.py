"""Data augmentation with a difficulty knob (paper V.ii, step e).

The paper trains with "strong data augmentation with the progressively increased difficulty":
random erasing (Zhong et al.) in addition to horizontal flip and random crop. Here one number,
``difficulty`` in [0, 1], scales all three, and the data layer raises it round by round:

- horizontal flip: probability 0.5 at any difficulty (it never makes a sample harder to match);
- random crop: the image is enlarged by a factor up to ``1 + max_zoom * difficulty`` and a
  window of the target size is cut out at a random position (a zoom-in crop with translation);
- random erasing: with probability ``max_erase_prob * difficulty`` one rectangle of area
  ``[0.02, max_erase_area]`` of the image and aspect ratio in [0.3, 3.3] is filled with uniform
  random values 0..255.

Plain functions of (image, parameters drawn from a seeded generator): the same seed gives the same
output, whichever worker process runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentParams:
    """What happens to one image; drawn in the main process so batches are reproducible."""
    flip: bool
    zoom: float          # >= 1; 1 means no crop
    crop_y: float        # in [0, 1]: where the window sits in the enlarged image
    crop_x: float
    erase: tuple[float, float, float, float] | None  # (y0, x0, h, w) as fractions of the image
    erase_seed: int


def draw_params(rng: np.random.Generator, difficulty: float, max_zoom: float = 0.2,
                max_erase_prob: float = 0.5, max_erase_area: float = 0.3) -> AugmentParams:
    """Draw augmentation parameters for one image at the given difficulty (0..1)."""
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    flip = bool(rng.random() < 0.5)
    zoom = 1.0 + max_zoom * difficulty * float(rng.random())
    crop_y, crop_x = float(rng.random()), float(rng.random())
    erase = None
    if rng.random() < max_erase_prob * difficulty:
        area = float(rng.uniform(0.02, max(max_erase_area, 0.02)))
        aspect = math.exp(float(rng.uniform(math.log(0.3), math.log(3.3))))
        h = min(1.0, math.sqrt(area * aspect))
        w = min(1.0, math.sqrt(area / aspect))
        erase = (float(rng.uniform(0, 1 - h)), float(rng.uniform(0, 1 - w)), h, w)
    return AugmentParams(flip, zoom, crop_y, crop_x, erase, int(rng.integers(2**31)))


def apply(img: np.ndarray, height: int, width: int, p: AugmentParams | None) -> np.ndarray:
    """Resize a BGR uint8 image to (height, width) and apply ``p`` (None: resize only).

    Returns uint8 (height, width, 3).
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {img.shape}")
    if p is None or p.zoom <= 1.0:
        out = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        big_h, big_w = int(round(height * p.zoom)), int(round(width * p.zoom))
        big = cv2.resize(img, (big_w, big_h), interpolation=cv2.INTER_LINEAR)
        y0 = int(round(p.crop_y * (big_h - height)))
        x0 = int(round(p.crop_x * (big_w - width)))
        out = big[y0:y0 + height, x0:x0 + width]
    if p is not None and p.flip:
        out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    if p is not None and p.erase is not None:
        ey, ex, eh, ew = p.erase
        y0, x0 = int(ey * height), int(ex * width)
        h, w = max(1, int(eh * height)), max(1, int(ew * width))
        noise = np.random.default_rng(p.erase_seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        out[y0:y0 + h, x0:x0 + w] = noise[: height - y0, : width - x0]
    return out
