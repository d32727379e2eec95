"""Fine-tuning on a tiny synthetic dataset with the real `caffe train`: the freeze stage leaves
every frozen layer bit-for-bit as it was, the rendered solvers give the warm-up schedule and
the decay stage's fixed lower lr, the snapshot is chosen by the validation score among the
second and third stages', tools/finetune.py exits non-zero when the held-out
score drops, and the chosen snapshot is what gets exported."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from commands.finetune import main as finetune_main
from generator.render import is_open
from rmnet.caffe.caffemodel import read_caffemodel
from rmnet.data.datasets import load_dataset
from rmnet.data.synthetic import SyntheticConfig, generate
from rmnet.data.datasets import load_train_sets
from training.finetune import (FinetuneSettings, decay_share, finetune_overrides,
                               images_by_label, imprint_classes, run_stages)
from training.finetune_loop import (FinetuneError, Score, carve_validation, check_out,
                                    choose_snapshot)
from training.log import read_caffe_log
from training.run import init_weights, prepare_run, run_caffe_train
from tests.test_training import TINY

OPEN = ["loss/*", "calibration"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune") / "market"
    generate(root, SyntheticConfig(train_ids=8, test_ids=4, images_per_id=6, seed=3))
    return root


def tiny_finetune(dataset: Path, run_dir: Path, settings: FinetuneSettings,
                  imprint: bool = False) -> dict:
    extra = {k: dict(v) for k, v in TINY.items()}
    overrides = finetune_overrides(settings)
    for key, value in extra.items():
        overrides.setdefault(key, {}).update(value)
    paths = prepare_run("finetune", dataset, run_dir, None, batch_size=12, extra=overrides,
                        log=lambda m: None)
    paths["init"] = run_dir / "init.caffemodel"
    init_weights(paths["deploy"], paths["init"], seed=0, log=lambda m: None)
    if imprint:
        imprint_classes(paths["deploy"], paths["init"],
                        images_by_label(load_train_sets(str(dataset))), paths["init"],
                        log=lambda m: None)
    return paths


def test_freeze_stage_leaves_the_backbone_bit_equal(dataset, tmp_path):
    paths = tiny_finetune(dataset, tmp_path / "run",
                          FinetuneSettings(iters=2, freeze_backbone_iters=5, head_lr=0.05,
                                           snapshot_every=2, decay_iters=0), imprint=True)
    snaps = run_stages(paths, paths["init"], 5, 2, echo=lambda m: None)
    assert [(stage, it) for stage, it, _ in snaps] == [("full", 2)]   # no decay stage asked
    before = read_caffemodel(paths["init"])
    frozen = read_caffemodel(paths["snapshots"] / "finetune_freeze_iter_5.caffemodel")
    after = read_caffemodel(snaps[-1][2])
    closed = [n for n in before if not is_open(n, OPEN) and n != "market_data"]
    assert len(closed) > 300          # every convolution, BatchNorm and Scale of the net
    for name in closed:
        for a, b in zip(before[name], frozen[name]):
            assert a.tobytes() == b.tobytes(), f"{name} changed in the freeze stage"
    # imprinted: each class weight is a unit vector; then the open layers trained
    table = before["loss/am_softmax"][0]
    assert table.shape == (8, 256)
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1, atol=1e-5)
    for name in ("loss/am_softmax", "loss/local", "calibration"):
        assert not np.array_equal(before[name][0], frozen[name][0]), name
    # and the second stage trains the backbone (its BatchNorm statistics stay: kept)
    assert not np.array_equal(frozen["stem/conv"][0], after["stem/conv"][0])
    assert np.array_equal(frozen["stem/bn"][0], after["stem/bn"][0])
    freeze_net = paths["train_freeze"].read_text()
    assert 'type: "Dropout"' not in freeze_net and "use_global_stats: true" in freeze_net


def test_rendered_solvers_give_the_warmup_and_decay_schedule(dataset, tmp_path):
    paths = tiny_finetune(dataset, tmp_path / "run",
                          FinetuneSettings(iters=8, lr=0.002, warmup_iters=6,
                                           freeze_backbone_iters=3, head_lr=0.03,
                                           snapshot_every=4, decay_iters=5, decay_factor=0.25))
    freeze_solver = paths["solver_freeze"].read_text()
    assert 'lr_policy: "fixed"' in freeze_solver and "max_iter: 3" in freeze_solver
    solver = paths["solver"].read_text()
    assert 'lr_policy: "sigmoid"' in solver and "stepsize: 3" in solver
    # the decay solver: base_lr x factor, fixed, its own length and prefix, the all-layers net
    from rmnet.caffe.protos import read_solver
    decay, full = read_solver(paths["solver_decay"]), read_solver(paths["solver"])
    assert decay.base_lr == pytest.approx(0.002 * 0.25) and decay.lr_policy == "fixed"
    assert decay.max_iter == 5 and decay.snapshot == 4 and decay.net == full.net
    assert decay.snapshot_prefix == full.snapshot_prefix + "_decay"
    snaps = run_stages(paths, paths["init"], 3, 8, echo=lambda m: None, decay_iters=5)
    assert [(stage, it) for stage, it, _ in snaps] == [("full", 4), ("full", 8), ("decay", 4),
                                                        ("decay", 5)]
    assert snaps[-1][2].name == "finetune_decay_iter_5.caffemodel" and snaps[-1][2].is_file()
    run = paths["solver"].parent
    freeze_lr = dict(zip(*read_caffe_log(run / "train_freeze.log").values("lr")))
    assert set(freeze_lr) == {0, 1, 2} and set(freeze_lr.values()) == {0.03}
    lr = dict(zip(*read_caffe_log(run / "train.log").values("lr")))
    assert sorted(lr) == list(range(8))
    gamma = 10 / 6
    for it, value in lr.items():
        assert value == pytest.approx(0.002 / (1 + math.exp(-gamma * (it - 3))), rel=1e-4), it
    assert lr[0] < 0.0002 and lr[6] > 0.00198 and lr[7] > lr[6]
    decay_lr = dict(zip(*read_caffe_log(run / "train_decay.log").values("lr")))
    assert sorted(decay_lr) == list(range(5))
    assert list(decay_lr.values()) == [pytest.approx(0.0005, rel=1e-6)] * 5
    # it started from the all-layers stage's last caffemodel (weights only: iteration 0)
    assert "finetune_iter_8.caffemodel" in (run / "train_decay.log").read_text()


def test_decay_settings_are_checked_and_scale_with_iters(dataset, tmp_path):
    from generator import load_variant
    from rmnet.config import ConfigError
    # --decay-iters 0: the old two stages, no decay solver rendered
    paths = tiny_finetune(dataset, tmp_path / "two", FinetuneSettings(iters=4, decay_iters=0))
    assert "solver_decay" not in paths and not (tmp_path / "two" / "solver_decay.prototxt"
                                                ).exists()
    # left unset, the decay stage keeps the variant's share of --iters
    assert decay_share(900, 400, 800) == 450 and decay_share(10, 0, 800) == 0
    assert decay_share(1, 100, 1000) == 1
    variant = load_variant("finetune").config
    want = decay_share(600, variant["decay"]["iters"], variant["solver"]["max_iter"])
    assert finetune_overrides(FinetuneSettings(iters=600))["decay"]["iters"] == want
    assert finetune_overrides(FinetuneSettings(iters=600, decay_iters=7))["decay"]["iters"] == 7
    # bad values: the config refuses them, as it refuses an unknown key
    for bad in ({"factor": 1.0}, {"factor": 0}, {"iters": -1}, {"steps": 3}):
        with pytest.raises(ConfigError, match="decay"):
            load_variant("finetune", overrides={"decay": bad})


def test_snapshot_choice_follows_the_validation_score():
    def s(m, r1=50.0):
        return Score(rank1=r1, rank5=80.0, mAP=m, queries=10)
    curve = [(0, "freeze end", s(30)), (100, "full", s(42)), (200, "full", s(47)),
             (300, "full", s(44))]
    assert choose_snapshot(curve) == 2
    # a tie on mAP goes to rank-1, then to the earlier snapshot
    curve = [(100, "full", s(40, 55)), (200, "full", s(40, 60)), (300, "full", s(40, 60))]
    assert choose_snapshot(curve) == 1
    # the decay stage's snapshots are candidates like any other
    curve = [(100, "full", s(40)), (200, "full", s(45)), (300, "decay", s(49)),
             (400, "decay", s(48))]
    assert choose_snapshot(curve) == 2
    with pytest.raises(FinetuneError):
        choose_snapshot([])


def test_validation_split_is_carved_from_training_identities(dataset):
    ds = load_dataset(dataset)
    train, query, gallery = carve_validation(ds, 3, seed=1)
    val_ids = {r.pid for r in query}
    assert len(val_ids) == 3 and {r.pid for r in gallery} == val_ids
    assert val_ids <= set(ds.train_pids) and not val_ids & {r.pid for r in train}
    assert not val_ids & {r.pid for r in ds.query}             # never the test split
    assert len(train) + len(query) + len(gallery) == len(ds.train)
    assert carve_validation(ds, 3, seed=1)[1] == query          # seeded
    assert {r.pid for r in carve_validation(ds, 3, seed=2)[1]} != val_ids or True
    with pytest.raises(FinetuneError, match="validation identities"):
        carve_validation(ds, 7, seed=0)


def test_refuses_an_output_folder_with_something_in_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(FinetuneError, match="not an empty folder"):
        check_out(tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def start_model(dataset, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny deploy net and a caffemodel trained for a moment on the synthetic people: a model
    that scores well above chance, to fine-tune."""
    return _trained(dataset, tmp_path_factory.mktemp("start"), 40)


@pytest.fixture(scope="module")
def oracle_model(dataset, tmp_path_factory) -> tuple[Path, Path]:
    """A model trained on the test identities themselves (a folder linking the test split's
    images as a training split): it scores near the top on the test split, so fine-tuning it
    on the other identities, too fast, can only lose."""
    from training.finetune_loop import link_split
    ds = load_dataset(dataset)
    tests = [r for r in ds.query + ds.gallery if r.pid > 0]
    root = link_split(tmp_path_factory.mktemp("oracle") / "market", tests, ds.query,
                      [r for r in ds.gallery if r.pid > 0])
    return _trained(root, tmp_path_factory.mktemp("oracle_run"), 60)


def _trained(root: Path, run: Path, iters: int) -> tuple[Path, Path]:
    extra = {k: dict(v) for k, v in TINY.items()}
    extra["solver"].update(snapshot=iters, stepsize=1000)
    paths = prepare_run("t2_1_am_softmax", root, run, iters, batch_size=12, extra=extra,
                        log=lambda m: None)
    init_weights(paths["deploy"], run / "init.caffemodel", seed=0, log=lambda m: None)
    run_caffe_train(paths["solver"], run / "train.log", weights=str(run / "init.caffemodel"),
                    max_iter=iters, echo=lambda m: None)
    return paths["deploy"], paths["snapshots"] / f"t2_1_am_softmax_iter_{iters}.caffemodel"


def finetune_cli(dataset, out, start, *extra) -> int:
    deploy, weights = start
    return finetune_main([str(weights), "--prototxt", str(deploy), "--data", str(dataset),
                          "--out", str(out), "--val-ids", "3", "--batch-size", "12",
                          *extra])


def test_finetune_command_exports_the_chosen_snapshot(dataset, tmp_path, start_model, capsys):
    out = tmp_path / "out"
    code = finetune_cli(dataset, out, start_model, "--iters", "6", "--snapshot-every", "2",
                        "--freeze-backbone-iters", "2", "--warmup-iters", "2", "--lr", "0.002",
                        "--decay-iters", "0")
    report = json.loads((out / "finetune.json").read_text())
    assert code == (1 if report["worse"] else 0)
    assert [p["iteration"] for p in report["curve"]] == [0, 2, 4, 6]
    assert report["chosen"]["decay_iters"] == 0 and not (out / "work" / "run" /
                                                         "solver_decay.prototxt").exists()
    vals = [p["val"]["mAP"] for p in report["curve"]]
    best = report["curve"][int(np.argmax(vals))]
    assert report["chosen"]["iteration"] == best["iteration"]
    assert report["after"]["val"]["mAP"] == pytest.approx(max(vals))
    # the exported files are the chosen snapshot: the same weights, the same descriptors
    chosen = read_caffemodel(report["chosen"]["caffemodel"])
    exported = read_caffemodel(out / "model" / "finetuned.caffemodel")
    for name, blobs in chosen.items():
        if name in exported:
            for a, b in zip(blobs, exported[name]):
                assert a.tobytes() == b.tobytes(), name
    assert (out / "model" / "finetuned.onnx").is_file() and (out / "model" /
                                                                "finetuned.xml").is_file()
    import onnxruntime
    from rmnet.deploy.backends import PycaffeBackend
    ref = PycaffeBackend(out / "model" / "deploy.prototxt", out / "model" / "finetuned.caffemodel")
    blob = np.random.default_rng(0).uniform(0, 255, (2, 3, 64, 32)).astype(np.float32)
    sess = onnxruntime.InferenceSession(str(out / "model" / "finetuned.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: blob})[0].reshape(2, -1)
    np.testing.assert_allclose(got, ref.infer(blob), atol=1e-3, rtol=1e-3)
    assert (out / "finetune.png").stat().st_size > 10_000
    assert "before" in (out / "finetune.txt").read_text()
    # the output folder is now the user's: a second run into it is refused
    assert finetune_cli(dataset, out, start_model, "--iters", "2") == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_finetune_command_scores_and_can_choose_the_decay_stage(dataset, tmp_path, start_model,
                                                                monkeypatch):
    # three stages: the decay stage's snapshots join the validation curve, on one iteration
    # axis; when the choice falls on one of them (forced here: which snapshot wins on a tiny
    # synthetic run is chance), that caffemodel is the one scored on the test split and exported
    import training.finetune_loop as loop
    picked = []
    monkeypatch.setattr(loop, "choose_snapshot",
                        lambda curve: picked.append(len(curve) - 1) or len(curve) - 1)
    out = tmp_path / "out"
    finetune_cli(dataset, out, start_model, "--iters", "2", "--snapshot-every", "2",
                 "--freeze-backbone-iters", "1", "--warmup-iters", "1", "--lr", "0.002",
                 "--decay-iters", "3", "--decay-factor", "0.5")
    report = json.loads((out / "finetune.json").read_text())
    assert [(p["iteration"], p["stage"]) for p in report["curve"]] == [
        (0, "freeze end"), (2, "full"), (4, "decay"), (5, "decay")]
    assert picked == [3]
    chosen = report["chosen"]
    assert (chosen["stage"], chosen["iteration"], chosen["decay_iters"]) == ("decay", 5, 3)
    assert Path(chosen["caffemodel"]).name == "finetune_decay_iter_3.caffemodel"
    assert report["after"]["val"] == report["curve"][-1]["val"]
    a, b = (read_caffemodel(p)["stem/conv"][0] for p in
            (chosen["caffemodel"], out / "model" / "finetuned.caffemodel"))
    assert a.tobytes() == b.tobytes()
    decay_solver = (out / "work" / "run" / "solver_decay.prototxt").read_text()
    assert "base_lr: 0.001" in decay_solver and "max_iter: 3" in decay_solver
    assert "chosen: decay iteration 5" in (out / "finetune.txt").read_text()
    # bad decay values stop at the command line
    for bad in (("--decay-iters", "-1"), ("--decay-factor", "0"), ("--decay-factor", "1"),
                ("--decay-factor", "2.5")):
        with pytest.raises(SystemExit) as e:
            finetune_cli(dataset, tmp_path / "bad", start_model, *bad)
        assert e.value.code == 2


def test_finetune_command_exits_non_zero_when_the_test_score_drops(dataset, tmp_path,
                                                                    oracle_model, capsys):
    # a model that knows the test identities, fine-tuned on others at a learning rate far too
    # high with no freeze stage: it loses on the test split, and says so
    out = tmp_path / "out"
    code = finetune_cli(dataset, out, oracle_model, "--iters", "4", "--snapshot-every", "2",
                        "--freeze-backbone-iters", "0", "--warmup-iters", "0", "--lr", "0.5",
                        "--batchnorm", "batch", "--decay-iters", "0")
    report = json.loads((out / "finetune.json").read_text())
    assert report["worse"] and report["after"]["test"]["mAP"] < report["before"]["test"]["mAP"]
    assert code == 1
    captured = capsys.readouterr()
    assert "WORSE" in captured.out and "WORSE" in captured.err


def test_train_finetune_runs_the_three_rendered_stages(dataset, tmp_path):
    # tools/train.py --finetune: the run folder holds the three solvers, and `caffe train` ran
    # each
    import subprocess
    import sys

    from tests.conftest import REPO
    start = tmp_path / "start.caffemodel"
    init_weights(REPO / "prototxt" / "light" / "deploy.prototxt", start, seed=1,
                 log=lambda m: None)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--finetune",
                        "--data", str(dataset), "--from", str(start), "--run-dir", str(run),
                        "--iters", "2", "--freeze-backbone-iters", "2", "--snapshot-every", "2",
                        "--warmup-iters", "1", "--batch-size", "12", "--lr", "0.002",
                        "--decay-iters", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for name in ("solver_freeze.prototxt", "train_freeze.prototxt", "solver.prototxt",
                 "train_freeze.log", "train.log", "snapshots/finetune_freeze_iter_2.caffemodel",
                 "snapshots/finetune_iter_2.caffemodel", "solver_decay.prototxt",
                 "train_decay.log", "snapshots/finetune_decay_iter_1.caffemodel"):
        assert (run / name).is_file(), name
    assert "imprinting: 8 classes" in r.stdout
    # the freeze stage started from the imported weights, unchanged in its frozen layers
    a = read_caffemodel(start)["stem/conv"][0]
    b = read_caffemodel(run / "snapshots" / "finetune_freeze_iter_2.caffemodel")["stem/conv"][0]
    assert a.tobytes() == b.tobytes()
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--data",
                        str(dataset), "--lr", "0.1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--lr apply with --finetune" in r.stderr
