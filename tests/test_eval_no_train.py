"""Evaluation sets: a dataset with query and gallery but no training split is read by every
format, scored by eval_market, the demo's scoring and quantize (calibrating on its gallery), and
refused with a message naming it by whatever trains. Generated data only (rmnet.data.synthetic
with the training split removed), and a hand-checked metric case on a net whose descriptor is
the image's mean colour."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rmnet.data.datasets import detect_format, load_dataset, load_train_sets
from rmnet.data.market import DatasetError
from rmnet.data.synthetic import SyntheticConfig, generate
from rmnet.data.synthetic_layouts import write_layout
from tests.conftest import REPO
from tests.test_eval_market import run_tool
from tests.test_eval_market import weights as light_weights  # noqa: F401 (a fixture)

LIGHT = REPO / "prototxt" / "light" / "deploy.prototxt"
CFG = SyntheticConfig(train_ids=2, test_ids=5, images_per_id=3, queries_per_id=2, seed=3)


def drop_train(root: Path) -> Path:
    """Remove every training part of a synthetic root (any layout); returns the root."""
    for rel in ("bounding_box_train", "labeled/bounding_box_train",
                "detected/bounding_box_train", "train", "list_train.txt", "list_val.txt"):
        p = root / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no_train")


@pytest.fixture(scope="module")
def full(work) -> Path:
    generate(work / "full", CFG)
    return work / "full"


@pytest.fixture(scope="module")
def evalset(work, full) -> Path:
    shutil.copytree(full, work / "evalset")
    return drop_train(work / "evalset")


def names(records) -> list[str]:
    return [r.name for r in records]


# --- reading ------------------------------------------------------------------------------------

def test_market_root_without_train_split_is_an_evaluation_set(full, evalset):
    assert detect_format(evalset) == "market"
    ds, whole = load_dataset(evalset), load_dataset(full)
    assert ds.train == [] and not ds.has_train and whole.has_train
    assert names(ds.query) == names(whole.query) and names(ds.gallery) == names(whole.gallery)
    assert [(r.pid, r.camid) for r in ds.gallery] == [(r.pid, r.camid) for r in whole.gallery]
    assert "no train split (evaluation only)" in ds.summary()


@pytest.mark.parametrize("layout,fmt", [("cuhk03", "cuhk03-labeled"), ("msmt17_v1", "msmt17"),
                                        ("folders", "folders"), ("csv", "csv")])
def test_every_format_reads_a_root_without_train_split(work, layout, fmt):
    cams = 2 if layout == "cuhk03" else 6
    cfg = SyntheticConfig(train_ids=2, test_ids=3, images_per_id=3, queries_per_id=1,
                          cameras=cams, seed=1)
    root = work / f"l_{layout}"
    write_layout(root, cfg, layout)
    whole = load_dataset(root, fmt)
    drop_train(root)
    if layout == "csv":
        (root / "train.csv").unlink()
        shutil.rmtree(root / "images" / "train")
    ds = load_dataset(root, fmt if layout == "cuhk03" else None)
    assert whole.train and ds.train == []
    assert names(ds.query) == names(whole.query) and names(ds.gallery) == names(whole.gallery)


def test_query_and_gallery_stay_required(work, full):
    for missing in ("query", "bounding_box_test"):
        root = work / f"without_{missing}"
        shutil.copytree(full, root)
        shutil.rmtree(root / missing)
        with pytest.raises(DatasetError, match=f"missing {missing}/"):
            load_dataset(root, "market")


def test_msmt17_validation_list_without_training_list_is_an_error(work):
    root = work / "msmt_val_only"
    write_layout(root, SyntheticConfig(train_ids=2, test_ids=2, images_per_id=3,
                                       queries_per_id=1, seed=2), "msmt17_v1")
    (root / "list_train.txt").unlink()
    with pytest.raises(DatasetError, match="missing list_train.txt"):
        load_dataset(root, "msmt17")


def test_training_needs_a_train_split(evalset, tmp_path):
    with pytest.raises(DatasetError, match="no training split") as e:
        load_train_sets(str(evalset))
    assert str(evalset) in str(e.value)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--data", str(evalset),
                        "--iters", "3", "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert "no training split" in r.stderr and str(evalset) in r.stderr
    assert "Traceback" not in r.stderr


def test_import_openvino_unfold_refuses_an_evaluation_set(evalset):
    from commands.import_openvino import image_list
    from rmnet.deploy.ir_import import IRImportError

    with pytest.raises(IRImportError, match="without a training split"):
        image_list(evalset)


# --- scoring ------------------------------------------------------------------------------------

def test_eval_market_scores_an_evaluation_set_as_the_whole_dataset(work, full, evalset,
                                                                   light_weights):
    scores = {}
    for name, root in (("full", full), ("evalset", evalset)):
        out = work / f"{name}.json"
        code, stdout, stderr = run_tool("--prototxt", LIGHT, "--weights", light_weights,
                                        "--data", root, "--json", out, "--batch", "8")
        assert code == 0, stderr
        scores[name] = json.loads(out.read_text())
    if "no train split" not in stderr:
        pytest.fail(f"the summary does not say the set has no train split: {stderr}")
    for key in ("cmc", "mAP", "mAP_official", "num_valid_queries"):
        assert scores["evalset"][key] == scores["full"][key]
    assert scores["evalset"]["num_valid_queries"] == CFG.test_ids * CFG.queries_per_id


# Hand-checked case: the net's descriptor is the image's mean colour (COLOUR_NET with an
# identity 1x1 convolution, global average pooling),
# so the ranking follows from the colours (BGR) alone, cosine distance.
#   q1 (pid 1) = (200, 20, 20): g1 (pid 1) identical, cos 1; g2 (pid 2) cos 0.246; g3 (pid 1)
#   cos 0.209 -> true matches at ranks 1 and 3: AP (1/1 + 2/3) / 2 = 5/6, rank-1 hit.
#   q2 (pid 2) = (20, 200, 20): g3 cos 0.9999, g2 (its match) cos 0.884, g1 -> AP 1/2, a miss.
#   mAP = (5/6 + 1/2) / 2 = 2/3, rank-1 1/2; mINP (matches / rank of the last one)
#   = (2/3 + 1/2) / 2 = 7/12.
COLOUR_NET = """name: "colour"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 32 dim: 16 } } }
layer { name: "mix" type: "Convolution" bottom: "data" top: "mix"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "mix" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
"""
COLOURS = {"query/0001_c1s1_000001_00.png": (200, 20, 20),
           "query/0002_c1s1_000002_00.png": (20, 200, 20),
           "bounding_box_test/0001_c2s1_000003_00.png": (200, 20, 20),
           "bounding_box_test/0002_c2s1_000004_00.png": (20, 150, 100),
           "bounding_box_test/0001_c2s1_000005_00.png": (20, 200, 25)}


def write_colour_set(root: Path, colours: dict[str, tuple[int, int, int]]) -> Path:
    """An evaluation set of 32x16 single-colour PNGs (BGR), named as ``colours`` says."""
    for rel, bgr in colours.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), np.full((32, 16, 3), bgr, np.uint8))
    return root


def save_colour_net(net, path: Path, weight: np.ndarray, bias=(0.0, 0.0, 0.0)) -> Path:
    """COLOUR_NET's caffemodel with the 1x1 convolution ``weight`` (3x3: out x in colour)."""
    net.params["mix"][0].data[...] = np.asarray(weight, np.float32)[:, :, None, None]
    net.params["mix"][1].data[...] = bias
    net.save(str(path))
    return path


@pytest.fixture(scope="module")
def mean_colour(work, caffe) -> tuple[Path, Path, Path]:
    """(deploy prototxt, caffemodel, evaluation-set root) of the hand-checked case."""
    proto = work / "colour.prototxt"
    proto.write_text(COLOUR_NET)
    weights = save_colour_net(caffe.Net(str(proto), caffe.TEST), work / "colour.caffemodel",
                              np.eye(3))
    return proto, weights, write_colour_set(work / "colours", COLOURS)


def test_hand_checked_metrics_on_an_evaluation_set(work, mean_colour):
    proto, weights, root = mean_colour
    out = work / "colours.json"
    code, stdout, stderr = run_tool("--prototxt", proto, "--weights", weights, "--data", root,
                                    "--json", out, "--max-rank", "3")
    assert code == 0, stderr
    res = json.loads(out.read_text())
    assert res["cmc"]["1"] == pytest.approx(0.5)
    assert res["mAP"] == pytest.approx(2 / 3)
    assert res["mINP"] == pytest.approx(7 / 12)
    assert res["num_valid_queries"] == 2


def test_demo_scoring_path_on_an_evaluation_set(mean_colour):
    from commands.demo import evaluate
    from rmnet.deploy.backends import PycaffeBackend
    from rmnet.eval.evaluate import evaluate_data

    proto, weights, root = mean_colour
    res = evaluate(proto, weights, root, "colours")
    assert res["cmc"]["1"] == pytest.approx(0.5) and res["mAP"] == pytest.approx(2 / 3)
    # the function every entry point goes through, on a root or a parsed dataset
    ev = evaluate_data(PycaffeBackend(proto, weights), load_dataset(root), progress=False)
    assert ev.result.mAP == pytest.approx(2 / 3) and ev.dist.shape == (2, 3)
    with pytest.raises(ValueError, match="format applies to a dataset root"):
        evaluate_data(PycaffeBackend(proto, weights), load_dataset(root), "market")


def test_demo_refuses_to_train_on_an_evaluation_set(evalset, tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--data", str(evalset),
                        "--iters", "3", "--out", str(out)], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no training split" in r.stderr and str(evalset) in r.stderr
    assert "--test-data" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "run").exists()      # stopped before anything was rendered


def test_demo_trains_on_one_set_and_scores_on_an_evaluation_set(full, evalset, tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--data", str(full),
                        "--test-data", str(evalset), "--iters", "6", "--batch-size", "8",
                        "--min-ratio", "0", "--out", str(out)], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"scored on {evalset} (market1501): no train split" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["test_dataset"] == str(evalset) and res["dataset"] == str(full)
    n = CFG.test_ids * CFG.queries_per_id
    assert res["untrained"]["num_valid_queries"] == res["trained"]["num_valid_queries"] == n


# --- quantize -----------------------------------------------------------------------------------

def tiny_onnx(path: Path) -> Path:
    """A small convolutional descriptor net as ONNX: conv 3->8 3x3, ReLU, global average pool,
    at the synthetic images' 128x64 (seeded weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    nodes = [helper.make_node("Conv", ["data", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["feat"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 128, 64])],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 8])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_quantize_calibrates_an_evaluation_set_on_its_gallery(work, evalset, full, capsys):
    pytest.importorskip("nncf")
    import commands.quantize as quant

    ds = load_dataset(evalset)
    records, kind = quant.calibration_records(ds)
    assert records is ds.gallery and kind.startswith("gallery")
    assert quant.calibration_records(load_dataset(full))[0] == load_dataset(full).train
    model = tiny_onnx(work / "tiny.onnx")
    common = ["--model", str(model), "--calib", "4", "--warmup", "1", "--repeats", "1",
              "--min-time", "0.05", "--batches", "2", "--force"]
    js = work / "q.json"
    assert quant.main(common + ["--data", str(evalset), "--out", str(work / "q8"),
                                "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert f"note: {evalset} has no training split: calibrating on its gallery images" in printed
    assert "ACCURACY CHANGE: rank-1" in printed
    report = json.loads(js.read_text())
    assert report["calibration"]["images_from"].startswith("gallery crops")
    assert report["calibration"]["images"] == 4
    assert 0 <= report["int8"]["accuracy"]["mAP"] <= 100
    # --calib-data: the crops from another set's training split
    assert quant.main(common + ["--data", str(evalset), "--calib-data", str(full),
                                "--out", str(work / "q8b"), "--json", str(js)]) == 0
    assert "note:" not in capsys.readouterr().out
    assert json.loads(js.read_text())["calibration"]["images_from"] == "training crops"
