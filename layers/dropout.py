"""Dropout that switches itself off late in training (paper V.ii, "+ Disabled dropout" row).

The paper uses dropout (ratio 0.1) in every RM-block to use the whole capacity of the small net,
and disables it "on the late iterations (when the learning rate is small enough)". Stock Caffe's
Dropout layer cannot change during a run. The project's Caffe has a native option for it
(``dropout_param.switch_off_iter``, which the generated train nets use); this Python layer is
the same schedule for users of stock Caffe: inverted dropout (scale kept units by 1/P(keep)) until ``switch_off_iter``, identity from then
on, and identity in the TEST phase.

The layer counts its own TRAIN forward passes in a one-value parameter blob (``lr_mult: 0``), so
the count is saved in every snapshot and `caffe train -snapshot` resumes on the right side of the
switch. With ``iter_size`` > 1 in the solver, give the same ``iter_size`` here: the counter then
advances once per solver iteration. Masks come from a generator seeded by (seed, forward count);
the generator gives each block its own seed. A resumed run draws the masks an unbroken run would.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # numpy maths above, the Caffe adapter below; the maths imports without Caffe.
    import caffe
except ImportError:  # pragma: no cover - layers are only instantiated by Caffe
    caffe = None


def keep_threshold(ratio: float) -> int:
    """A unit is kept when its random uint16 is >= this (ratio quantised to 1/65536)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"dropout ratio must be in [0, 1), got {ratio}")
    return int(round(ratio * 65536))


def keep_scale(ratio: float) -> np.float32:
    """1 / P(keep) for the quantised ratio: the expectation of the output equals the input."""
    return np.float32(65536.0 / (65536 - keep_threshold(ratio)))


def dropout_mask(shape: tuple[int, ...], ratio: float, seed: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Float32 mask: 0 for dropped units, 1/P(keep) for kept ones (inverted dropout).

    Random uint16s from raw generator bytes, compared with ``keep_threshold``: about twice as
    fast as drawing floats, which matters for 36 layers of a training step.
    """
    thr = keep_threshold(ratio)
    n = int(np.prod(shape))
    keep = np.frombuffer(np.random.default_rng(seed).bytes(2 * n), dtype=np.uint16) >= thr
    if out is None:
        out = np.empty(shape, np.float32)
    np.multiply(keep.reshape(shape), keep_scale(ratio), out=out)
    return out


def is_active(iteration: int, switch_off_iter: int | None) -> bool:
    """Dropout is on before ``switch_off_iter`` (None: never switched off)."""
    return switch_off_iter is None or iteration < switch_off_iter


def mask_seed(seed: int, iteration: int) -> int:
    """Seed of the mask drawn at ``iteration``: a resumed run draws what an unbroken run would."""
    return (seed * 1_000_003 + iteration) % 2**63


@dataclass(frozen=True)
class ScheduledDropoutConfig:
    ratio: float = 0.1
    switch_off_iter: int | None = None
    iter_size: int = 1
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.switch_off_iter is not None and self.switch_off_iter < 0:
            raise ValueError(f"switch_off_iter must be >= 0 or null, got {self.switch_off_iter!r}")
        if self.iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {self.iter_size!r}")


if caffe is not None:
    from layers.errors import reports_errors
    from rmnet.config import parse_config

    @reports_errors
    class ScheduledDropoutLayer(caffe.Layer):
        """In-place-safe dropout with an iteration switch; param_str: ScheduledDropoutConfig."""

        def setup(self, bottom, top):
            if len(bottom) != 1 or len(top) != 1:
                raise ValueError(f"{self.__class__.__name__}: one bottom and one top")
            self.cfg = parse_config(ScheduledDropoutConfig, self.param_str, "ScheduledDropoutLayer")
            if len(self.blobs) == 0:
                self.blobs.add_blob(1)
                self.blobs[0].data[...] = 0
            self.mask: np.ndarray | None = None    # reused buffer: no allocation per step
            self.active = False

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        @property
        def iteration(self) -> int:
            return int(self.blobs[0].data.flat[0]) // self.cfg.iter_size

        def forward(self, bottom, top):
            train = self.phase == caffe.TRAIN
            x, y = bottom[0].data, top[0].data
            if train and is_active(self.iteration, self.cfg.switch_off_iter) and self.cfg.ratio > 0:
                if self.mask is None or self.mask.shape != x.shape:
                    self.mask = np.empty(x.shape, np.float32)
                dropout_mask(x.shape, self.cfg.ratio,
                             mask_seed(self.cfg.seed, int(self.blobs[0].data.flat[0])),
                             out=self.mask)
                np.multiply(x, self.mask, out=y)
                self.active = True
            else:
                self.active = False
                if not np.shares_memory(x, y):      # in place (as generated): nothing to do
                    y[...] = x
            if train:
                self.blobs[0].data.flat[0] += 1

        def backward(self, top, propagate_down, bottom):
            if not propagate_down[0]:
                return
            dy, dx = top[0].diff, bottom[0].diff
            if self.active:
                np.multiply(dy, self.mask, out=dx)
            elif not np.shares_memory(dy, dx):
                dx[...] = dy
