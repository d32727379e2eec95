"""`make demo`'s pipeline end to end at toy size (the real run takes ~10 minutes): dataset,
nets, initial weights, untrained score, `caffe train`, trained score, JSON, curves."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from commands.demo import verdict
from rmnet.data.synthetic import SyntheticConfig, generate
from tests.conftest import REPO


def test_demo_pipeline_on_a_tiny_dataset(tmp_path):
    data = tmp_path / "market"
    generate(data, SyntheticConfig(train_ids=4, test_ids=3, images_per_id=4, seed=2))
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--data", str(data),
                        "--iters", "3", "--batch-size", "8", "--out", str(out),
                        "--min-ratio", "0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]     # 3 iterations need not learn: no bar
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in r.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] is True and results["min_ratio"] == 0
    assert results["iterations"] == 3
    for key in ("untrained", "trained"):
        m = results[key]
        assert set(m["cmc"]) >= {"1", "5", "10", "20"}
        assert 0 <= m["mAP_official"] <= m["mAP"] <= 1
        assert m["num_valid_queries"] == 6
    assert f"{results['mAP_ratio']:.1f}x (the demo asks for >= 0x): PASS" in r.stdout
    assert (out / "run" / "snapshots" / "light_iter_3.caffemodel").is_file()
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mAP (official, trapezoidal)" in r.stdout and str(out / "results.json") in r.stdout


def test_verdict_by_hand():
    assert verdict(0.10, 0.25, 2.0) == (2.5, True)
    ratio, passed = verdict(0.10, 0.19, 2.0)
    assert ratio == pytest.approx(1.9) and passed is False
    assert verdict(0.10, 0.20, 2.0)[1] is True                 # the bound itself passes
    assert verdict(0.0, 0.01, 2.0) == (0.01 / 1e-12, True)      # nothing before, anything after
    assert verdict(0.0, 0.0, 2.0) == (0.0, False)


def test_demo_names_a_wrong_dataset(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--data",
                        str(tmp_path / "nowhere"), "--out", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nowhere" in r.stderr and "bounding_box_train" in r.stderr
