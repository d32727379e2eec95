"""Initialisation (paper V.ii): orthogonal squeezing 1x1 convolutions, MSRA elsewhere, usable
BatchNorm statistics, and copying a pre-trained backbone by layer name with a report."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from training.run import TrainingError, init_weights, read_caffemodel
from training.init import copy_by_name, msra, orthogonal
from tests.conftest import REPO

DEPLOY = REPO / "prototxt" / "light" / "deploy.prototxt"


def test_orthogonal_rows_or_columns():
    rng = np.random.default_rng(0)
    wide = orthogonal((16, 64, 1, 1), rng).reshape(16, 64)
    np.testing.assert_allclose(wide @ wide.T, np.eye(16), atol=1e-5)
    tall = orthogonal((64, 16, 1, 1), rng).reshape(64, 16)
    np.testing.assert_allclose(tall.T @ tall, np.eye(16), atol=1e-5)


def test_msra_variance_follows_the_fan():
    rng = np.random.default_rng(0)
    w = msra((256, 64, 3, 3), rng, mode="fan_out")
    assert w.std() == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)
    w = msra((256, 64, 3, 3), rng, mode="fan_in")
    assert w.std() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.02)
    dw = msra((64, 1, 3, 3), rng, group=64, mode="fan_out")        # depthwise: fan_out = 9
    assert dw.std() == pytest.approx(np.sqrt(2 / 9), rel=0.05)
    with pytest.raises(ValueError):
        msra((2, 2, 1, 1), rng, mode="fan_avg")


def test_copy_by_name_reports_what_matched():
    target = {"a": [np.zeros((2, 3))], "b": [np.zeros(4)], "c": [np.zeros(1)]}
    source = {"a": [np.ones((2, 3))], "b": [np.ones(5)], "d": [np.ones(1)]}
    rep = copy_by_name(target, source)
    assert rep.copied == ["a"] and target["a"][0].sum() == 6 and target["b"][0].sum() == 0
    assert rep.shape_mismatch == ["b [(4,)] vs [(5,)]"]
    assert rep.missing_in_source == ["c"] and rep.unused_in_source == ["d"]
    assert "copied 1 layer(s)" in rep.summary() and "shape differs" in rep.summary()


def test_init_caffemodel(caffe, tmp_path):
    out = tmp_path / "init.caffemodel"
    logs: list[str] = []
    init_weights(DEPLOY, out, seed=3, log=logs.append)
    assert logs == ["init_weights: 36 orthogonal, 78 MSRA (fan_out) convolutions"]
    blobs = read_caffemodel(out)
    w = blobs["bottleneck3_4/dim_red/conv"][0].reshape(32, 128)
    np.testing.assert_allclose(w @ w.T, np.eye(32), atol=1e-5)
    stem = blobs["stem/conv"][0]
    assert stem.std() == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.15)
    mean, var, factor = blobs["stem/bn"]
    assert (mean == 0).all() and (var == 1).all() and factor[0] == 1
    # The initial caffemodel is a usable net: finite, non-degenerate descriptors.
    net = caffe.Net(str(DEPLOY), caffe.TEST, weights=str(out))
    net.blobs["data"].data[...] = np.random.default_rng(0).uniform(0, 255, net.blobs["data"].shape)
    y = net.forward()[net.outputs[0]]
    assert np.isfinite(y).all() and y.std() > 0
    # Same seed, same file.
    init_weights(DEPLOY, tmp_path / "again.caffemodel", seed=3, log=lambda m: None)
    assert (tmp_path / "again.caffemodel").read_bytes() == out.read_bytes()


def test_backbone_from_another_variant_is_copied_by_name(caffe, tmp_path):
    # A "pre-trained" 384x128 model: every layer has the same name and shape as at 160x64.
    strong = tmp_path / "strong.caffemodel"
    init_weights(REPO / "prototxt" / "strong" / "deploy.prototxt", strong, seed=9,
                 log=lambda m: None)
    logs: list[str] = []
    rep = init_weights(DEPLOY, tmp_path / "light.caffemodel", seed=1, source=strong,
                       log=logs.append)
    assert not rep.shape_mismatch and not rep.missing_in_source and len(rep.copied) > 300
    a, b = read_caffemodel(strong), read_caffemodel(tmp_path / "light.caffemodel")
    np.testing.assert_array_equal(a["head/embedding/conv"][0], b["head/embedding/conv"][0])
    assert any(line.startswith("init_weights: from") for line in logs)


def test_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "init_weights.py"), str(DEPLOY),
                        "-o", str(tmp_path / "x.caffemodel"), "--from", str(tmp_path / "none")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "none: no such file" in r.stderr
    assert not (tmp_path / "x.caffemodel").exists()
    (tmp_path / "junk.caffemodel").write_bytes(b"\x00\x01garbage")
    with pytest.raises(TrainingError, match="not a caffemodel"):
        init_weights(DEPLOY, tmp_path / "y.caffemodel", source=tmp_path / "junk.caffemodel",
                     log=lambda m: None)
