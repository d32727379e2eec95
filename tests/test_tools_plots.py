"""Caffe log parsing, training curves, and the Figure 4 filter ratios."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from training.log import parse_caffe_log
from training.filter_ratio import filter_magnitudes, filter_ratio
from tests.conftest import REPO

LOG = """\
I1123 10:00:00.000000  1 solver.cpp:60] Solving rmnet
I1123 10:00:01.000000  1 solver.cpp:330] Iteration 0, Testing net (#0)
I1123 10:00:02.000000  1 solver.cpp:397]     Test net output #0: loss/am_softmax = 6.5 (* 1 = 6.5 loss)
I1123 10:00:03.000000  1 solver.cpp:218] Iteration 0 (0 iter/s, 2.1s/10 iters), loss = 9.25
I1123 10:00:03.000000  1 solver.cpp:237]     Train net output #0: loss/am_softmax = 6.75 (* 1 = 6.75 loss)
I1123 10:00:03.000000  1 solver.cpp:237]     Train net output #1: loss/center = 0.5 (* 5 = 2.5 loss)
I1123 10:00:03.000000  1 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I1123 10:00:09.000000  1 solver.cpp:218] Iteration 10 (1.6 iter/s, 6.2s/10 iters), loss = 7.5
I1123 10:00:09.000000  1 solver.cpp:237]     Train net output #0: loss/am_softmax = 5.5 (* 1 = 5.5 loss)
I1123 10:00:09.000000  1 solver.cpp:237]     Train net output #1: loss/center = -nan (* 5 = -nan loss)
I1123 10:00:09.000000  1 sgd_solver.cpp:105] Iteration 10, lr = 0.001
I1123 10:00:10.000000  1 solver.cpp:330] Iteration 20, Testing net (#0)
I1123 10:00:11.000000  1 solver.cpp:397]     Test net output #0: loss/am_softmax = 5.0 (* 1 = 5.0 loss)
"""


def test_parse_caffe_log_series():
    log = parse_caffe_log(LOG)
    assert log.values("loss") == ([0, 10], [9.25, 7.5])
    assert log.values("lr") == ([0, 10], [0.01, 0.001])
    assert log.values("train/loss/am_softmax") == ([0, 10], [6.75, 5.5])
    assert log.values("test/loss/am_softmax") == ([0, 20], [6.5, 5.0])
    assert log.first_nan() == (10, "train/loss/center")


def test_plot_training_writes_png(tmp_path):
    (tmp_path / "train.log").write_text(LOG)
    out = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_training.py"),
                        str(tmp_path / "train.log"), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "non-finite train/loss/center at iteration 10" in r.stderr


def test_plot_training_rejects_a_log_without_training(tmp_path):
    (tmp_path / "x.log").write_text("hello\n")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_training.py"),
                        str(tmp_path / "x.log")], capture_output=True, text=True)
    assert r.returncode == 2 and "x.log" in r.stderr and "no training iterations" in r.stderr


def test_filter_ratio_hand_computed():
    w = np.zeros((3, 1, 1, 2), np.float32)
    w[0, 0, 0] = [3, 4]      # l2 5, max 4, l1 3.5
    w[1, 0, 0] = [0, -1]     # l2 1, max 1, l1 0.5
    w[2, 0, 0] = [2, 0]      # l2 2, max 2, l1 1
    np.testing.assert_allclose(filter_magnitudes(w, "l2"), [5, 1, 2])
    assert filter_ratio(w, "l2") == pytest.approx(5.0)
    assert filter_ratio(w, "max") == pytest.approx(4.0)
    assert filter_ratio(w, "l1") == pytest.approx(7.0)
    w[1] = 0
    assert filter_ratio(w) == float("inf")
    with pytest.raises(ValueError, match="norm must be"):
        filter_ratio(w, "l3")


def test_weight_ratio_tool_on_real_caffemodels(caffe, tmp_path):
    proto = tmp_path / "n.prototxt"
    proto.write_text("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
        layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
                convolution_param { num_output: 4 kernel_size: 1 bias_term: false } }
        layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
                convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }
    """)
    models = []
    for k, scale in enumerate([1.0, 100.0]):
        net = caffe.Net(str(proto), caffe.TEST)
        net.params["c1"][0].data[...] = 1.0
        net.params["c1"][0].data[0] *= scale       # ratio 1 or 100
        net.params["c2"][0].data[...] = 1.0
        net.params["c2"][0].data[2] *= 10.0        # ratio 10
        models.append(tmp_path / f"m{k}.caffemodel")
        net.save(str(models[-1]))
    out, js = tmp_path / "fig4.png", tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_weight_ratio.py"),
                        *map(str, models), "--labels", "A", "B", "-o", str(out), "--json", str(js)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    data = json.loads(js.read_text())
    # Ordered by model A's ratios: c1 (1) before c2 (10).
    assert data["layers"] == ["c1", "c2"]
    np.testing.assert_allclose(data["ratios"]["A"], [1.0, 10.0], rtol=1e-5)
    np.testing.assert_allclose(data["ratios"]["B"], [100.0, 10.0], rtol=1e-5)
    assert out.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\x00 not protobuf")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_weight_ratio.py"), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "bad.caffemodel" in r.stderr
