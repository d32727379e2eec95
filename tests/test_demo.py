"""`make demo`'s pipeline end to end at toy size (the real run takes ~10 minutes): dataset,
nets, initial weights, untrained score, `caffe train`, trained score, JSON, curves."""
from __future__ import annotations

import json
import subprocess
import sys

from rmnet.data.synthetic import SyntheticConfig, generate
from tests.conftest import REPO


def test_demo_pipeline_on_a_tiny_dataset(tmp_path):
    data = tmp_path / "market"
    generate(data, SyntheticConfig(train_ids=4, test_ids=3, images_per_id=4, seed=2))
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--data", str(data),
                        "--iters", "3", "--batch-size", "8", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in r.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] == (r.returncode == 0)
    assert results["iterations"] == 3
    for key in ("untrained", "trained"):
        m = results[key]
        assert set(m["cmc"]) >= {"1", "5", "10", "20"}
        assert 0 <= m["mAP_official"] <= m["mAP"] <= 1
        assert m["num_valid_queries"] == 6
    assert results["mAP_ratio"] == results["trained"]["mAP"] / results["untrained"]["mAP"]
    assert (out / "run" / "snapshots" / "light_iter_3.caffemodel").is_file()
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mAP (official, trapezoidal)" in r.stdout and str(out / "results.json") in r.stdout


def test_demo_names_a_wrong_dataset(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--data",
                        str(tmp_path / "nowhere"), "--out", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nowhere" in r.stderr and "bounding_box_train" in r.stderr
