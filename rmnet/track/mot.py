"""MOT Challenge text files: detections, ground truth and tracker results.

One line per box, comma-separated: ``frame, id, left, top, width, height, conf, x, y, z``
(MOT15-MOT17; frames count from 1, ``id`` is -1 in detection files). Ground truth (MOT16/17)
uses the last three columns as ``considered, class, visibility``; readers here take the first
seven and keep the rest as they are. Blank lines are skipped; anything else that is not a box is
an error naming the file and the line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmnet.atomic import atomic_write_text

COLUMNS = 10


class MOTFormatError(ValueError):
    """A MOT file that cannot be read, or that does not fit its video (names the file)."""


@dataclass
class MOTFile:
    """The boxes of one file as an (N, 10) float64 array, sorted by frame (stable)."""
    path: Path
    rows: np.ndarray

    @property
    def frames(self) -> np.ndarray:
        return self.rows[:, 0].astype(np.int64)

    @property
    def last_frame(self) -> int:
        return int(self.rows[:, 0].max()) if len(self.rows) else 0

    def by_frame(self) -> dict[int, np.ndarray]:
        """Frame number -> its rows (each (k, 10))."""
        out: dict[int, np.ndarray] = {}
        if not len(self.rows):
            return out
        frames = self.frames
        cuts = np.flatnonzero(np.diff(frames)) + 1
        for chunk in np.split(self.rows, cuts):
            out[int(chunk[0, 0])] = chunk
        return out


def read_mot(path: str | os.PathLike) -> MOTFile:
    """Read a MOT file; ``MOTFormatError`` names the file and line of anything malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MOTFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise MOTFormatError(f"{path}: not a text file (a MOT file is comma-separated "
                             f"text)") from None
    rows = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.replace(" ", ",").split(",") if p.strip()]
        if len(parts) < 6:
            raise MOTFormatError(f"{path}:{no}: {len(parts)} fields, a MOT line has at least 6 "
                                 f"(frame, id, left, top, width, height[, conf, ...]): {line!r}")
        try:
            vals = [float(p) for p in parts[:COLUMNS]]
        except ValueError:
            raise MOTFormatError(f"{path}:{no}: not numbers: {line!r}") from None
        if len(vals) == 6:             # no confidence column: a sure box
            vals.append(1.0)
        vals += [-1.0] * (COLUMNS - len(vals))
        frame, _, _, _, w, h = vals[:6]
        if not np.isfinite(vals).all():
            raise MOTFormatError(f"{path}:{no}: a value is not finite: {line!r}")
        if frame < 1 or frame != int(frame):
            raise MOTFormatError(f"{path}:{no}: frame {parts[0]} is not a whole number >= 1")
        if w <= 0 or h <= 0:
            raise MOTFormatError(f"{path}:{no}: box of width {w:g} and height {h:g}; both "
                                 f"must be > 0")
        rows.append(vals)
    arr = np.asarray(rows, np.float64).reshape(-1, COLUMNS)
    order = np.argsort(arr[:, 0], kind="stable")
    return MOTFile(path, arr[order])


def check_fits(mot: MOTFile, n_frames: int, width: int, height: int, video: str) -> None:
    """Refuse detections that cannot belong to the video: frames past its end, boxes wholly
    outside its picture (a file for another video, or another resolution)."""
    if not len(mot.rows):
        return
    if mot.last_frame > n_frames:
        raise MOTFormatError(f"{mot.path}: has boxes up to frame {mot.last_frame}, but {video} "
                             f"has {n_frames} frames: detections of another video?")
    x, y, w, h = (mot.rows[:, i] for i in range(2, 6))
    outside = (x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        r = mot.rows[i]
        raise MOTFormatError(
            f"{mot.path}: {int(outside.sum())} boxes lie wholly outside {video}'s "
            f"{width}x{height} frame (first: frame {int(r[0])}, box {r[2]:g},{r[3]:g} "
            f"{r[4]:g}x{r[5]:g}): detections of another video or resolution?")


def format_rows(rows: np.ndarray) -> str:
    """MOT text of (N, >=7) rows: frame and id as integers, boxes with 2 decimals."""
    lines = []
    for r in np.asarray(rows, np.float64):
        rest = list(r[7:COLUMNS]) + [-1.0] * (COLUMNS - max(7, len(r)))
        lines.append(f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},"
                     f"{r[6]:.4g}," + ",".join(f"{v:g}" for v in rest))
    return "\n".join(lines) + ("\n" if lines else "")


def write_mot(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Write rows (sorted by frame, then id) atomically as a MOT file."""
    rows = np.asarray(rows, np.float64).reshape(-1, np.shape(rows)[-1] if len(rows) else 7)
    if len(rows):
        rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    return atomic_write_text(path, format_rows(rows))
