"""End to end at toy size: training on two datasets of different layouts at once with the real
`caffe train` (class count = the sum, identities kept apart), then evaluating the trained model
on a third layout without camera ids (cross-dataset), with both re-ranking conventions and the
verification ROC; and the command line's errors for formats and layouts."""
from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from commands import eval_market
from rmnet.data.datasets import load_train_sets
from rmnet.data.synthetic import SyntheticConfig
from rmnet.data.synthetic_layouts import write_layout
from training.run import (final_snapshot, init_weights, inspect_solver, prepare_run,
                             run_caffe_train)
from tests.conftest import REPO

TINY = {"input": {"height": 64, "width": 32},
        "data": {"images_per_id": 3, "workers": 1, "prefetch": 2},
        "solver": {"test_iter": 1, "display": 1, "average_loss": 1}}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cross")
    write_layout(base / "msmt17", SyntheticConfig(train_ids=3, test_ids=2, images_per_id=4,
                                                  seed=4), "msmt17_v1")
    write_layout(base / "cuhk03", SyntheticConfig(train_ids=4, test_ids=2, images_per_id=4,
                                                  cameras=2, seed=5), "cuhk03")
    write_layout(base / "mine", SyntheticConfig(train_ids=1, test_ids=4, images_per_id=4,
                                                seed=6), "folders-nocam")
    return {"msmt17": base / "msmt17", "cuhk03": base / "cuhk03", "mine": base / "mine",
            "base": base}


def run_eval(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = eval_market.main([str(a) for a in args] + ["--no-progress"])
    return code, out.getvalue(), err.getvalue()


def test_combined_training_then_cross_dataset_evaluation(sets, tmp_path):
    roots = [sets["msmt17"], sets["cuhk03"]]
    formats = ["msmt17", "cuhk03-labeled"]
    paths = prepare_run("light", roots, tmp_path / "run", 4, batch_size=12, extra=TINY,
                        log=lambda m: None, format=formats, trainval=True)
    train_net = Path(paths["solver"]).parent / "train.prototxt"
    text = train_net.read_text()
    # 3 MSMT17 + 4 CUHK03-NP training identities: one classifier of 7 classes
    assert load_train_sets([str(r) for r in roots], formats, trainval=True).num_classes == 7
    # the data layer and both loss layers (AM-Softmax, local structure) have the 7 classes
    assert len(re.findall(r'\\"num_classes\\": 7\b', text)) == 3
    param = json.loads(re.search(r'layer: "MarketDataLayer"\s+param_str: (".*")', text)
                       .group(1).encode().decode("unicode_escape").strip('"'))
    assert param["root"] == [str(r.resolve()) for r in roots]
    assert param["format"] == formats and param["trainval"] is True and param["num_classes"] == 7
    info = inspect_solver(paths["solver"], tmp_path)
    assert info.data_roots == [str(r.resolve()) for r in roots]

    init = tmp_path / "init.caffemodel"
    init_weights(paths["deploy"], init, seed=0, log=lambda m: None)
    log = tmp_path / "train.log"
    run_caffe_train(paths["solver"], log, weights=str(init), max_iter=4, echo=lambda m: None)
    model = final_snapshot(paths["snapshots"] / "light", 4)
    assert model.is_file()
    assert "Iteration 4" in log.read_text()

    # cross-dataset: the combined model on custom folders without camera ids
    out, roc_png, cache = tmp_path / "mine.json", tmp_path / "roc.png", tmp_path / "mine.h5"
    code, stdout, stderr = run_eval("--prototxt", paths["deploy"], "--weights", model,
                                    "--data", sets["mine"], "--json", out, "--roc", roc_png,
                                    "--cache", cache, "--batch", "8")
    assert code == 0, stderr
    res = json.loads(out.read_text())
    assert res["config"]["camera_ids"] is False and res["config"]["same_camera_exclusion"] is False
    assert res["config"]["data_format"] == "folders"
    assert "no camera ids: the same-camera exclusion was not applied" in stdout
    assert set(res["roc"]["tpr_at_fpr"]) == {"0.0001", "0.001", "0.01"}
    assert res["roc"]["num_positive_pairs"] > 0 and roc_png.stat().st_size > 1000
    assert "TPR@FPR=0.01" in stdout
    # the same features, re-ranked in both conventions; each result says which it used
    # (4 test ids x 2 queries, 4 x 4 gallery + 2 junk + 4 distractors)
    results = {}
    for conv in ("authors", "torchreid"):
        j = tmp_path / f"{conv}.json"
        code, stdout, stderr = run_eval("--features", cache, "--rerank", "--k1", "4", "--k2",
                                        "2", "--rerank-convention", conv, "--json", j)
        assert code == 0, stderr
        assert f"{conv} convention" in stdout
        results[conv] = json.loads(j.read_text())
        assert results[conv]["config"]["rerank"]["convention"] == conv
        assert results[conv]["config"]["camera_ids"] is False      # kept in the features file
    assert results["authors"]["config"]["num_gallery"] == 4 * 4 + 2 + 4


def test_command_line_errors(sets, tmp_path):
    def train(*args):
        return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    r = train("--data", f"{sets['msmt17']},{sets['cuhk03']}", "--format", "msmt17,csv,csv",
              "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "3 formats for 2 --data folders" in r.stderr
    r = train("--data", str(sets["msmt17"]), "--format", "viper")
    assert r.returncode == 2 and "--format: one of auto" in r.stderr
    # CUHK03-NP root with both subsets: the format must say which, in one line
    r = train("--data", str(sets["cuhk03"]), "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "pass format cuhk03-labeled or cuhk03-detected" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = train("--data", str(sets["base"]), "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "no known dataset layout" in r.stderr
    code, _, stderr = run_eval("--prototxt", REPO / "prototxt" / "light" / "deploy.prototxt",
                               "--weights", tmp_path / "none.caffemodel", "--data",
                               sets["cuhk03"], "--format", "cuhk03-detected")
    assert code == 2 and "none.caffemodel: no such caffemodel" in stderr
    code, _, stderr = run_eval("--prototxt", REPO / "prototxt" / "light" / "deploy.prototxt",
                               "--weights", REPO / "prototxt" / "light" / "deploy.prototxt",
                               "--data", sets["cuhk03"])
    assert code == 2 and "cuhk03-labeled or cuhk03-detected" in stderr


def test_demo_on_another_layout(sets, tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--data",
                        str(sets["cuhk03"]), "--format", "cuhk03-detected", "--iters", "3",
                        "--batch-size", "8", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    assert "cuhk03-np-detected" in r.stdout
    results = json.loads((out / "results.json").read_text())
    # CUHK03-NP detected, synthetic: 2 test ids x 2 queries, each with a match on the other camera
    assert results["trained"]["num_valid_queries"] == 4
    assert (out / "run" / "snapshots" / "light_iter_3.caffemodel").is_file()
