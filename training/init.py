"""Weight initialisation and transfer (paper V.ii) as plain numpy, used by tools/init_weights.py.

- ``orthogonal``: the squeezing 1x1 convolution of each RM-block ("input 1x1 convolutions of each
  bottleneck are initialized orthogonally", Saxe et al.): the (out, in*kh*kw) weight matrix gets
  orthonormal rows (or columns, when it is taller than wide), scaled by ``gain``.
- ``msra``: every other convolution (He et al.): zero-mean Gaussian with variance 2 / fan, where
  fan is fan_out = out*kh*kw/group as in Intel's own RMNet training code, or
  fan_in = in*kh*kw/group.
- ``copy_by_name``: start from a backbone trained elsewhere (the paper pre-trains on OpenImages
  object crops): copy every parameter blob whose layer name and shape match, and report what
  matched, what had another shape, and what was missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def orthogonal(shape: tuple[int, ...], rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    """Float32 tensor whose (shape[0], rest) matrix has orthonormal rows or columns."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # a uniform (Haar) draw, not biased by the QR sign convention
    if rows < cols:
        q = q.T
    return (gain * q[:rows, :cols]).reshape(shape).astype(np.float32)


def msra(shape: tuple[int, ...], rng: np.random.Generator, group: int = 1,
         mode: str = "fan_out") -> np.ndarray:
    """He/MSRA normal init for a conv weight (out, in/group, kh, kw)."""
    out_c, in_per_group = shape[0], shape[1]
    k = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if mode == "fan_out":
        fan = out_c * k / group
    elif mode == "fan_in":
        fan = in_per_group * k
    else:
        raise ValueError(f"mode must be fan_out or fan_in, got {mode!r}")
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan)).astype(np.float32)


@dataclass
class TransferReport:
    copied: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    missing_in_source: list[str] = field(default_factory=list)
    unused_in_source: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"copied {len(self.copied)} layer(s)"]
        for title, names in (("shape differs (kept initialised)", self.shape_mismatch),
                             ("not in the source (kept initialised)", self.missing_in_source),
                             ("in the source only (ignored)", self.unused_in_source)):
            if names:
                lines.append(f"{title}: {len(names)}: " + ", ".join(names[:8])
                             + (" ..." if len(names) > 8 else ""))
        return "\n".join(lines)


def copy_by_name(target: dict[str, list[np.ndarray]],
                 source: dict[str, list[np.ndarray]]) -> TransferReport:
    """Copy source blobs into target (in place) where the layer name and every shape match."""
    rep = TransferReport()
    for name, blobs in target.items():
        src = source.get(name)
        if src is None:
            rep.missing_in_source.append(name)
        elif len(src) != len(blobs) or any(a.shape != b.shape for a, b in zip(src, blobs)):
            rep.shape_mismatch.append(
                f"{name} {[tuple(b.shape) for b in blobs]} vs {[tuple(a.shape) for a in src]}")
        else:
            for dst, s in zip(blobs, src):
                dst[...] = s
            rep.copied.append(name)
    rep.unused_in_source = [n for n in source if n not in target]
    return rep
