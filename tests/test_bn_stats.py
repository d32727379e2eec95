"""tools/bn_stats.py: a trained model's BatchNorm statistics re-estimated on training images,
checked by hand on the first BatchNorm (which sees the raw pixels); every other blob kept bit
for bit; the input model never replaced; an evaluation-only set refused by name."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from commands.bn_stats import main
from rmnet.caffe.caffemodel import read_caffemodel
from rmnet.data.synthetic import SyntheticConfig, generate
from training.run import image_batches, init_weights, train_images
from tests.conftest import REPO

DEPLOY = REPO / "prototxt" / "light" / "deploy.prototxt"


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn_stats")
    data = root / "market"
    generate(data, SyntheticConfig(train_ids=6, test_ids=3, images_per_id=4, seed=3))
    weights = root / "init.caffemodel"
    init_weights(DEPLOY, weights, seed=0)          # BatchNorm statistics at identity
    return weights, data


def test_statistics_are_those_of_the_drawn_images_and_nothing_else_changes(
        caffe, model_and_data, tmp_path, capsys):
    weights, data = model_and_data
    out = tmp_path / "bn.caffemodel"
    assert main(["--prototxt", str(DEPLOY), "--weights", str(weights), "--data", str(data),
                 "-o", str(out), "--batches", "3", "--batch-size", "8", "--seed", "5"]) == 0
    assert "3 batches of 8 (24 distinct of 24 training images" in capsys.readouterr().out
    before, after = read_caffemodel(weights), read_caffemodel(out)
    net = caffe.Net(str(DEPLOY), caffe.TEST)
    types = dict(zip(net._layer_names, (layer.type for layer in net.layers)))
    assert set(after) == {n for n in types if n in before}
    bn = [n for n in after if types[n] == "BatchNorm"]
    assert len(bn) > 100
    for name in after:
        if types[name] != "BatchNorm":
            for a, b in zip(before[name], after[name]):
                assert a.tobytes() == b.tobytes(), name
        else:
            assert not np.array_equal(before[name][0], after[name][0]), name
    # By hand, the first BatchNorm (raw BGR pixels in): Caffe's TRAIN pass adds each batch's
    # channel mean and unbiased variance to a running sum decayed by 0.999, and a count.
    lam, mean, var, count = 0.999, 0.0, 0.0, 0.0
    for blob in image_batches(train_images(data), 160, 64, batch_size=8, batches=3, seed=5):
        x = blob.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
        m = x.shape[1]
        mean = lam * mean + x.mean(axis=1)
        var = lam * var + x.var(axis=1) * m / (m - 1)
        count = lam * count + 1
    got_mean, got_var, got_count = after["input_norm/bn"]
    assert float(got_count.ravel()[0]) == pytest.approx(count, rel=1e-6)
    np.testing.assert_allclose(got_mean / got_count, mean / count, rtol=1e-4)
    np.testing.assert_allclose(got_var / got_count, var / count, rtol=1e-3)


def test_the_input_model_is_never_replaced(model_and_data, tmp_path, capsys):
    weights, data = model_and_data
    mine = tmp_path / "model.caffemodel"
    shutil.copy(weights, mine)
    original = mine.read_bytes()
    assert main(["--prototxt", str(DEPLOY), "--weights", str(mine), "--data", str(data),
                 "-o", str(mine), "--batches", "1", "--batch-size", "4"]) == 2
    assert "is the --weights model" in capsys.readouterr().err
    assert mine.read_bytes() == original


def test_bad_input_is_named(model_and_data, tmp_path, capsys):
    weights, data = model_and_data
    evaluation_only = tmp_path / "eval_only"
    for split in ("query", "bounding_box_test"):
        shutil.copytree(data / split, evaluation_only / split)
    args = ["--prototxt", str(DEPLOY), "--weights", str(weights), "-o", str(tmp_path / "o")]
    assert main(args + ["--data", str(evaluation_only)]) == 2
    err = capsys.readouterr().err
    assert f"{evaluation_only}: no training images" in err and "BatchNorm" in err
    assert main(args + ["--data", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    missing = tmp_path / "missing.caffemodel"
    assert main(["--prototxt", str(DEPLOY), "--weights", str(missing), "--data", str(data),
                 "-o", str(tmp_path / "o")]) == 2
    assert f"--weights {missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(args + ["--data", str(data), "--batch-size", "1"])
