"""Dropout that switches itself off late in training (paper V.ii, "+ Disabled dropout" row).

The paper uses dropout (ratio 0.1) in every RM-block to use the whole capacity of the small net,
and disables it "on the late iterations (when the learning rate is small enough)". Caffe's own
Dropout layer cannot change during a run, so the train nets use this Python layer instead:
inverted dropout (scale kept units by 1/(1-ratio)) until ``switch_off_iter``, identity from then
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


def dropout_mask(shape: tuple[int, ...], ratio: float, seed: int) -> np.ndarray:
    """Float32 mask: 0 for dropped units, 1/(1-ratio) for kept ones (inverted dropout)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"dropout ratio must be in [0, 1), got {ratio}")
    keep = np.random.default_rng(seed).random(shape, dtype=np.float32) >= ratio
    return keep.astype(np.float32) * np.float32(1.0 / (1.0 - ratio))


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
    from layers.config import parse_config

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
            self.mask = None

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        @property
        def iteration(self) -> int:
            return int(self.blobs[0].data.flat[0]) // self.cfg.iter_size

        def forward(self, bottom, top):
            train = self.phase == caffe.TRAIN
            if train and is_active(self.iteration, self.cfg.switch_off_iter) and self.cfg.ratio > 0:
                self.mask = dropout_mask(bottom[0].data.shape, self.cfg.ratio,
                                         mask_seed(self.cfg.seed, int(self.blobs[0].data.flat[0])))
                top[0].data[...] = bottom[0].data * self.mask
            else:
                self.mask = None
                top[0].data[...] = bottom[0].data
            if train:
                self.blobs[0].data.flat[0] += 1

        def backward(self, top, propagate_down, bottom):
            if not propagate_down[0]:
                return
            if self.mask is None:
                bottom[0].diff[...] = top[0].diff
            else:
                bottom[0].diff[...] = top[0].diff * self.mask
