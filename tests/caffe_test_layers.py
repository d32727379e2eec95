"""A minimal Caffe Python layer for the foundation tests: top = factor * bottom.

Not a product layer: it exists so the tests can check that Caffe's Python-layer bridge works
(forward, backward with an upstream gradient, reshape, parameters, phase, errors) before the
project's own layers are built on it.
"""
from __future__ import annotations

import json

import caffe


class ScaleByLayer(caffe.Layer):
    """top = factor * bottom; param_str is JSON {"factor": float}."""

    def setup(self, bottom, top):
        if len(bottom) != 1 or len(top) != 1:
            raise ValueError("ScaleByLayer takes one bottom and one top")
        params = json.loads(self.param_str or "{}")
        unknown = set(params) - {"factor"}
        if unknown:
            raise ValueError(f"ScaleByLayer: unknown param_str keys {sorted(unknown)}")
        self.factor = float(params.get("factor", 2.0))

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.factor * bottom[0].data
        # Record the phase so a test can see it arrives (TRAIN = 0, TEST = 1).
        self.seen_phase = self.phase

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.factor * top[0].diff
