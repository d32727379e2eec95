"""Training with the real `caffe train` command on a tiny synthetic dataset: the loss falls,
resuming before and after the dropout switch keeps the schedule, and bad input stops before
Caffe starts (or, for a NaN, with the iteration and the layer)."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.log import read_caffe_log
from rmnet.data.synthetic import SyntheticConfig, generate
from training.run import (TrainingError, check_weights_fit, init_weights, inspect_solver,
                            prepare_run, read_caffemodel, run_caffe_train, scaled_schedule)
from tests.conftest import REPO

# Small enough for seconds per run: 64x32 input (final map 4x2), 6 identities, batch 12.
TINY = {"input": {"height": 64, "width": 32},
        "data": {"images_per_id": 3, "workers": 1, "prefetch": 2},
        "solver": {"test_iter": 1, "display": 1, "average_loss": 1}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train") / "market"
    generate(root, SyntheticConfig(train_ids=6, test_ids=2, images_per_id=6, seed=1))
    return root


def tiny_run(dataset: Path, run_dir: Path, iters: int, variant: str = "light", **solver) -> dict:
    extra = {k: dict(v) for k, v in TINY.items()}
    extra["solver"].update(solver)
    paths = prepare_run(variant, dataset, run_dir, iters, batch_size=12, extra=extra,
                        log=lambda m: None)
    paths["init"] = run_dir / "init.caffemodel"
    init_weights(paths["deploy"], paths["init"], seed=0, log=lambda m: None)
    return paths


def lrs(log: Path) -> dict[int, float]:
    return {it: lr for it, lr in zip(*read_caffe_log(log).values("lr"))}


def counters(model: Path) -> dict[str, float]:
    blobs = read_caffemodel(model)
    return {name: float(b[-1].ravel()[0]) for name, b in blobs.items()
            if name.endswith("/dropout") or name == "loss/local"}


def test_caffe_train_loss_falls(dataset, tmp_path):
    # Table 2's first row (AM-Softmax, no mining): with mining the reported loss is that of the
    # hardest samples, and smart margins raise the push losses on purpose, so neither falls
    # monotonically in a few dozen iterations.
    paths = tiny_run(dataset, tmp_path / "run", 60, "t2_1_am_softmax", snapshot=60,
                     stepsize=1000)
    run_caffe_train(paths["solver"], tmp_path / "train.log", weights=str(paths["init"]),
                    max_iter=60, echo=lambda m: None)
    its, loss = read_caffe_log(tmp_path / "train.log").values("loss")
    assert its[0] == 0 and its[-1] == 60
    # the data layer's workers end with Caffe without glog's crash report in the log
    text = (tmp_path / "train.log").read_text()
    assert "*** SIGTERM" not in text and "*** Aborted" not in text
    first, last = np.mean(loss[:10]), np.mean(loss[-10:])
    assert last < 0.8 * first, f"total loss did not fall: {first:.3f} -> {last:.3f}"


def test_resume_before_and_after_the_dropout_switch(dataset, tmp_path):
    # 12 iterations: lr 1e-2 (0-3), 1e-3 (4-7), 1e-4 (8-11); dropout off from 8; snapshots 3, 6, 9, 12.
    paths = tiny_run(dataset, tmp_path / "run", 12, snapshot=3)
    solver = paths["solver"]
    schedule = {0: 0.01, 3: 0.01, 4: 0.001, 7: 0.001, 8: 1e-4, 11: 1e-4}
    log = tmp_path / "full.log"
    run_caffe_train(solver, log, weights=str(paths["init"]), max_iter=12, echo=lambda m: None)
    for it, lr in schedule.items():
        assert lrs(log)[it] == pytest.approx(lr), it
    snaps = paths["snapshots"]
    assert set(counters(snaps / "light_iter_6.caffemodel").values()) == {6.0}
    final = counters(snaps / "light_iter_12.caffemodel")
    assert len(final) == 37 and set(final.values()) == {12.0}
    for start in (6, 9):          # before the switch (8), and after it
        state = snaps / f"light_iter_{start}.solverstate"
        resumed_dir = tmp_path / f"resumed_{start}"
        resumed_dir.mkdir()
        # resume into a copy of the snapshots so the two runs do not overwrite each other
        log = tmp_path / f"resume_{start}.log"
        text = solver.read_text().replace(str(snaps), str(resumed_dir))
        (tmp_path / f"solver_{start}.prototxt").write_text(text)
        run_caffe_train(tmp_path / f"solver_{start}.prototxt", log, snapshot=str(state),
                        max_iter=12, echo=lambda m: None)
        seen = lrs(log)
        assert min(seen) == start
        for it, lr in schedule.items():
            if it >= start:
                assert seen[it] == pytest.approx(lr), (start, it)
        resumed = counters(resumed_dir / "light_iter_12.caffemodel")
        assert resumed == final, f"dropout/margin counters after resuming from {start}"
        assert read_caffe_log(log).first_nan() is None


def test_scaled_schedule_keeps_the_papers_proportions():
    s = scaled_schedule(300, {"snapshot": 10000, "test_interval": 5000, "display": 20,
                              "average_loss": 20})
    assert s["solver"]["stepsize"] == 100 and s["solver"]["max_iter"] == 300
    assert s["dropout"]["switch_off_iter"] == 200
    assert s["solver"]["snapshot"] == 150 and s["solver"]["display"] == 15


def run_tool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_missing_solver_and_wrong_dataset_stop_before_caffe(tmp_path):
    r = run_tool("--solver", "solvers/no_such.prototxt")
    assert r.returncode == 2 and "solvers/no_such.prototxt: no such solver file" in r.stderr
    # The committed solver reads data/market1501; point it at a folder that is not Market-1501.
    (tmp_path / "bad").mkdir()
    r = run_tool("--data", str(tmp_path / "bad"), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "bounding_box_train" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1            # one line, not a traceback


def test_committed_solver_names_its_missing_dataset(tmp_path):
    # caffe train -solver solvers/market.prototxt from a checkout without data/market1501
    if (REPO / "data" / "market1501").exists():
        pytest.skip("this checkout has data/market1501")
    with pytest.raises(TrainingError, match="data layer: .*market1501"):
        inspect_solver("solvers/market.prototxt", REPO)


def test_mismatched_caffemodel_is_refused_naming_the_layer(caffe, dataset, tmp_path):
    paths = tiny_run(dataset, tmp_path / "run", 3)
    other = prepare_run("light", dataset, tmp_path / "other", 3, batch_size=12,
                        extra={"backbone": {"embedding_size": 128}, **TINY}, log=lambda m: None)
    init_weights(other["deploy"], tmp_path / "other.caffemodel", log=lambda m: None)
    with pytest.raises(TrainingError, match=r"does not match .*layer 'head/embedding/conv'"):
        check_weights_fit(paths["train"], tmp_path / "other.caffemodel", phase="TRAIN")
    r = run_tool("--data", str(dataset), "--run-dir", str(tmp_path / "run2"), "--iters", "3",
                 "--batch-size", "12", "--weights", str(tmp_path / "other.caffemodel"))
    assert r.returncode == 2 and "head/embedding/conv" in r.stderr
    assert not (tmp_path / "run2" / "train.log").exists()        # Caffe never started


def test_nan_stops_training_with_iteration_and_layer_and_keeps_snapshots(caffe, dataset,
                                                                          tmp_path):
    paths = tiny_run(dataset, tmp_path / "run", 4, snapshot=2)
    run_caffe_train(paths["solver"], tmp_path / "ok.log", weights=str(paths["init"]),
                    max_iter=4, echo=lambda m: None)
    snaps = sorted(paths["snapshots"].iterdir())
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in snaps}
    # Poison one filter of the head: the embedding becomes NaN at the first forward pass. (Not a
    # Scale weight: OpenBLAS's sscal turns x * NaN into 0 there, so the NaN would vanish.)
    net = caffe.Net(str(paths["deploy"]), caffe.TEST, weights=str(paths["init"]))
    net.params["head/embedding/conv"][0].data[0] = np.nan
    net.save(str(tmp_path / "nan.caffemodel"))
    with pytest.raises(TrainingError) as err:
        run_caffe_train(paths["solver"], tmp_path / "nan.log",
                        weights=str(tmp_path / "nan.caffemodel"), max_iter=4, echo=lambda m: None)
    message = str(err.value)
    assert re.search(r"stopped at iteration 0: ValueError: \w+LossLayer: .*NaN", message), message
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in snaps} == digests


def test_resume_continues_the_run_and_keeps_its_log(dataset, tmp_path):
    run = tmp_path / "run"
    base = ["--data", str(dataset), "--run-dir", str(run), "--batch-size", "12"]
    r = run_tool(*base, "--iters", "4")
    assert r.returncode == 0, r.stderr
    # As if killed while writing iteration 4's snapshot: a truncated state file.
    state = run / "snapshots" / "light_iter_4.solverstate"
    state.write_bytes(state.read_bytes()[:7])
    (run / "snapshots" / "light_iter_4.caffemodel").unlink()
    r = run_tool(*base, "--resume")                 # no --iters: the run's own schedule is kept
    assert r.returncode == 0, r.stderr
    assert "continuing the run" in r.stdout and "skipping" in r.stdout
    assert "light_iter_2.solverstate" in r.stdout
    log = (run / "train.log").read_text()
    assert log.count("$ ") == 2 and "Resuming from" in log and "BrokenPipeError" not in log
    its, _ = read_caffe_log(run / "train.log").values("loss")
    assert its[0] == 0 and its[-1] == 4 and 2 in its
    assert (run / "snapshots" / "light_iter_4.caffemodel").is_file()


def test_solver_mode_rejects_options_it_would_ignore():
    r = run_tool("--solver", "solvers/market.prototxt", "--iters", "10")
    assert r.returncode == 2 and "--iters apply with --data" in r.stderr
