"""Shared fixtures. Tests run with the venv's interpreter (`make test`), where caffe imports."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Quiet glog (Caffe logs every layer at INFO) unless the user asks for it.
os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture(scope="session")
def caffe():
    import caffe as _caffe
    _caffe.set_mode_cpu()
    return _caffe


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
