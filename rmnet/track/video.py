"""Reading and writing videos with OpenCV, failing with a message that says what to do.

``VideoReader(path)`` opens a video and reads its frame count, size and rate; a missing file, a
file OpenCV cannot decode (not a video, a codec its FFmpeg lacks) or a video without frames is a
``VideoError`` naming the file. Iterating yields ``(frame_number, bgr_image)`` from 1, as MOT
files count. The frame count in a container's header can be wrong; ``count_frames`` decodes to
find the real one when it matters (the detections check).

``VideoWriter(path, fps, size, codec)`` opens a writer and refuses, before any frame is
processed, a codec OpenCV cannot write into that container (``CodecError``, naming the codec,
the file and the codecs to try). The video is written under a temporary name and renamed into
place on ``close()``, so an interrupted run leaves no half video under the real name.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Codecs to try, by container (OpenCV's FFmpeg build in opencv-python-headless writes these).
CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "XVID", ".mov": "mp4v"}


class VideoError(ValueError):
    """A video that cannot be read; the message names the file."""


class CodecError(VideoError):
    """OpenCV cannot write the requested codec into the requested file."""


class VideoReader:
    """Frames of one video file, numbered from 1 (see the module doc)."""

    def __init__(self, path: str | os.PathLike):
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such video file")
        cap = cv2.VideoCapture(str(self.path))
        ok = cap.isOpened()
        frame = cap.read()[1] if ok else None
        if not ok or frame is None:
            cap.release()
            raise VideoError(f"{self.path}: OpenCV cannot decode it (not a video, damaged, or "
                             f"a codec its FFmpeg build lacks; convert it, e.g. ffmpeg -i "
                             f"{self.path.name} -c:v libx264 out.mp4)")
        self.height, self.width = frame.shape[:2]
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
        self.n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.width, self.height

    def count_frames(self) -> int:
        """The real number of frames, by decoding them all (headers can be wrong)."""
        n = sum(1 for _ in self)
        self.n_frames = n
        return n

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            no = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                no += 1
                if frame.shape[:2] != (self.height, self.width):
                    raise VideoError(f"{self.path}: frame {no} is {frame.shape[1]}x"
                                     f"{frame.shape[0]}, the video started at "
                                     f"{self.width}x{self.height}")
                yield no, frame
        finally:
            cap.release()


class VideoWriter:
    """A video written under a temporary name, renamed into place by ``close()``."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int],
                 codec: str | None = None):
        import cv2

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        self.codec = codec or CODECS.get(suffix)
        if self.codec is None:
            raise CodecError(f"{self.path}: unknown video container {suffix or '(none)'}; use "
                             f"one of {', '.join(CODECS)}")
        if len(self.codec) != 4:
            raise CodecError(f"{self.path}: a codec is a FourCC of 4 characters, got "
                             f"{self.codec!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.size = (int(size[0]), int(size[1]))
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.codec),
                                      float(fps), self.size)
        if not self.writer.isOpened():
            self.writer.release()
            self.tmp.unlink(missing_ok=True)
            others = ", ".join(f"{c} ({s})" for s, c in CODECS.items() if c != self.codec)
            raise CodecError(f"{self.path}: OpenCV cannot write codec {self.codec!r} into "
                             f"{suffix} here (its FFmpeg build lacks the encoder); try "
                             f"another codec and container: {others}")

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[1::-1] != self.size:
            raise VideoError(f"{self.path}: frame of {frame.shape[1]}x{frame.shape[0]}, the "
                             f"video is {self.size[0]}x{self.size[1]}")
        self.writer.write(frame)

    def close(self) -> Path:
        """Finish the file and move it into place."""
        self.writer.release()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
