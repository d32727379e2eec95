"""The learning curve as drawn: the held-out score at each validation point (each snapshot scored
with the real evaluation), and a step learning rate drawn as steps with each change at the
iteration the solver makes it. The series the plot draws are checked, not pixels."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.heldout import ScoresFileError, latest_per_iteration, read_scores, score_snapshots
from training.log import add_heldout, lr_curve, parse_caffe_log, solver_lr
from training.plots import curve_panels
from tests.conftest import REPO
from tests.test_eval_no_train import COLOUR_NET, save_colour_net, write_colour_set

# The start of a `caffe train` log as run_caffe_train writes it: the command line, then Caffe's
# solver parameters (a SolverParameter, one field a line, nested messages in braces).
HEAD = """\
$ caffe train -solver {run}/solver.prototxt -weights {weights}
I1207 08:00:00.000000  1 caffe.cpp:204] Using GPUs 0
I1207 08:00:00.000000  1 solver.cpp:45] Initializing solver from parameters: 
test_iter: 2
test_interval: 40
base_lr: 0.01
display: 20
max_iter: 90
lr_policy: "{policy}"
gamma: 0.1
momentum: 0.9
{steps}
snapshot: 30
snapshot_prefix: "{run}/snapshots/light"
solver_mode: CPU
net: "{run}/train.prototxt"
train_state {{
  level: 0
  stage: "x"
}}
I1207 08:00:00.000000  1 solver.cpp:87] Creating training net from net file: {run}/train.prototxt
"""


def body(lrs: dict[int, float]) -> str:
    lines = []
    for it, lr in lrs.items():
        if it in (0, 40, 80):
            lines += [f"I1207 08:00:01.000000  1 solver.cpp:330] Iteration {it}, Testing net (#0)",
                      f"I1207 08:00:01.000000  1 solver.cpp:397]     Test net output #0: "
                      f"loss/am_softmax = {5 - it / 40} (* 1 = {5 - it / 40} loss)"]
        lines += [f"I1207 08:00:02.000000  1 solver.cpp:218] Iteration {it} (2 iter/s, 10s/20 "
                  f"iters), loss = {9 - it / 20}",
                  f"I1207 08:00:02.000000  1 solver.cpp:237]     Train net output #0: "
                  f"loss/am_softmax = {8 - it / 20} (* 1 = {8 - it / 20} loss)",
                  f"I1207 08:00:02.000000  1 sgd_solver.cpp:105] Iteration {it}, lr = {lr:g}"]
    return "\n".join(lines) + "\n"


# stepsize 30, display 20: lr logged at 0, 20, 40, 60, 80; Caffe changes it at 30 and 60
STEP_LRS = {0: 0.01, 20: 0.01, 40: 0.001, 60: 1e-4, 80: 1e-4}


def step_log(run: str = "/r", weights: str = "/r/init.caffemodel", lrs=STEP_LRS,
             policy: str = "step", steps: str = "stepsize: 30") -> str:
    return HEAD.format(run=run, weights=weights, policy=policy, steps=steps) + body(lrs)


def panel(panels, ylabel):
    return next(p for p in panels if p.ylabel == ylabel)


def test_solver_parameters_and_command_are_read_from_the_log():
    log = parse_caffe_log(step_log())
    assert log.solver["lr_policy"] == "step" and log.solver["stepsize"] == "30"
    assert log.solver["snapshot_prefix"] == "/r/snapshots/light"
    assert "level" not in log.solver and "stage" not in log.solver    # nested: not top level
    assert log.command[:2] == ["caffe", "train"] and "-weights" in log.command
    # the glog line after the block is parsed as usual
    assert log.values("lr") == (list(STEP_LRS), list(STEP_LRS.values()))
    assert log.values("test/loss/am_softmax") == ([0, 40, 80], [5.0, 4.0, 3.0])


def test_newer_glog_prefix_with_the_year_ends_the_parameter_block_too():
    """glog 0.6+ writes I20261207 where older ones wrote I1207 (this project's Caffe does)."""
    old = parse_caffe_log(step_log())
    new = parse_caffe_log(step_log().replace("\nI1207 ", "\nI20261207 "))
    assert new.solver == old.solver and dict(new.series) == dict(old.series)
    assert new.values("lr") == (list(STEP_LRS), list(STEP_LRS.values()))


def test_step_lr_is_drawn_as_steps_changing_where_the_solver_changes_it():
    lr = lr_curve(parse_caffe_log(step_log()))
    assert lr.source == "solver" and lr.drawstyle == "steps-post"
    assert lr.iterations == [0, 30, 60, 80]
    assert lr.values == pytest.approx([0.01, 0.001, 1e-4, 1e-4])
    # the value at any iteration, read off the steps, is Caffe's (changes at 30 and 60, not at
    # the logged 40 and 60, and not a ramp between logged points)
    def drawn(it):
        k = max(i for i, x in enumerate(lr.iterations) if x <= it)
        return lr.values[k]
    assert [drawn(it) for it in (29, 30, 59, 60)] == pytest.approx([0.01, 0.001, 0.001, 1e-4])


def test_multistep_lr_steps_at_each_stepvalue():
    lrs = {0: 0.01, 20: 0.01, 40: 0.001, 60: 0.001, 80: 1e-4}
    log = parse_caffe_log(step_log(lrs=lrs, policy="multistep",
                                   steps="stepvalue: 25\nstepvalue: 70"))
    assert log.solver["stepvalue"] == ["25", "70"]
    assert solver_lr(log.solver, 69) == pytest.approx(0.001)
    lr = lr_curve(log)
    assert lr.source == "solver" and lr.iterations == [0, 25, 70, 80]
    assert lr.values == pytest.approx([0.01, 0.001, 1e-4, 1e-4])


def test_lr_that_disagrees_with_the_parameters_is_drawn_from_the_log_as_steps():
    lrs = {0: 0.001, 20: 0.005, 40: 0.01, 60: 0.01, 80: 0.001}     # a warm-up, say
    lr = lr_curve(parse_caffe_log(step_log(lrs=lrs)))
    assert lr.source == "log" and lr.drawstyle == "steps-post"
    assert lr.iterations == list(lrs) and lr.values == list(lrs.values())
    # a smooth policy: the logged points joined by lines
    lr = lr_curve(parse_caffe_log(step_log(policy="poly", steps="power: 1")))
    assert lr.source == "log" and lr.drawstyle == "default"


def test_heldout_scores_are_a_curve_with_a_point_per_validation_iteration(tmp_path):
    scores = tmp_path / "train.heldout.jsonl"
    recs = [{"iteration": it, "data": "/v", "rank1": r, "mAP": m, "mAP_official": m}
            for it, r, m in ((0, 0.2, 0.25), (30, 0.3, 0.35), (60, 0.4, 0.45), (90, 0.5, 0.55))]
    recs.append(dict(recs[1], mAP=0.36))                      # 30 scored again: the last counts
    recs.append(dict(recs[2], data="/other", mAP=0.9))        # another held-out set: not drawn
    scores.write_text("".join(json.dumps(r) + "\n" for r in recs))
    log = parse_caffe_log(step_log())
    add_heldout(log, latest_per_iteration(read_scores(scores), "/v"))
    panels = curve_panels(log)
    assert [p.ylabel for p in panels] == ["train loss", "held-out score (%)", "test net outputs",
                                          "learning rate"]
    held = {c.label: c for c in panel(panels, "held-out score (%)").curves}
    assert held["held-out mAP"].iterations == [0, 30, 60, 90]
    assert held["held-out mAP"].values == pytest.approx([25, 36, 45, 55])
    assert held["held-out rank-1"].values == pytest.approx([20, 30, 40, 50])
    assert held["held-out mAP"].marker == "o"
    test = panel(panels, "test net outputs").curves
    assert [(c.label, c.iterations) for c in test] == [("loss/am_softmax", [0, 40, 80])]
    # without scores the panel says how to get them
    bare = panel(curve_panels(parse_caffe_log(step_log())), "held-out score (%)")
    assert bare.curves == [] and "--heldout" in bare.empty


def test_a_broken_scores_file_is_named(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"iteration": 1, "rank1": 0.1, "mAP": 0.1, "mAP_official": 0.1}\nnot json\n')
    with pytest.raises(ScoresFileError, match=r"s\.jsonl:2: not a JSON line"):
        read_scores(bad)
    bad.write_text('{"iteration": 1, "rank1": 0.1}\n')
    with pytest.raises(ScoresFileError, match=r"s\.jsonl:1: no numeric mAP, mAP_official"):
        read_scores(bad)


# --- held-out scoring of real snapshots -----------------------------------------------------------

# The descriptor net of the hand-checked evaluation (a 1x1 convolution of the colour, global
# average pooled); its "snapshots" differ in that weight, so their held-out scores differ.
#
# Two identities whose colours differ in blue only; green and red are noise that varies per
# image. Weights that keep blue (and a constant, so that the direction tells blue apart) rank
# perfectly; weights that keep only green and red put each query's twin of the other identity
# first.
IMAGES = {"query/0001_c1s1_000001_00.png": (200, 90, 30),
          "query/0002_c1s1_000002_00.png": (20, 30, 90),
          "bounding_box_test/0001_c2s1_000003_00.png": (210, 30, 90),
          "bounding_box_test/0002_c2s1_000004_00.png": (25, 90, 30),
          "bounding_box_test/0001_c2s1_000005_00.png": (190, 60, 60),
          "bounding_box_test/0002_c2s1_000006_00.png": (30, 60, 60)}


@pytest.fixture()
def run_dir(tmp_path, caffe) -> Path:
    """A run folder: deploy net, snapshots at 30 and 60 and the initial weights, a validation set
    without training split, and a log naming them."""
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    (run / "deploy.prototxt").write_text(COLOUR_NET)
    net = caffe.Net(str(run / "deploy.prototxt"), caffe.TEST)
    noise = np.diag([0.0, 1.0, 1.0])                            # green and red: noise
    save_colour_net(net, run / "init.caffemodel", noise)
    save_colour_net(net, run / "snapshots" / "light_iter_30.caffemodel", noise)
    save_colour_net(net, run / "snapshots" / "light_iter_60.caffemodel",      # blue: identity
                    np.diag([1.0, 0.0, 0.0]), bias=(0.0, 100.0, 0.0))
    write_colour_set(tmp_path / "val", IMAGES)
    (run / "train.log").write_text(step_log(run=str(run), weights=str(run / "init.caffemodel")))
    return run


def test_score_snapshots_scores_each_once_and_appends(run_dir, tmp_path):
    scores = run_dir / "train.heldout.jsonl"
    said = []
    got = score_snapshots(run_dir / "deploy.prototxt", run_dir / "snapshots" / "light",
                          tmp_path / "val", scores, initial=run_dir / "init.caffemodel",
                          log=said.append)
    assert [r["iteration"] for r in got] == [0, 30, 60]
    assert got[2]["mAP"] == pytest.approx(1.0) and got[2]["rank1"] == pytest.approx(1.0)
    assert got[0]["mAP"] < 1.0 and got[0]["mAP"] == pytest.approx(got[1]["mAP"])
    assert len(read_scores(scores)) == 3 and "3 model(s)" in said[0]
    # again: nothing new to score; a new snapshot: only it is scored and appended
    said.clear()
    assert score_snapshots(run_dir / "deploy.prototxt", run_dir / "snapshots" / "light",
                           tmp_path / "val", scores, initial=run_dir / "init.caffemodel",
                           log=said.append) == got
    assert said == [] and len(read_scores(scores)) == 3
    (run_dir / "snapshots" / "light_iter_90.caffemodel").write_bytes(
        (run_dir / "snapshots" / "light_iter_60.caffemodel").read_bytes())
    got = score_snapshots(run_dir / "deploy.prototxt", run_dir / "snapshots" / "light",
                          tmp_path / "val", scores, initial=run_dir / "init.caffemodel",
                          log=said.append)
    assert [r["iteration"] for r in got] == [0, 30, 60, 90] and len(read_scores(scores)) == 4
    # a parsed dataset under a name of its own (a validation split carved in memory, say): its
    # scores are kept apart from those on the root
    from rmnet.data.datasets import load_dataset
    carved = score_snapshots(run_dir / "deploy.prototxt", run_dir / "snapshots" / "light",
                             load_dataset(tmp_path / "val"), scores, data_id="val-split",
                             log=said.append)
    assert [r["iteration"] for r in carved] == [30, 60, 90]
    assert [r["mAP"] for r in carved] == [r["mAP"] for r in got[1:]]
    assert len(read_scores(scores)) == 7
    assert len(latest_per_iteration(read_scores(scores), "val-split")) == 3


def test_plot_training_scores_the_run_and_draws_the_curve(run_dir, tmp_path):
    out = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_training.py"),
                        str(run_dir / "train.log"), "-o", str(out), "--heldout",
                        str(tmp_path / "val")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "held-out mAP at 3 validation points, best 100.0% at iteration 60" in r.stderr
    recs = read_scores(run_dir / "train.heldout.jsonl")       # next to the log, by default
    assert [x["iteration"] for x in recs] == [0, 30, 60]
    assert recs[0]["caffemodel"] == str(run_dir / "init.caffemodel")
    # drawn again from the file alone, without scoring
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_training.py"),
                        str(run_dir / "train.log"), "-o", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "3 validation points" in r.stderr
    assert len(read_scores(run_dir / "train.heldout.jsonl")) == 3


def test_plot_training_names_what_is_missing(run_dir, tmp_path):
    (run_dir / "deploy.prototxt").unlink()
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_training.py"),
                        str(run_dir / "train.log"), "--heldout", str(tmp_path / "val")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no deploy net found" in r.stderr and "--deploy" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "tools" / "plot_training.py"),
                        str(run_dir / "train.log"), "--format", "market"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "--format applies only with --heldout" in r.stderr
