"""Backbone pre-training (paper V.ii): class folders, the classification data layer, the
generated pre-training net, a short real `caffe train` run, and the transfer into re-id nets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rmnet.data.classes import load_class_folder
from rmnet.data.market import DatasetError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    from rmnet.data import synthetic

    root = tmp_path_factory.mktemp("pretrain") / "classes"
    synthetic.generate_classes(root, synthetic.SyntheticConfig(train_ids=4, test_ids=1,
                                                               images_per_id=12, seed=2))
    return root


def test_synthetic_class_folder(classes, tmp_path):
    folder = load_class_folder(classes)
    assert folder.num_classes == 4 and len(folder.paths) == 48
    assert np.bincount(folder.labels).tolist() == [12, 12, 12, 12]
    assert folder.classes == sorted(folder.classes)
    # each class folder holds that identity's images (the pid starts every file name)
    for path, label in zip(folder.paths, folder.labels):
        assert Path(path).name.startswith(folder.classes[label] + "_")
    meta = json.loads((classes / "synthetic.json").read_text())
    assert meta["layout"] == "classes" and meta["images"] == 48
    from rmnet.data.synthetic import main

    assert main(["--out", str(tmp_path / "c"), "--classes", "--train-ids", "3",
                 "--images-per-id", "2"]) == 0
    assert load_class_folder(tmp_path / "c").num_classes == 3


def test_class_folder_errors(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.jpg").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"1 class folder\(s\) with images; .* at least 2"):
        load_class_folder(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        load_class_folder(tmp_path / "missing")


def test_batch_plan_is_seeded_and_covers_every_image():
    from layers.classify import BatchPlan, ClassDataConfig

    cfg = ClassDataConfig(root="x", batch_size=5, seed=3)
    a, b = BatchPlan(12, cfg, train=True), BatchPlan(12, cfg, train=True)
    ids_a = np.concatenate([a.batch(i)[0] for i in range(12)])   # 60 = 5 passes over 12
    ids_b = np.concatenate([b.batch(i)[0] for i in range(12)])
    assert np.array_equal(ids_a, ids_b)
    for p in range(5):
        assert sorted(ids_a[12 * p:12 * (p + 1)]) == list(range(12))
    assert not np.array_equal(ids_a[:12], ids_a[12:24])        # a new order each pass
    assert a.batch(3)[1] == b.batch(3)[1] and a.batch(3)[1][0] is not None
    test = BatchPlan(12, cfg, train=False)
    assert test.batch(0)[0].tolist() == [0, 1, 2, 3, 4] and test.batch(0)[1] == [None] * 5
    c = BatchPlan(12, ClassDataConfig(root="x", batch_size=5, seed=4), train=True)
    assert not np.array_equal(c.batch(0)[0], a.batch(0)[0])


def test_pretrain_net_shares_the_backbone_with_the_reid_nets(classes, caffe):
    from generator import render
    from generator.pretrain import render_pretrain

    pre = render_pretrain("light", num_classes=4, root=classes, height=224, width=224)
    deploy = render("light", "deploy")
    names = {layer.name for layer in pre.net.layer}
    backbone = [layer.name for layer in deploy.net.layer
                if not layer.name.startswith("head/") and layer.name not in ("data",
                                                                             "calibration")]
    assert set(backbone) <= names
    types = {layer.name: layer.type for layer in pre.net.layer}
    assert types["class_data"] == "Python" and types["loss"] == "SoftmaxWithLoss"
    ip = [layer for layer in pre.net.layer if layer.name == "pretrain/classifier"][0]
    assert ip.inner_product_param.num_output == 4
    assert not any(layer.type in ("Dropout",) for layer in pre.net.layer)
    assert pre.plan.final_size == (14, 14)            # 224 / 16
    from generator import InputSizeError

    with pytest.raises(InputSizeError):
        render_pretrain("light", num_classes=4, root=classes, height=100, width=100)


def test_pretraining_learns_and_transfers_into_every_variant(classes, tmp_path, caffe, capsys):
    """A short real run at 64x64 (60 iterations): the softmax loss falls; the final caffemodel's backbone
    copies by name into every re-id variant (light: every layer but the head's)."""
    from generator import list_variants, render
    from commands.train import main
    from training.log import read_caffe_log
    from training.pretrain import transfer_preview

    run = tmp_path / "run"
    # 60 iterations: the scaled schedule keeps lr 1e-2 for the first 20 only, so a shorter run
    # learns too little to tell from the batch-to-batch noise.
    assert main(["--pretrain", str(classes), "--size", "64x64", "--iters", "60",
                 "--batch-size", "16", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "copied 338 layer(s)" in out
    its, losses = read_caffe_log(run / "train.log").values("loss")
    assert its[0] == 0 and its[-1] == 60 and np.all(np.isfinite(losses))
    assert np.log(4) - 0.3 < losses[0] < np.log(4) + 0.3       # chance level at the start
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3       # the loss falls
    model = run / "snapshots" / "pretrain_iter_60.caffemodel"
    for variant in list_variants():
        deploy = tmp_path / f"{variant}.prototxt"
        deploy.write_text(render(variant, "deploy").text)
        rep = transfer_preview(model, deploy)
        head = sorted(n for n in rep.missing_in_source)
        assert not rep.shape_mismatch, variant
        assert all(n.startswith("head/") or n == "calibration" for n in head), (variant, head)
        assert len(rep.copied) == 338, variant
    # and through tools/train.py's own --from path into the light train run's init
    from training.run import init_weights

    deploy = tmp_path / "light_deploy.prototxt"
    deploy.write_text(render("light", "deploy").text)
    report = init_weights(deploy, tmp_path / "init.caffemodel", source=model, log=lambda m: None)
    assert len(report.copied) == 338 and "stem/conv" in report.copied
    from rmnet.caffe.caffemodel import read_caffemodel

    a, b = read_caffemodel(tmp_path / "init.caffemodel"), read_caffemodel(model)
    for name in ("stem/conv", "bottleneck4_11/dim_inc/scale", "input_norm/bn"):
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)


def test_pretrain_bad_input_is_one_line(tmp_path, capsys):
    from commands.train import main

    assert main(["--pretrain", str(tmp_path / "nothing"), "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing: no such folder" in err
    with pytest.raises(SystemExit):
        main(["--pretrain", str(tmp_path), "--size", "big"])
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--size", "64x64"])
