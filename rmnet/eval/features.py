"""The HDF5 features file: descriptors of a query and a gallery set with their labels, written
by ``tools/eval_market.py --cache`` (and readable from any model's features in this layout).

Features file (HDF5), groups ``query`` and ``gallery``, each with

- ``features``: float32 (N, D), the descriptors;
- ``pids``: int64 (N,), person ids (-1 junk, 0 distractor);
- ``camids``: int64 (N,), camera ids;
- ``paths``: (N,) UTF-8 strings, image paths (relative to the root attribute ``data_root`` when
  written by ``tools/eval_market.py``).

File attributes describe where the features come from (``tools/eval_market.py`` stores the
sha256 of the prototxt and the caffemodel, the flip flag and the output blob, and reuses a cache
only when they all match). ``read_features`` checks the whole layout and raises
``FeaturesFileError`` naming the file and what is wrong.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmnet.atomic import atomic_write_bytes

GROUPS = ("query", "gallery")
DATASETS = ("features", "pids", "camids", "paths")


class FeaturesFileError(ValueError):
    """A features HDF5 file that does not have the documented layout."""


# --- features file ------------------------------------------------------------------------------

@dataclass
class FeatureSet:
    """Descriptors of one split and what they describe (one row per image)."""
    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]
    seconds: float = 0.0          # extraction wall time, when extracted in this process

    def __post_init__(self):
        n = len(self.features)
        for name in ("pids", "camids", "paths"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FeatureSet: {len(getattr(self, name))} {name} for "
                                 f"{n} feature rows")

    def __len__(self) -> int:
        return len(self.features)


def write_features(path: str | os.PathLike, query: FeatureSet, gallery: FeatureSet,
                   attrs: dict | None = None) -> Path:
    """Write the HDF5 features file atomically (module doc); ``attrs`` become file attributes."""
    import io

    import h5py

    # Built in memory, then written atomically: HDF5 writing straight to a full disk can crash
    # the process; this way a full disk is an OSError naming the file, and nothing half-written.
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, fs in (("query", query), ("gallery", gallery)):
            g = f.create_group(name)
            g.create_dataset("features", data=np.asarray(fs.features, np.float32))
            g.create_dataset("pids", data=np.asarray(fs.pids, np.int64))
            g.create_dataset("camids", data=np.asarray(fs.camids, np.int64))
            g.create_dataset("paths", data=[str(p) for p in fs.paths],
                             dtype=h5py.string_dtype("utf-8"))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_features(path: str | os.PathLike) -> tuple[FeatureSet, FeatureSet, dict]:
    """(query, gallery, attrs) of a features file; ``FeaturesFileError`` naming the file and
    the problem for anything that does not follow the layout of the module doc."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FeaturesFileError(f"{path}: no such features file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FeaturesFileError(f"{path}: not an HDF5 file ({e})") from None
    with f:
        sets = []
        for name in GROUPS:
            if name not in f or not isinstance(f[name], h5py.Group):
                raise FeaturesFileError(f"{path}: no group '{name}' (expected groups "
                                        f"{', '.join(GROUPS)})")
            g = f[name]
            missing = [d for d in DATASETS if d not in g]
            if missing:
                raise FeaturesFileError(f"{path}: group '{name}' lacks the dataset(s) "
                                        f"{', '.join(missing)} (expected {', '.join(DATASETS)})")
            feats = g["features"]
            if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
                raise FeaturesFileError(f"{path}: {name}/features must be a 2-D float array, "
                                        f"is {feats.shape} {feats.dtype}")
            n = feats.shape[0]
            for d in DATASETS[1:]:
                if g[d].shape != (n,):
                    raise FeaturesFileError(f"{path}: {name}/{d} has shape {g[d].shape}, but "
                                            f"{name}/features has {n} rows")
            for d in ("pids", "camids"):
                if not np.issubdtype(g[d].dtype, np.integer):
                    raise FeaturesFileError(f"{path}: {name}/{d} must be integers, is "
                                            f"{g[d].dtype}")
            if g["paths"].dtype.kind not in "OSU":
                raise FeaturesFileError(f"{path}: {name}/paths must be strings, is "
                                        f"{g['paths'].dtype}")
            x = np.asarray(feats[()], np.float32)
            if not np.isfinite(x).all():
                row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
                raise FeaturesFileError(f"{path}: {name}/features row {row} is NaN or infinite")
            paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in g["paths"][()]]
            sets.append(FeatureSet(x, np.asarray(g["pids"][()], np.int64),
                                   np.asarray(g["camids"][()], np.int64), paths))
        if sets[0].features.shape[1] != sets[1].features.shape[1]:
            raise FeaturesFileError(f"{path}: query features have {sets[0].features.shape[1]} "
                                    f"dimensions, gallery features {sets[1].features.shape[1]}")
        if len(sets[0]) == 0 or len(sets[1]) == 0:
            raise FeaturesFileError(f"{path}: no query or no gallery features")
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    return sets[0], sets[1], attrs


def _plain(v):
    """An HDF5 attribute as a plain Python value (str, int, float, bool or list)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
