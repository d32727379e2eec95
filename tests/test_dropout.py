"""Scheduled dropout: the Python ScheduledDropoutLayer's maths, then, for both it and the project
Caffe's native Dropout option (dropout_param.switch_off_iter, which the generated train nets
use), a finite-difference gradient check through pycaffe with an upstream gradient other than 1,
the switch-off, iter_size, the TEST phase, and the counter surviving a save/load (what
`caffe train -snapshot` relies on)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from layers.dropout import dropout_mask, is_active, keep_scale, mask_seed


def test_mask_is_inverted_dropout_at_the_right_ratio():
    assert keep_scale(0.1) == np.float32(65536 / (65536 - 6554))     # ratio 0.1 -> 6554/65536
    assert abs(keep_scale(0.1) - 1 / 0.9) < 2e-5
    m = dropout_mask((200, 500), 0.1, seed=1)
    assert set(np.unique(m)) == {0.0, keep_scale(0.1)}
    assert (m == 0).mean() == pytest.approx(0.1, abs=0.005)
    assert m.mean() == pytest.approx(1.0, abs=0.01)               # expectation preserved
    np.testing.assert_array_equal(m, dropout_mask((200, 500), 0.1, seed=1))
    assert not np.array_equal(m, dropout_mask((200, 500), 0.1, seed=2))
    np.testing.assert_array_equal(dropout_mask((3, 4), 0.0, seed=1), 1.0)
    with pytest.raises(ValueError):
        dropout_mask((3,), 1.0, seed=0)


def test_schedule_and_seeds():
    assert is_active(0, 5) and is_active(4, 5) and not is_active(5, 5)
    assert is_active(10**9, None)
    assert len({mask_seed(3, 7), mask_seed(3, 8), mask_seed(4, 7)}) == 3


LAYERS = ("python", "native")


def net_file(tmp_path: Path, layer: str = "python", **cfg) -> str:
    """A net Input x -> scheduled dropout -> y, as the Python layer or the native option."""
    if layer == "python":
        drop = f"""type: "Python"
                python_param {{ module: "layers.dropout" layer: "ScheduledDropoutLayer"
                               param_str: '{json.dumps(cfg)}' }}"""
    else:
        switch = cfg.get("switch_off_iter")
        fields = {"dropout_ratio": cfg.get("ratio", 0.1),
                  "switch_off_iter": 2**31 - 1 if switch is None else switch,
                  "iter_size": cfg.get("iter_size", 1), "seed": cfg.get("seed", 0)}
        drop = ('type: "Dropout" dropout_param { '
                + " ".join(f"{k}: {v}" for k, v in fields.items()) + " }")
    text = f"""\
        name: "dropout_test"
        force_backward: true
        layer {{ name: "input" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 dim: 4 dim: 5 }} }} }}
        layer {{ name: "drop" bottom: "x" top: "y"
                param {{ lr_mult: 0 decay_mult: 0 }}
                {drop} }}
    """
    path = tmp_path / "dropout.prototxt"
    path.write_text(textwrap.dedent(text))
    return str(path)


def counter(net) -> int:
    return int(net.params["drop"][0].data.flat[0])


@pytest.mark.parametrize("layer", LAYERS)
def test_gradient_matches_finite_differences(caffe, tmp_path, layer):
    net = net_file(tmp_path, layer, ratio=0.3, switch_off_iter=100, seed=4)
    net = caffe.Net(net, caffe.TRAIN)
    rng = np.random.default_rng(0)
    x = rng.normal(size=net.blobs["x"].data.shape).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32) * 1.7          # upstream gradient, not 1

    def loss(xv: np.ndarray) -> float:
        net.params["drop"][0].data[...] = 7                       # same mask every call
        net.blobs["x"].data[...] = xv
        net.forward()
        return float((net.blobs["y"].data.astype(np.float64) * g).sum())

    loss(x)
    assert (net.blobs["y"].data == 0).mean() == pytest.approx(0.3, abs=0.15)
    net.blobs["y"].diff[...] = g
    net.backward()
    analytic = net.blobs["x"].diff.copy()
    eps = 1e-2
    for idx in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3), (1, 0, 1, 1), (0, 2, 0, 4)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        numeric = (loss(xp) - loss(xm)) / (2 * eps)
        assert analytic[idx] == pytest.approx(numeric, rel=1e-3, abs=1e-4)
    assert (analytic == 0).any() and (analytic != 0).any()


@pytest.mark.parametrize("layer", LAYERS)
def test_switch_off_after_the_configured_iteration(caffe, tmp_path, layer):
    net = caffe.Net(net_file(tmp_path, layer, ratio=0.5, switch_off_iter=3, seed=0), caffe.TRAIN)
    net.blobs["x"].data[...] = 1.0
    dropped = []
    for _ in range(5):
        net.forward()
        dropped.append(bool((net.blobs["y"].data == 0).any()))
    assert dropped == [True, True, True, False, False]
    assert counter(net) == 5
    np.testing.assert_array_equal(net.blobs["y"].data, 1.0)
    net.blobs["y"].diff[...] = 2.5
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, 2.5)          # identity after the switch


@pytest.mark.parametrize("layer", LAYERS)
def test_iter_size_counts_solver_iterations(caffe, tmp_path, layer):
    net = caffe.Net(net_file(tmp_path, layer, ratio=0.5, switch_off_iter=2, iter_size=2, seed=0),
                    caffe.TRAIN)
    net.blobs["x"].data[...] = 1.0
    dropped = []
    for _ in range(6):
        net.forward()
        dropped.append(bool((net.blobs["y"].data == 0).any()))
    assert dropped == [True, True, True, True, False, False]


@pytest.mark.parametrize("layer", LAYERS)
def test_test_phase_is_identity_and_does_not_count(caffe, tmp_path, layer):
    net = caffe.Net(net_file(tmp_path, layer, ratio=0.5, seed=0), caffe.TEST)
    x = np.random.default_rng(1).normal(size=net.blobs["x"].data.shape)
    net.blobs["x"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["y"].data, x, rtol=1e-6)
    assert counter(net) == 0


@pytest.mark.parametrize("layer", LAYERS)
def test_counter_survives_save_and_load(caffe, tmp_path, layer):
    path = net_file(tmp_path, layer, ratio=0.5, switch_off_iter=4, seed=2)
    a = caffe.Net(path, caffe.TRAIN)
    a.blobs["x"].data[...] = 1.0
    for _ in range(3):
        a.forward()
    a.save(str(tmp_path / "snap.caffemodel"))
    a.forward()
    expected_mask_4th = a.blobs["y"].data.copy()
    b = caffe.Net(path, caffe.TRAIN, weights=str(tmp_path / "snap.caffemodel"))
    assert counter(b) == 3
    b.blobs["x"].data[...] = 1.0
    b.forward()                                     # the 4th pass: the mask an unbroken run drew
    np.testing.assert_array_equal(b.blobs["y"].data, expected_mask_4th)
    b.forward()                                     # the 5th: switched off
    np.testing.assert_array_equal(b.blobs["y"].data, 1.0)


def test_bad_config_is_refused(caffe, tmp_path):
    with pytest.raises(Exception, match="ratio"):
        caffe.Net(net_file(tmp_path, ratio=1.5), caffe.TRAIN)
    with pytest.raises(Exception, match="swich_off_iter"):
        caffe.Net(net_file(tmp_path, swich_off_iter=3), caffe.TRAIN)


NATIVE_BAD = """\
name: "bad"
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "x" PARAM
        dropout_param { dropout_ratio: RATIO switch_off_iter: 5 } }
"""


@pytest.mark.parametrize("param, ratio, message", [
    ("", 0.1, "declare it with param { lr_mult: 0 decay_mult: 0 }"),
    ("param { lr_mult: 1 decay_mult: 0 }", 0.1, "declare it with param"),
    ("param { lr_mult: 0 decay_mult: 0 }", 1.0, "dropout_ratio must be in [0, 1)"),
])
def test_native_bad_config_stops_with_the_layer_and_the_fix(caffe, tmp_path, param, ratio,
                                                           message):
    # Caffe's checks abort the process: run the net in a child.
    path = tmp_path / "bad.prototxt"
    path.write_text(NATIVE_BAD.replace("PARAM", param).replace("RATIO", str(ratio)))
    code = f"import caffe; caffe.Net({str(path)!r}, caffe.TRAIN)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "Dropout layer drop" in out.stderr and message in out.stderr, out.stderr[-2000:]


def test_native_counter_is_ignored_by_the_solver(caffe, tmp_path):
    """lr_mult 0 and decay_mult 0: a solver step leaves the count to the layer (one per pass)."""
    net = net_file(tmp_path, "native", ratio=0.5, switch_off_iter=100, seed=1)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}"\nbase_lr: 10\nweight_decay: 0.5\nmomentum: 0.9\n'
                      'lr_policy: "fixed"\nmax_iter: 10\ndisplay: 0\nsnapshot_after_train: false\n')
    s = caffe.SGDSolver(str(solver))
    s.step(3)
    assert counter(s.net) == 3
