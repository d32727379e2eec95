"""tools/gpu_check.py's report and time budget, on any machine: the JSON report written and
well-formed without a GPU (exit 3), report names that never replace an earlier report, the
report rewritten after each check and completed when a run breaks, the summary line, the
budget rule that skips optional parts, and usage errors. (The checks themselves need a GPU:
tests/test_gpu.py.)"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys

import pytest

from rmnet.atomic import atomic_create_text
from rmnet.caffe.gpu import gpu_status, nvidia_driver_version
from training.gpucheck_report import (CheckResult, Report, budget_decision, failed_check,
                                      new_report_path, project_commit, run_estimate_s,
                                      summary_line)
from rmnet.paths import REPO as PROJECT
from tests.conftest import REPO

STATUS = gpu_status()
WHEN = dt.datetime(2026, 12, 7, 10, 30, 5, tzinfo=dt.timezone.utc)


def run_check(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/gpu_check.py", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


@pytest.mark.skipif(STATUS.count > 0, reason="this machine has a GPU")
def test_no_gpu_writes_a_complete_report_and_exits_3(tmp_path):
    folder = tmp_path / "new" / "reports"            # created if missing
    out = run_check("--report", str(folder), "--out", str(tmp_path / "work"))
    assert out.returncode == 3, out.stderr
    reports = list(folder.iterdir())
    assert len(reports) == 1 and re.fullmatch(r"gpu_check-\d{8}T\d{6}Z\.json", reports[0].name)
    line = out.stderr.strip().splitlines()
    assert len(line) == 1 and out.stdout == ""
    assert line[0] == f"gpu_check: no GPU: {STATUS.reason}; report {reports[0]}"
    data = json.loads(reports[0].read_text())
    assert data["status"] == "no-gpu" and data["exit_code"] == 3 and data["summary"] == line[0]
    assert data["running"] is None and data["checks"] == []
    assert data["gpu"]["count"] == 0 and data["gpu"]["reason"] == STATUS.reason
    assert isinstance(data["caffe"]["has_nccl"], bool)
    assert data["caffe"]["cuda"] == (STATUS.cudart is not None)
    # the project the tool runs from: git's commit, or unknown in a copied tree with no .git
    assert data["project"] == project_commit(PROJECT)
    assert data["settings"]["budget_min"] == 6.0 and data["settings"]["speed_batch"] == 64
    assert data["argv"][:2] == ["--report", str(folder)]
    assert data["host"]["cpus"] >= 1 and data["wall_s"] >= 0
    assert not list(folder.glob(".*")), "a temporary file was left behind"
    # a second run writes a second report and leaves the first as it was
    first = reports[0].read_bytes()
    assert run_check("--report", str(folder), "--out", str(tmp_path / "work")).returncode == 3
    assert len(list(folder.iterdir())) == 2 and reports[0].read_bytes() == first


def test_report_names_never_replace_an_earlier_report(tmp_path):
    taken = tmp_path / "gpu_check-20261207T103005Z.json"
    taken.write_text("an earlier report\n")
    assert new_report_path(tmp_path, WHEN) == tmp_path / "gpu_check-20261207T103005Z-2.json"
    a = Report.start(tmp_path, [], {}, REPO, when=WHEN)
    b = Report.start(tmp_path, [], {}, REPO, when=WHEN)
    assert (a.path.name, b.path.name) == ("gpu_check-20261207T103005Z-2.json",
                                          "gpu_check-20261207T103005Z-3.json")
    a.finish("pass", "gpu_check: PASS")
    assert taken.read_text() == "an earlier report\n"
    assert json.loads(b.path.read_text())["status"] == "running"
    # a name another process takes between the choice and the creation is not replaced either
    with pytest.raises(FileExistsError, match="gpu_check-20261207T103005Z.json"):
        atomic_create_text(taken, "mine\n")
    assert taken.read_text() == "an earlier report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu_check-20261207T103005Z-2.json", "gpu_check-20261207T103005Z-3.json",
        "gpu_check-20261207T103005Z.json"]


def test_the_report_is_rewritten_after_each_check_and_says_which_one_runs(tmp_path):
    report = Report.start(tmp_path, ["--report", str(tmp_path)], {"iters": 50}, REPO, when=WHEN)
    assert report.data["started_utc"] == "2026-12-07T10:30:05+00:00"

    def on_disk() -> dict:
        return json.loads(report.path.read_text())

    report.running("layers light")
    assert on_disk()["status"] == "running" and on_disk()["running"] == "layers light"
    report.add(CheckResult("layers light", "pass", "ok", {"compared": 700}, wall_s=3.5))
    assert on_disk()["running"] is None
    assert on_disk()["checks"] == [{"name": "layers light", "status": "pass", "reason": "ok",
                                    "numbers": {"compared": 700}, "wall_s": 3.5, "short": "",
                                    "traceback": None}]
    try:
        raise RuntimeError("cudaErrorIllegalAddress")
    except RuntimeError as e:
        broken = failed_check("fd", e, 1.0)
    report.add(broken)
    assert broken.status == "fail" and broken.reason == "RuntimeError: cudaErrorIllegalAddress"
    assert "Traceback" in on_disk()["checks"][1]["traceback"]
    assert report.finish("fail", "gpu_check: FAIL") == 1
    done = on_disk()
    assert done["status"] == "fail" and done["exit_code"] == 1 and done["finished_utc"]
    with pytest.raises(ValueError, match="verdict"):
        report.finish("fine", "")
    with pytest.raises(ValueError, match="check status"):
        CheckResult("fd", "ok", "")
    assert Report.start(None, [], {}, REPO).path is None     # no --report: nothing written


def test_a_run_that_breaks_leaves_an_error_report(tmp_path, monkeypatch, capsys):
    """Whatever breaks outside a check (here the GPU query) still completes the report, with
    the traceback, and the run ends with its summary line and exit status 1."""
    from commands import gpu_check

    def broken(*args):
        raise RuntimeError("the driver went away")

    monkeypatch.setattr(gpu_check, "run_checks", broken)
    assert gpu_check.main(["--report", str(tmp_path), "--out", str(tmp_path / "work")]) == 1
    (path,) = tmp_path.glob("gpu_check-*.json")
    data = json.loads(path.read_text())
    line = f"gpu_check: ERROR RuntimeError: the driver went away; report {path}"
    assert data["status"] == "error" and data["exit_code"] == 1 and data["summary"] == line
    assert "the driver went away" in data["error"]["traceback"]
    assert data["error"]["check"] == "gpu_check"       # broke outside any check
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == line and "Traceback" in err


def checks() -> list[CheckResult]:
    return [CheckResult("layers light", "pass", "", short="layers light"),
            CheckResult("fd", "pass", "", short="fd"),
            CheckResult("training", "pass", "", short="training 50 it: loss matches"),
            CheckResult("speed", "pass", "", short="1234 img/s GPU vs 56 img/s CPU = 22x"),
            CheckResult("layers strong", "skip", "time budget",
                        short="layers strong: skipped, budget"),
            CheckResult("nccl", "skip", "one GPU", short="nccl: skipped, one GPU")]


def test_summary_line():
    line = summary_line("pass", checks(), REPO / "runs/gpu-check/gpu_check-x.json", 301.4)
    assert line == ("gpu_check: PASS 4/4 passed, 2 skipped (layers light, fd, training 50 it: "
                    "loss matches, 1234 img/s GPU vs 56 img/s CPU = 22x, layers strong: skipped, "
                    f"budget, nccl: skipped, one GPU) 301 s; report {REPO}/runs/gpu-check/"
                    "gpu_check-x.json")
    failing = checks()[:2] + [CheckResult("training", "fail", "", short="training 50 it: "
                                          "loss differs"), CheckResult("speed", "pass", "")]
    assert summary_line("fail", failing, None, 12) == (
        "gpu_check: FAIL 3/4 passed (layers light, fd, training 50 it: loss differs, "
        "speed: pass) 12 s")
    assert summary_line("no-gpu", [], None, 0, "no NVIDIA driver loaded (x)") == (
        "gpu_check: no GPU: no NVIDIA driver loaded (x)")


@pytest.mark.parametrize("elapsed, budget, estimate, optional, runs", [
    (0, 360, 120, True, True),          # fits
    (240, 360, 120, True, True),        # fits exactly
    (241, 360, 120, True, False),       # one second over: skipped
    (500, 360, 10, False, True),        # a required part runs even past the budget
    (5000, None, 999, True, True),      # no budget: everything runs
])
def test_budget_decision(elapsed, budget, estimate, optional, runs):
    reason = budget_decision(elapsed, budget, estimate, optional)
    assert (reason is None) == runs
    if not runs:
        assert reason == "time budget: 4.0 of 6.0 min used, this part needs about 2.0 min"


def test_run_estimate_from_a_measured_run():
    # 100 s for 1600 images at 20 images/s: 80 s of images, 20 s of start-up
    assert run_estimate_s(100, 1600, 20.0, 640) == pytest.approx(20 + 32)
    assert run_estimate_s(100, 1600, None, 640) == pytest.approx(40)       # no rate: scaled
    assert run_estimate_s(50, 1600, 20.0, 640) == pytest.approx(32)        # no negative start-up


@pytest.mark.parametrize("args, message", [
    (["--budget-min", "-1"], "--budget-min must be >= 0"),
    (["--budget-min", "nan"], "--budget-min must be >= 0"),
    (["--speed-batch", "30"], "--speed-batch must be a multiple of 4"),
    (["--speed-iters", "5"], "--speed-iters must be >= 20"),
    (["--speed-cpu-iters", "2"], "--speed-cpu-iters must be >= 5"),
    (["--iters", "3"], "--iters must be >= 10"),
    (["--device", "-1"], "--device must be >= 0"),
])
def test_usage_errors(args, message, tmp_path):
    out = run_check(*args, "--report", str(tmp_path / "r"))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()          # refused before any report


def test_a_report_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    out = run_check("--report", str(tmp_path / "file"))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"gpu_check: --report {tmp_path / 'file'}: exists and is "
                                  "not a folder")


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
     "GCC version:  gcc version 12.2.0\n", "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159  Release Build\n",
     "580.159"),
    ("something else\n", None),
])
def test_nvidia_driver_version(tmp_path, text, version):
    (tmp_path / "version").write_text(text)
    assert nvidia_driver_version(str(tmp_path / "version")) == version
    assert nvidia_driver_version(str(tmp_path / "absent")) is None


def test_project_commit_from_the_environment_then_unknown(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f.txt").write_text("one\n")
    monkeypatch.delenv("RMNET_COMMIT", raising=False)
    unknown = project_commit(repo)                  # a copied tree: no .git
    assert unknown["commit"] is None and unknown["source"].startswith("unknown")
    monkeypatch.setenv("RMNET_COMMIT", "abc123")
    assert project_commit(repo) == {"commit": "abc123", "dirty": None, "source": "RMNET_COMMIT"}


@pytest.mark.skipif(shutil.which("git") is None,
                    reason="no git on this machine (a bare root): the git source cannot be made")
def test_project_commit_prefers_git_over_the_environment(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f.txt").write_text("one\n")
    monkeypatch.setenv("RMNET_COMMIT", "abc123")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "f.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    clean = project_commit(repo)                    # git wins over the environment
    assert clean == {"commit": head, "dirty": False, "source": "git"}
    assert re.fullmatch(r"[0-9a-f]{40}", clean["commit"])
    (repo / "f.txt").write_text("two\n")
    assert project_commit(repo)["dirty"] is True
