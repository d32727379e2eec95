"""The report of tools/gpu_check.py and the rules that keep a run inside its time budget.

A GPU visit is short and the machine is gone afterwards: the JSON report is what comes back.

- ``new_report_path(folder, when)``: ``gpu_check-<UTC time>.json`` in ``folder``, with ``-2``,
  ``-3``... when that name is taken; ``Report.start`` creates it exclusively, so a report never
  replaces an earlier one, not even one a concurrent run wrote in the same second.
- ``Report``: the file is created when the run starts (status "running") and rewritten
  atomically after every check, so a run killed midway (a visit's time limit) still leaves a
  well-formed file saying how far it got and which check was running; ``finish`` writes the
  verdict, exit status and summary line.
- ``budget_decision``: whether an optional part still fits the time budget (else the reason it
  is skipped); ``summary_line``: the one line a run prints last.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rmnet.atomic import atomic_create_text, atomic_write_text

SCHEMA = "rmnet.gpu_check/1"
STATUSES = ("pass", "fail", "skip")             # of a check
VERDICTS = ("pass", "fail", "no-gpu", "error")  # of a run ("running" until it ends)
EXIT = {"pass": 0, "fail": 1, "error": 1, "no-gpu": 3}


def utc_stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def report_name(when: dt.datetime, n: int = 1) -> str:
    return f"gpu_check-{utc_stamp(when)}{'' if n == 1 else f'-{n}'}.json"


def new_report_path(folder: str | os.PathLike, when: dt.datetime) -> Path:
    """The first free report name in ``folder`` for a run started at ``when`` (a name can
    still be taken before it is created: ``Report.start`` retries)."""
    n = 1
    while (Path(folder) / report_name(when, n)).exists():
        n += 1
    return Path(folder) / report_name(when, n)


def project_commit(repo: str | os.PathLike) -> dict:
    """The repository's commit and whether its tracked files differ from it (git), else the
    RMNET_COMMIT environment variable (a copied working tree has no .git), else unknown."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": commit, "dirty": None if status is None else bool(status),
                "source": "git"}
    if os.environ.get("RMNET_COMMIT"):
        return {"commit": os.environ["RMNET_COMMIT"], "dirty": None, "source": "RMNET_COMMIT"}
    return {"commit": None, "dirty": None,
            "source": "unknown (no git repository here and RMNET_COMMIT not set)"}


def host_info() -> dict:
    return {"hostname": platform.node(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "platform": platform.platform()}


@dataclass
class CheckResult:
    """One check of a run: ``status`` pass/fail/skip, ``reason`` one line (what was measured,
    or why it failed or was skipped), ``numbers`` the measurements (JSON-ready), ``short`` its
    part of the summary line."""
    name: str
    status: str
    reason: str
    numbers: dict = field(default_factory=dict)
    wall_s: float = 0.0
    short: str = ""
    traceback: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"check status must be one of {STATUSES}, got {self.status!r}")


def failed_check(name: str, error: BaseException, wall_s: float) -> CheckResult:
    """A check that raised: failed, with the exception as its reason and its traceback."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return CheckResult(name, "fail", f"{type(error).__name__}: {error}", wall_s=wall_s,
                       short=f"{name} raised {type(error).__name__}", traceback=text)


def budget_decision(elapsed_s: float, budget_s: float | None, estimate_s: float,
                    optional: bool = True) -> str | None:
    """None when a part should run; else why it is skipped: an optional part whose estimated
    time no longer fits what is left of the budget (no budget: everything runs; a required
    part always runs)."""
    if budget_s is None or not optional or elapsed_s + estimate_s <= budget_s:
        return None
    return (f"time budget: {elapsed_s / 60:.1f} of {budget_s / 60:.1f} min used, this part "
            f"needs about {estimate_s / 60:.1f} min")


def run_estimate_s(wall_s: float, images: int, images_per_s: float | None,
                   new_images: int) -> float:
    """Seconds a training run of ``new_images`` images should take, from one that took
    ``wall_s`` for ``images`` at a measured ``images_per_s`` (its start-up: the rest of the
    wall time). Without a rate, the wall time scaled by the images."""
    if not images_per_s:
        return wall_s * new_images / images
    startup = max(0.0, wall_s - images / images_per_s)
    return startup + new_images / images_per_s


def verdict_of(checks: list[CheckResult]) -> str:
    return "fail" if any(c.status == "fail" for c in checks) else "pass"


def summary_line(verdict: str, checks: list[CheckResult], report: Path | None,
                 wall_s: float, reason: str = "") -> str:
    """``gpu_check: PASS 4/4 passed, 2 skipped (layers light, ..., nccl: skipped, one GPU)
    123 s; report runs/gpu-check/gpu_check-....json``: the verdict, passed/run, the skips,
    each check's short part, the wall time and the report (if any). ``reason``: why there is
    no GPU."""
    where = f"; report {report}" if report is not None else ""
    if verdict == "no-gpu":
        return f"gpu_check: no GPU: {reason}{where}"
    ran = [c for c in checks if c.status != "skip"]
    passed = [c for c in ran if c.status == "pass"]
    skipped = len(checks) - len(ran)
    counts = f"{len(passed)}/{len(ran)} passed" + (f", {skipped} skipped" if skipped else "")
    parts = ", ".join(c.short or f"{c.name}: {c.status}" for c in checks)
    return f"gpu_check: {verdict.upper()} {counts} ({parts}) {wall_s:.0f} s{where}"


class Report:
    """The run's JSON report: created by ``start``, rewritten by ``add``/``running``,
    completed by ``finish``; ``path`` None writes nothing (no --report)."""

    def __init__(self, path: Path | None, data: dict):
        self.path, self.data = path, data
        self.t0 = time.monotonic()

    @classmethod
    def start(cls, folder: str | os.PathLike | None, argv: list[str], settings: dict,
              repo: str | os.PathLike, when: dt.datetime | None = None) -> Report:
        when = when or dt.datetime.now(dt.timezone.utc)
        data = {"schema": SCHEMA, "status": "running", "exit_code": None, "summary": None,
                "started_utc": when.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
                "finished_utc": None, "wall_s": None, "running": None,
                "argv": list(argv), "settings": settings, "project": project_commit(repo),
                "host": host_info(), "gpu": None, "caffe": None, "checks": []}
        report = cls(None, data)
        if folder is None:
            return report
        for _ in range(100):     # another run may take the free name first
            path = new_report_path(folder, when)
            try:
                atomic_create_text(path, report.text())
            except FileExistsError:
                continue
            report.path = path
            return report
        raise FileExistsError(f"{folder}: no free report name for {utc_stamp(when)}")

    def text(self) -> str:
        return json.dumps(self.data, indent=1, sort_keys=False, default=str) + "\n"

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, self.text())

    def update(self, **values) -> None:
        self.data.update(values)
        self.save()

    def running(self, name: str | None) -> None:
        self.update(running=name)

    def add(self, check: CheckResult) -> None:
        self.data["checks"].append(asdict(check))
        self.data["running"] = None
        self.save()

    def finish(self, verdict: str, summary: str, **values) -> int:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        now = dt.datetime.now(dt.timezone.utc)
        self.data.update(values, status=verdict, exit_code=EXIT[verdict], summary=summary,
                         running=None, wall_s=round(time.monotonic() - self.t0, 1),
                         finished_utc=now.isoformat(timespec="seconds"))
        self.save()
        return EXIT[verdict]

