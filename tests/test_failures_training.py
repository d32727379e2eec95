"""Training under failure: a killed trainer leaves no orphaned Caffe, one run has one trainer,
Ctrl-C leaves a complete log and a resumable snapshot, a Python layer's config error reaches the
console as its one-line message, and flags that cannot apply are refused."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmnet.data.synthetic import SyntheticConfig, generate
from training.run import (RunLock, TrainingError, init_weights, prepare_run, run_caffe_train,
                             usable_snapshot)
from tests.conftest import REPO

TOOL = [sys.executable, str(REPO / "tools" / "train.py")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("failures") / "market"
    generate(root, SyntheticConfig(train_ids=6, test_ids=2, images_per_id=6, seed=1))
    return root


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*TOOL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def children(pid: int) -> list[int]:
    """Child processes of every thread of ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:       # the thread ended meanwhile
            pass
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def training_started(log: Path) -> bool:
    """The solver has run its first iteration (the log's first 'Iteration 0 (...), loss')."""
    return log.exists() and "] Iteration 0 (" in log.read_text()


def test_sigkill_of_the_trainer_stops_caffe_within_seconds(dataset, tmp_path):
    run = tmp_path / "run"
    proc = start("--data", str(dataset), "--run-dir", str(run), "--iters", "5000",
                 "--batch-size", "8")
    try:
        wait_for(lambda: training_started(run / "train.log"), 300, "caffe's first iterations")
        kids = children(proc.pid)
        assert kids, "caffe train is not a child of tools/train.py"
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not any(alive(k) for k in kids), 10, "caffe to die with its parent")
    finally:
        proc.kill()
        for k in children(proc.pid):
            os.kill(k, signal.SIGKILL)


def test_a_second_trainer_on_the_same_run_is_refused(dataset, tmp_path):
    run = tmp_path / "run"
    with RunLock(run / ".train.lock"):
        r = subprocess.run([*TOOL, "--data", str(dataset), "--run-dir", str(run), "--iters",
                            "4", "--batch-size", "8"], capture_output=True, text=True,
                           timeout=300)
    assert r.returncode == 2
    assert f"another trainer (pid {os.getpid()}) is running this run" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (run / "train.log").exists()            # nothing of the run was touched
    # released with its holder: the same lock can be taken again
    with RunLock(run / ".train.lock"):
        pass


def test_the_lock_is_held_per_open_file_and_names_its_holder(tmp_path):
    with RunLock(tmp_path / "x.lock"):
        with pytest.raises(TrainingError, match=rf"pid {os.getpid()}"):
            with RunLock(tmp_path / "x.lock"):
                pass


def test_ctrl_c_leaves_a_complete_log_and_a_resumable_snapshot(dataset, tmp_path):
    run = tmp_path / "run"
    proc = start("--data", str(dataset), "--run-dir", str(run), "--iters", "5000",
                 "--batch-size", "8")
    try:
        wait_for(lambda: training_started(run / "train.log"), 300, "caffe's first iterations")
        proc.send_signal(signal.SIGINT)          # as `kill -INT`: only the trainer gets it
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("train: interrupted")]
    assert len(line) == 1 and "--resume" in line[0], err
    log = (run / "train.log").read_text()
    assert "Snapshotting solver state" in log and "Optimization stopped early" in log
    states = sorted((run / "snapshots").glob("*.solverstate"))
    assert states and str(states[-1]) in line[0]
    assert usable_snapshot(states[-1]) is None          # complete: --resume can take it


@pytest.mark.parametrize("value,needle", [
    ('{"margin": 0.35, "num_classes": 6, "scale": 30.0, "margin_typo": 1}',
     "unknown param_str key 'margin_typo'"),                                      # unknown key
    ('{"margin": 0.35, "num_classes": 6, "scale": "big"}',
     "param_str key 'scale' must be a number"),                                   # wrong type
    ('{"margin": 0.35, "num_classes": 6, "scale": -1}', "'scale' must be > 0"),   # out of range
])
def test_a_python_layer_config_error_reaches_the_console(dataset, tmp_path, value, needle):
    paths = prepare_run("t2_1_am_softmax", dataset, tmp_path / "run", 2, batch_size=8,
                        extra={"input": {"height": 64, "width": 32}}, log=lambda m: None)
    init = tmp_path / "init.caffemodel"
    init_weights(paths["deploy"], init, log=lambda m: None)
    good = '{"margin": 0.35, "num_classes": 6, "scale": 30.0, "seed": 0}'
    quoted = lambda s: s.replace('"', '\\"')                       # noqa: E731
    text = paths["train"].read_text()
    assert text.count(quoted(good)) == 1
    paths["train"].write_text(text.replace(quoted(good), quoted(value)))
    with pytest.raises(TrainingError) as e:
        run_caffe_train(paths["solver"], tmp_path / "train.log", weights=str(init),
                        max_iter=2, echo=lambda m: None)
    msg = str(e.value)
    assert "rmnet.config.ConfigError: AMSoftmaxLossLayer:" in msg and needle in msg, msg
    assert "caffe exited with code" not in msg


def test_flags_that_cannot_apply_are_refused(dataset, tmp_path):
    r = subprocess.run([*TOOL, "--data", str(dataset), "--batch-size", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--batch-size must be >= 1" in r.stderr
    run = tmp_path / "run"
    prepare_run("light", dataset, run, 6, batch_size=8, log=lambda m: None)
    r = subprocess.run([*TOOL, "--data", str(dataset), "--run-dir", str(run), "--resume",
                        "--iters", "10", "--batch-size", "4"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ("--iters 10 (the run has 6), --batch-size 4 (the run has 8) cannot change it"
            in r.stderr)


def test_a_data_layer_param_str_that_is_not_json_is_one_line(dataset, tmp_path):
    paths = prepare_run("light", dataset, tmp_path / "run", 2, batch_size=8, log=lambda m: None)
    text = paths["train"].read_text()
    start_ = text.index('param_str: "{', text.index('layer: "MarketDataLayer"'))
    paths["train"].write_text(text[:start_] + 'param_str: "{not json"' +
                              text[text.index("\n", start_):])
    solver = paths["solver"]
    r = subprocess.run([*TOOL, "--solver", str(solver)], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "param_str is not valid JSON" in r.stderr and "train.prototxt" in r.stderr


def test_a_killed_caffe_is_reported_with_the_likely_cause(dataset, tmp_path):
    import threading
    paths = prepare_run("t2_1_am_softmax", dataset, tmp_path / "run", 5000, batch_size=8,
                        extra={"input": {"height": 64, "width": 32}}, log=lambda m: None)
    init = tmp_path / "init.caffemodel"
    init_weights(paths["deploy"], init, log=lambda m: None)
    log = tmp_path / "train.log"
    before = set(children(os.getpid()))
    failure: list[BaseException] = []

    def train() -> None:
        try:
            run_caffe_train(paths["solver"], log, weights=str(init), max_iter=5000,
                            echo=lambda m: None)
        except BaseException as e:      # noqa: BLE001 - handed to the test thread
            failure.append(e)
    t = threading.Thread(target=train)
    t.start()
    try:
        wait_for(lambda: training_started(log), 300, "caffe's first iterations")
        (caffe_pid,) = set(children(os.getpid())) - before
        os.kill(caffe_pid, signal.SIGKILL)          # what the kernel's OOM killer does
        t.join(timeout=60)
    finally:
        for k in set(children(os.getpid())) - before:
            os.kill(k, signal.SIGKILL)
    assert failure and isinstance(failure[0], TrainingError)
    assert "killed (SIGKILL), most likely by the kernel for want of memory" in str(failure[0])


@pytest.mark.parametrize("how", ["data", "solver"])
def test_a_training_set_with_no_readable_image_is_refused_before_caffe(tmp_path, how):
    root = tmp_path / "market"
    generate(root, SyntheticConfig(train_ids=3, test_ids=2, images_per_id=3, seed=2))
    train = sorted((root / "bounding_box_train").glob("*.jpg"))
    for p in train:
        p.write_bytes(p.read_bytes()[:200])                  # cut before the image data ends
    run = tmp_path / "run"
    if how == "data":
        args = ["--data", str(root), "--run-dir", str(run), "--iters", "4"]
    else:                                                    # a run rendered while it was fine
        good = tmp_path / "good"
        generate(good, SyntheticConfig(train_ids=3, test_ids=2, images_per_id=3, seed=2))
        prepare_run("light", good, run, 4, log=lambda *_: None)
        for f in ("solver.prototxt", "train.prototxt", "test.prototxt"):
            p = run / f
            if p.exists():
                p.write_text(p.read_text().replace(str(good.resolve()), str(root.resolve())))
        args = ["--solver", str(run / "solver.prototxt")]
    start_time = time.monotonic()
    r = subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert f"{root.resolve()}: all {len(train)} training images are unreadable" in line
    assert "Traceback" not in r.stderr and time.monotonic() - start_time < 60
    assert not list(run.rglob("*.caffemodel")) and not list(run.rglob("*.solverstate"))
    assert "Iteration" not in "".join(p.read_text() for p in run.rglob("*.log"))
