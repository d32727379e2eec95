"""tools/eval_market.py end to end: a small synthetic Market-1501 and a real (random) caffemodel
of the light deploy net, extracted with pycaffe, cached, re-scored, and fed bad input."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from rmnet.eval.features import read_features
from commands import eval_market
from rmnet.eval.metrics import compute_distance, ranked_gallery
from tests.conftest import REPO

PROTOTXT = REPO / "prototxt" / "light" / "deploy.prototxt"
N_QUERY = 10          # 5 test ids x 2 queries


TOOL = eval_market


def run_tool(*args) -> tuple[int, str, str]:
    """Run eval_market's main in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = TOOL.main([str(a) for a in args] + ["--no-progress"])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval_market")


@pytest.fixture(scope="module")
def data(work) -> Path:
    root = work / "market"
    subprocess.run([sys.executable, "-m", "rmnet.data.synthetic", "--out", str(root),
                    "--train-ids", "1", "--test-ids", "5", "--images-per-id", "3",
                    "--queries-per-id", "2", "--seed", "3"],
                   check=True, cwd=REPO, capture_output=True)
    return root


@pytest.fixture(scope="module")
def weights(work, caffe) -> Path:
    """Random light-net weights with usable BatchNorm statistics (mean 0, variance 1, factor 1:
    a fresh net has factor 0, which Caffe turns into a division by sqrt(eps))."""
    net = caffe.Net(str(PROTOTXT), caffe.TEST)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            layer.blobs[0].data[...] = 0.0
            layer.blobs[1].data[...] = 1.0
            layer.blobs[2].data[...] = 1.0
    path = work / "light.caffemodel"
    net.save(str(path))
    return path


@pytest.fixture(scope="module")
def first_run(work, data, weights):
    cache, out = work / "cache.h5", work / "first.json"
    code, stdout, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", data,
                                    "--cache", cache, "--json", out, "--batch", "8")
    assert code == 0, stderr
    return cache, json.loads(out.read_text()), stdout, stderr


def test_json_keys_and_ranges(first_run):
    _, res, stdout, stderr = first_run
    assert {"cmc", "mAP", "mAP_official", "mINP", "num_valid_queries",
            "num_skipped_queries"} <= set(res)
    assert list(res["cmc"]) == ["1", "5", "10", "20"]
    cmc = list(res["cmc"].values())
    assert all(0 <= v <= 1 for v in cmc) and cmc == sorted(cmc)
    assert 0 < res["mAP_official"] <= res["mAP"] <= 1 and 0 < res["mINP"] <= 1
    assert res["num_valid_queries"] == N_QUERY and res["num_skipped_queries"] == 0
    assert res["config"]["feature_dim"] == 256 and res["config"]["flip"] is False
    assert "mAP (non-interpolated, torchreid)" in stdout
    assert "mAP (official, trapezoidal)" in stdout
    assert "images/s" in stderr


def test_cache_is_reused_without_extracting(first_run, work, data, weights, monkeypatch):
    cache, res, _, _ = first_run
    import rmnet.eval.descriptors

    def boom(*a, **k):
        raise AssertionError("extract() called although the cache matches")

    monkeypatch.setattr(rmnet.eval.descriptors, "extract", boom)
    monkeypatch.setattr(TOOL, "describe", boom)
    monkeypatch.setattr(TOOL, "PycaffeBackend", boom)
    out = work / "second.json"
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", data,
                               "--cache", cache, "--json", out)
    assert code == 0, stderr
    assert "reusing cached features" in stderr
    assert json.loads(out.read_text()) == res


def test_features_file_round_trip(first_run, work, data):
    cache, res, _, _ = first_run
    q, g, attrs = read_features(cache)
    assert q.features.shape == (N_QUERY, 256) and q.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g.features, axis=1), 1.0, rtol=1e-5)
    assert all((data / p).is_file() for p in q.paths + g.paths)
    assert len(attrs["weights_sha256"]) == 64 and attrs["flip"] == 0
    out = work / "from_features.json"
    code, _, stderr = run_tool("--features", cache, "--json", out)
    assert code == 0, stderr
    got = json.loads(out.read_text())
    got.pop("config")
    res = dict(res)
    res.pop("config")
    assert got == res


def test_rerank_and_euclidean_run(first_run, work):
    cache, res, _, _ = first_run
    out = work / "rerank.json"
    code, stdout, stderr = run_tool("--features", cache, "--rerank", "--k1", "6", "--k2", "3",
                                    "--json", out)
    assert code == 0, stderr
    rr = json.loads(out.read_text())
    assert rr["config"]["rerank"] == {"k1": 6, "k2": 3, "lambda": 0.3,
                                     "convention": "authors"}
    assert rr["mAP"] != res["mAP"] and "k-reciprocal re-ranking" in stdout
    out = work / "euclid.json"
    code, _, stderr = run_tool("--features", cache, "--distance", "euclidean", "--json", out)
    assert code == 0, stderr
    # unit-norm features: Euclidean ranks like cosine
    assert json.loads(out.read_text())["mAP"] == pytest.approx(res["mAP"], abs=1e-9)


def test_flip_doubles_dim_and_stale_cache_is_replaced(first_run, work, data, weights):
    cache = first_run[0]
    stale = work / "stale.h5"
    shutil.copy(cache, stale)
    out = work / "flip.json"
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", data,
                               "--cache", stale, "--flip", "--json", out)
    assert code == 0, stderr
    assert "stale features cache" in stderr and "flip differs" in stderr
    assert json.loads(out.read_text())["config"]["feature_dim"] == 512
    q, g, attrs = read_features(stale)
    assert q.features.shape == (N_QUERY, 512) and attrs["flip"] == 1
    np.testing.assert_allclose(np.linalg.norm(q.features, axis=1), 1.0, rtol=1e-5)
    # each half is one view's normalised descriptor, weighing the same (norm 1/sqrt(2)); the
    # first half is the unflipped one, the second differs from it
    a, b = q.features[:, :256], q.features[:, 256:]
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 2 ** -0.5, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 2 ** -0.5, rtol=1e-4)
    q0, _, _ = read_features(cache)
    np.testing.assert_allclose(a * 2 ** 0.5, q0.features, atol=1e-4)
    assert np.abs(a - b).max() > 1e-3


def test_rank_list_png(first_run, work):
    cache = first_run[0]
    png = work / "ranks.png"
    code, _, stderr = run_tool("--features", cache, "--rank-list", png, "--queries", "0,3",
                               "--top-k", "4")
    assert code == 0, stderr
    img = cv2.imread(str(png))
    cell_h, cell_w = TOOL.CELL_H + 2 * TOOL.PAD + 14, TOOL.CELL_W + 2 * TOOL.PAD
    assert img.shape == (2 * cell_h + 6, 5 * cell_w + 12, 3)
    q, g, _ = read_features(cache)
    dist = compute_distance(q.features, g.features, "cosine")
    for row, qi in enumerate((0, 3)):
        _, kinds = ranked_gallery(dist[qi], q.pids[qi], q.camids[qi], g.pids, g.camids, 4)
        for col, kind in enumerate(kinds):
            x = cell_w + 12 + col * cell_w + 1            # inside the left border of the cell
            y = row * (cell_h + 6) + 1
            assert tuple(int(c) for c in img[y, x]) == TOOL.BORDER[int(kind)]


def test_mismatched_caffemodel_is_caught_before_caffe_aborts(work, data, weights):
    from caffe.proto import caffe_pb2
    model = caffe_pb2.NetParameter()
    model.ParseFromString(weights.read_bytes())
    conv = next(layer for layer in model.layer if layer.name == "head/embedding/conv")
    conv.blobs[0].shape.dim[0] = 128                      # another embedding size
    model.layer.remove(next(layer for layer in model.layer if layer.name == "calibration"))
    bad = work / "other.caffemodel"
    bad.write_bytes(model.SerializeToString())
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", bad, "--data", data)
    assert code == 2
    assert str(bad) in stderr and str(PROTOTXT) in stderr
    assert "'head/embedding/conv' blob 0 has shape (128," in stderr
    assert "'calibration' is missing" in stderr
    junk = work / "junk.caffemodel"
    junk.write_bytes(b"\x00\xff" * 100)
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", junk, "--data", data)
    assert code == 2 and f"{junk}: not a caffemodel" in stderr


def _copy_data(data: Path, dst: Path) -> Path:
    shutil.copytree(data, dst)
    return dst


def test_corrupt_and_wrongly_shaped_images_are_named(work, data, weights):
    root = _copy_data(data, work / "corrupt")
    victim = sorted((root / "bounding_box_test").glob("*.jpg"))[4]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:len(raw) // 2])
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", root)
    assert code == 2 and str(victim) in stderr and "truncated" in stderr
    victim.write_bytes(raw)
    wide = sorted((root / "query").glob("*.jpg"))[1]
    cv2.imwrite(str(wide), np.full((40, 200, 3), 128, np.uint8))
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", root)
    assert code == 2 and str(wide) in stderr and "aspect ratio" in stderr


def test_dataset_errors(work, data, weights):
    root = _copy_data(data, work / "broken")
    (root / "query" / "not_a_market_name.jpg").write_bytes(b"x")
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", root)
    assert code == 2 and "not_a_market_name.jpg" in stderr
    shutil.rmtree(root / "query")
    code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", root)
    assert code == 2 and "missing query/" in stderr


def _write_h5(path: Path, edit) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for name, n in (("query", 4), ("gallery", 9)):
            g = f.create_group(name)
            g["features"] = rng.normal(size=(n, 8)).astype(np.float32)
            g["pids"] = np.arange(n) % 3 + 1
            g["camids"] = np.arange(n) % 2 + 1
            g.create_dataset("paths", data=[f"{name}/{i}.jpg" for i in range(n)],
                             dtype=h5py.string_dtype())
        edit(f)
    return path


def test_malformed_features_files(work):
    def short_pids(f):
        del f["gallery/pids"]
        f["gallery/pids"] = np.arange(5)

    good = _write_h5(work / "ok.h5", lambda f: None)
    code, stdout, stderr = run_tool("--features", good)
    assert code == 0, stderr
    bad = _write_h5(work / "short.h5", short_pids)
    code, _, stderr = run_tool("--features", bad)
    assert code == 2
    assert f"{bad}: gallery/pids has shape (5,), but gallery/features has 9 rows" in stderr
    bad = _write_h5(work / "nocam.h5", lambda f: f["query"].pop("camids"))
    code, _, stderr = run_tool("--features", bad)
    assert code == 2 and str(bad) in stderr and "camids" in stderr
    noth5 = work / "plain.h5"
    noth5.write_text("hello")
    code, _, stderr = run_tool("--features", noth5)
    assert code == 2 and f"{noth5}: not an HDF5 file" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_fast_runtime_gives_the_same_features_as_pycaffe(work, data):
    """--runtime auto (OpenVINO here, through an export checked against pycaffe): same
    descriptors within 1e-4, same ranking metrics, and the cache records which runtime.
    (Weights from rmnet.deploy.export.random_caffemodel: outputs of order 1-10, where an absolute
    1e-4 is a meaningful tolerance; the module's raw random weights reach hundreds.)"""
    from rmnet.deploy.export import random_caffemodel
    from rmnet.eval.features import read_features

    weights = random_caffemodel(PROTOTXT, work / "sensible.caffemodel", seed=4)
    results = {}
    for runtime in ("pycaffe", "auto"):
        cache, out = work / f"cache_{runtime}.h5", work / f"{runtime}.json"
        code, _, stderr = run_tool("--prototxt", PROTOTXT, "--weights", weights, "--data", data,
                                   "--cache", cache, "--json", out, "--runtime", runtime)
        assert code == 0, stderr
        results[runtime] = (read_features(cache), json.loads(out.read_text()))
    (q_ref, g_ref, _), res_ref = results["pycaffe"]
    (q, g, attrs), res = results["auto"]
    assert attrs["runtime"] == "auto"
    assert np.abs(q.features - q_ref.features).max() < 1e-4
    assert np.abs(g.features - g_ref.features).max() < 1e-4
    assert res["mAP"] == pytest.approx(res_ref["mAP"], abs=1e-6)
