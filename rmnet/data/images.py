"""Image loading for the whole project (data layer, feature extraction, demos).

The nets take raw BGR 0..255 pixels (no mean subtraction, no scaling), so images are decoded with
OpenCV, whose native channel order is BGR, and kept as uint8 until they become a blob:

- ``load_bgr(path)``: uint8 (H, W, 3) BGR, or ``ImageError`` naming the file and what is wrong.
- ``resize_to(img, height, width)``: bilinear (``cv2.INTER_LINEAR``) resize.
- ``to_blob(images)``: float32 (N, 3, H, W), what Caffe's data blob holds.
- ``load_blob(paths, height, width)``: the three together.

Why ``load_bgr`` does more than ``cv2.imread``: ``cv2.imread`` returns None, silently, for a
missing, unreadable or undecodable file, and libjpeg may decode a truncated JPEG partially (the
missing rows grey) with only a warning on stderr, depending on the OpenCV build. A training run
would then learn from garbage without anyone noticing. So the file is read as bytes first and:

- a missing path, a directory, a file that cannot be read, or an empty file is an error;
- a JPEG (bytes start with FF D8 FF) must contain an end-of-image marker FF D9 after its last
  start-of-scan marker FF DA. Inside entropy-coded scan data a 0xFF byte is always followed by
  0x00 or a restart marker, so FF D9 cannot appear there: a file cut anywhere after the scan began
  has no FF D9 after the last FF DA. Bytes after the end-of-image marker (some cameras append a
  trailer) are allowed. A file cut before any scan has no FF DA and is an error too;
- a PNG (bytes start with the 8-byte PNG signature) must contain its IEND chunk;
- then the bytes are decoded with ``cv2.imdecode(..., cv2.IMREAD_COLOR)`` (the same decoders as
  ``cv2.imread``; grey and 4-channel images come out as 3-channel BGR). A None result (not an
  image format OpenCV knows, or corrupt data) is an error.

Other formats OpenCV can decode (BMP, TIFF, ...) load without the end-marker check.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

# Which files count as images when a dataset folder is listed (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageError(Exception):
    """An image file that cannot be used; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):   # picklable across the data layer's worker processes
        return (type(self), (self.path, self.reason))


def is_image_name(name: str | os.PathLike) -> bool:
    """True for names ending in one of ``IMAGE_EXTENSIONS`` (any case)."""
    return os.path.splitext(str(name))[1].lower() in IMAGE_EXTENSIONS


def check_complete(path: str | os.PathLike, data: bytes) -> None:
    """Raise ``ImageError`` if ``data`` is a JPEG or PNG that was cut short (see module doc)."""
    if data.startswith(_JPEG_MAGIC):
        sos = data.rfind(b"\xff\xda")
        if sos < 0:
            raise ImageError(path, "truncated or corrupt JPEG: no start-of-scan marker (FF DA)")
        if data.find(b"\xff\xd9", sos + 2) < 0:
            raise ImageError(path, f"truncated JPEG: no end-of-image marker (FF D9) after the "
                                   f"image data ({len(data)} bytes)")
    elif data.startswith(_PNG_MAGIC):
        if data.find(b"IEND", len(_PNG_MAGIC)) < 0:
            raise ImageError(path, f"truncated PNG: no IEND chunk ({len(data)} bytes)")


def decode_bgr(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to uint8 (H, W, 3) BGR; ``path`` only names errors."""
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    check_complete(path, data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        if data.startswith(_JPEG_MAGIC) or data.startswith(_PNG_MAGIC):
            raise ImageError(path, "corrupt image data (OpenCV could not decode it)")
        head = data[:8].hex(" ")
        raise ImageError(path, f"not an image OpenCV can decode (file starts with {head})")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(path, f"decoded to an unexpected shape {img.shape}")
    return img   # IMREAD_COLOR always gives 8 bits (16-bit files are scaled down)


def load_bgr(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) BGR 0..255; ``ImageError`` if it cannot be used."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    return decode_bgr(data, path)


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize to (height, width); the image itself if it already has that size."""
    if height < 1 or width < 1:
        raise ValueError(f"resize_to: height and width must be >= 1, got {height}x{width}")
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"resize_to: expected an (H, W[, C]) image, got shape {img.shape}")
    if img.shape[:2] == (height, width):
        return img
    return cv2.resize(img, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def to_blob(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Stack (H, W, 3) images (or an (N, H, W, 3) array) into float32 (N, 3, H, W), C-contiguous.

    Values are kept as they are (raw BGR 0..255 for uint8 input). All images must have the same
    size: resize first.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = images
    else:
        images = list(images)
        if not images:
            raise ValueError("to_blob: no images")
        first = images[0].shape
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"to_blob: image {i} has shape {img.shape}, expected (H, W, 3)")
            if img.shape != first:
                raise ValueError(f"to_blob: image {i} has shape {img.shape}, image 0 has "
                                 f"{first}; resize them to one size first")
        batch = np.stack(images)
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"to_blob: expected (N, H, W, 3), got shape {batch.shape}")
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def load_blob(paths: Iterable[str | os.PathLike], height: int, width: int) -> np.ndarray:
    """Load, resize to (height, width) and stack images: float32 (N, 3, height, width) BGR."""
    return to_blob([resize_to(load_bgr(p), height, width) for p in paths])


# How far (as a factor) an image's aspect ratio may be off the net input's before evaluation
# refuses it (eval_market --max-aspect-change) and the Embedder warns.
MAX_ASPECT_CHANGE = 2.0


def aspect_off(h: int, w: int, height: int, width: int, max_aspect_change: float) -> bool:
    """Whether an h x w image's aspect ratio (height / width) is more than
    ``max_aspect_change`` times off a height x width input's (0: never)."""
    if not max_aspect_change:
        return False
    change = (h / w) / (height / width)
    return not 1 / max_aspect_change <= change <= max_aspect_change


def load_for_input(path: str | os.PathLike, height: int, width: int,
                   max_aspect_change: float = 0.0, sizes: list | None = None) -> np.ndarray:
    """One image as uint8 (height, width, 3) BGR for a net input of that size.

    ``max_aspect_change``: refuse (``ImageError``) an image whose aspect ratio (height / width)
    is more than this many times off the input's: a landscape picture or a strip is not a
    pedestrian box and would silently give a meaningless descriptor. 0 resizes anything.
    ``sizes``: a list the image's original (h, w) is appended to.
    """
    img = load_bgr(path)
    h, w = img.shape[:2]
    if sizes is not None:
        sizes.append((h, w))
    if max_aspect_change:
        if aspect_off(h, w, height, width, max_aspect_change):
            raise ImageError(path, f"image is {w}x{h} (width x height), aspect ratio {h / w:.2f}; "
                                   f"the net takes {width}x{height} ({height / width:.2f}), more "
                                   f"than {max_aspect_change:g}x off: not a pedestrian box")
    return resize_to(img, height, width)


def iter_blobs(paths: Sequence[str | os.PathLike], batch: int, height: int, width: int,
               max_aspect_change: float = 0.0, workers: int = 1, sizes: list | None = None):
    """Yield ``(start, blob)`` for consecutive batches of ``paths`` as float32 (n, 3, H, W)
    blobs (``load_for_input``); the next batch is decoded in ``workers`` threads while the
    caller runs the net on the current one (OpenCV releases the GIL). An unusable image raises
    its ``ImageError`` when its batch is reached. ``sizes``: collects each image's original
    (h, w), in no particular order."""
    from concurrent.futures import ThreadPoolExecutor

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    paths = list(paths)
    starts = range(0, len(paths), batch)
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        def submit(start: int) -> list:
            return [pool.submit(load_for_input, p, height, width, max_aspect_change, sizes)
                    for p in paths[start:start + batch]]

        pending = submit(starts[0])
        for i, start in enumerate(starts):
            images = [f.result() for f in pending]
            if i + 1 < len(starts):
                pending = submit(starts[i + 1])
            yield start, to_blob(images)
