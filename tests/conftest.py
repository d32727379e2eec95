"""Shared fixtures. Tests run with the venv's interpreter (`make test`), where caffe imports."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# Quiet glog (Caffe logs every layer at INFO) unless the user asks for it.
os.environ.setdefault("GLOG_minloglevel", "2")


def central_difference(f, a: np.ndarray, idx, eps: float = 1e-6) -> float:
    """(f() with a[idx] + eps - f() with a[idx] - eps) / 2 eps; ``a`` (a numpy array or a Caffe
    blob's data) is modified in place and restored."""
    old = a[idx]
    a[idx] = old + eps
    plus = f()
    a[idx] = old - eps
    minus = f()
    a[idx] = old
    return (plus - minus) / (2 * eps)


def numeric_grad(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences (float64) of the scalar f() w.r.t. every entry of ``a``."""
    g = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
        g[idx] = central_difference(f, a, idx, eps)
    return g


@pytest.fixture(scope="session")
def caffe():
    import caffe as _caffe
    _caffe.set_mode_cpu()
    return _caffe


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
