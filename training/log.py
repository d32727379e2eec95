"""Read what `caffe train` logs: iterations, learning rate, every train and test output.

Caffe's solver writes glog lines such as::

    I1123 12:00:00.000 123 solver.cpp:218] Iteration 100 (2.5 iter/s, 40s/100 iters), loss = 3.2
    I1123 12:00:00.000 123 solver.cpp:237]     Train net output #0: loss/am_softmax = 2.9 (* 1 = 2.9 loss)
    I1123 12:00:00.000 123 sgd_solver.cpp:105] Iteration 100, lr = 0.01
    I1123 12:00:00.000 123 solver.cpp:330] Iteration 200, Testing net (#0)
    I1123 12:00:00.000 123 solver.cpp:397]     Test net output #0: loss/am_softmax = 3.1 (* 1 = 3.1 loss)

`parse_caffe_log` turns them into per-series lists of (iteration, value), used by
tools/plot_training.py, the demo's training curves and the tests. It also keeps the solver
parameters Caffe logs when it starts (``Initializing solver from parameters:`` and the
SolverParameter that follows, one ``key: value`` a line) and the command line
``run_caffe_train`` writes first (``$ caffe train -solver ... -weights ...``).

Caffe logs the learning rate only every ``display`` iterations, so the logged points alone put
a step change anywhere in the ``display`` iterations before the first point that shows it.
``lr_curve`` gives the learning rate as the plot draws it: for the step-shaped policies
(``fixed``, ``step``, ``multistep``) the exact step function from the solver parameters, with
each change at the iteration Caffe makes it (``base_lr * gamma ^ floor(iter / stepsize)``;
``multistep``: one more factor at each ``stepvalue``) once every logged point agrees with it;
otherwise (another policy, a patched schedule, no parameters in the log) the logged points,
drawn as steps for a stepped policy and as a line for the smooth ones (``exp``, ``inv``,
``poly``, ``sigmoid``).

Held-out retrieval scores of the snapshots (training.heldout) join the log as the series
``heldout/rank1``, ``heldout/mAP`` and ``heldout/mAP_official`` (``add_heldout``).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_ITER_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_ITER_LR = re.compile(r"\] Iteration (\d+), lr = (\S+)")
_TESTING = re.compile(r"\] Iteration (\d+), Testing net")
_OUTPUT = re.compile(r"\] +(Train|Test) net output #\d+: (\S+) = (\S+)")
_SOLVER_PARAMS = re.compile(r"\] Initializing solver from parameters:")
_GLOG = re.compile(r"^[IWEF]\d{4}(?:\d{4})? \d\d:")   # I1207 or I20261207 (glog >= 0.6)
_PARAM = re.compile(r"^\s*(\w+): (.+?)\s*$")
STEP_POLICIES = ("fixed", "step", "multistep")


@dataclass
class CaffeLog:
    """Series keyed by name: 'loss' (total train loss), 'lr', 'train/<output>', 'test/<output>'
    (and 'heldout/<metric>' after ``add_heldout``); ``solver``: the top-level solver parameters
    of the last ``Initializing solver`` block (repeated keys such as ``stepvalue`` as lists);
    ``command``: the ``$ ...`` line the log starts with, split into words."""
    series: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    solver: dict[str, str | list[str]] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)

    def values(self, name: str) -> tuple[list[int], list[float]]:
        pts = self.series.get(name, [])
        return [p[0] for p in pts], [p[1] for p in pts]

    def first_nan(self) -> tuple[int, str] | None:
        """(iteration, series) of the first non-finite value, if any."""
        hits = [(it, name) for name, pts in self.series.items() for it, v in pts if v != v
                or v in (float("inf"), float("-inf"))]
        return min(hits) if hits else None


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # glog prints "nan" / "-nan"


def parse_caffe_log(text: str) -> CaffeLog:
    log = CaffeLog()
    train_iter = test_iter = None
    params: dict | None = None     # the solver block being read
    depth = 0
    for line in text.splitlines():
        if params is not None:
            if _GLOG.match(line):
                params = None      # the block ended; the line is parsed below
            else:
                if depth == 0 and (m := _PARAM.match(line)):
                    key, value = m.group(1), m.group(2).strip('"')
                    if key in params:
                        old = params[key]
                        params[key] = (old if isinstance(old, list) else [old]) + [value]
                    else:
                        params[key] = value
                depth += line.count("{") - line.count("}")
                continue
        if line.startswith("$ ") and not log.command:
            log.command = line[2:].split()
        elif _SOLVER_PARAMS.search(line):
            params, depth = {}, 0
            log.solver = params
        elif m := _ITER_LOSS.search(line):
            train_iter = int(m.group(1))
            log.series["loss"].append((train_iter, _num(m.group(2))))
        elif m := _ITER_LR.search(line):
            log.series["lr"].append((int(m.group(1)), _num(m.group(2))))
        elif m := _TESTING.search(line):
            test_iter = int(m.group(1))
        elif m := _OUTPUT.search(line):
            kind, name, value = m.group(1), m.group(2), _num(m.group(3))
            it = train_iter if kind == "Train" else test_iter
            if it is not None:
                log.series[f"{kind.lower()}/{name}"].append((it, value))
    return log


def read_caffe_log(path: str | Path) -> CaffeLog:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Caffe log file")
    return parse_caffe_log(path.read_text(errors="replace"))


def add_heldout(log: CaffeLog, records: list[dict]) -> None:
    """Add held-out scores (training.heldout records, one per iteration) as the series
    ``heldout/rank1``, ``heldout/mAP`` and ``heldout/mAP_official`` (fractions)."""
    for rec in sorted(records, key=lambda r: r["iteration"]):
        for metric in ("rank1", "mAP", "mAP_official"):
            log.series[f"heldout/{metric}"].append((int(rec["iteration"]), float(rec[metric])))


def command_option(log: CaffeLog, option: str) -> str | None:
    """The value of ``option`` (e.g. ``-weights``) on the log's ``$ caffe train`` line."""
    words = log.command
    for i, w in enumerate(words[:-1]):
        if w == option:
            return words[i + 1]
    return None


@dataclass(frozen=True)
class LrCurve:
    """The learning rate as drawn: points and how to join them ("steps-post": each value holds
    until the next point; "default": straight lines). ``source``: "solver" (exact, from the
    logged solver parameters) or "log" (the logged points)."""
    iterations: list[int]
    values: list[float]
    drawstyle: str
    source: str


def solver_lr(params: dict, it: int) -> float | None:
    """Caffe's learning rate at iteration ``it`` for a step-shaped policy (SGDSolver's
    GetLearningRate), None for another policy or incomplete parameters."""
    try:
        base = float(params["base_lr"])
        policy = params.get("lr_policy", "fixed")
        if policy == "fixed":
            return base
        gamma = float(params["gamma"])
        if policy == "step":
            return base * gamma ** (it // int(params["stepsize"]))
        if policy == "multistep":
            values = params.get("stepvalue", [])
            values = [int(v) for v in (values if isinstance(values, list) else [values])]
            return base * gamma ** sum(it >= v for v in values)
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return None


def solver_lr_changes(params: dict, first: int, last: int) -> list[int]:
    """The iterations in (first, last] where a step-shaped policy changes the rate."""
    policy = params.get("lr_policy", "fixed")
    if policy == "step":
        size = int(params["stepsize"])
        return list(range((first // size + 1) * size, last + 1, size))
    if policy == "multistep":
        values = params.get("stepvalue", [])
        values = [int(v) for v in (values if isinstance(values, list) else [values])]
        return sorted({v for v in values if first < v <= last})
    return []


def lr_curve(log: CaffeLog) -> LrCurve:
    """The learning rate series the plot draws (see the module doc)."""
    its, vals = log.values("lr")
    params = log.solver
    policy = params.get("lr_policy", "fixed") if params else None
    if its and policy in STEP_POLICIES:
        exact = [solver_lr(params, it) for it in its]
        if all(e is not None and abs(e - v) <= 1e-4 * max(abs(e), 1e-30)
               for e, v in zip(exact, vals)):
            first, last = its[0], its[-1]
            points = [first] + solver_lr_changes(params, first, last)
            if points[-1] != last:
                points.append(last)            # the last value held to the end of the log
            return LrCurve(points, [solver_lr(params, it) for it in points], "steps-post",
                           "solver")
    stepped = policy is None or policy in STEP_POLICIES
    return LrCurve(its, vals, "steps-post" if stepped else "default", "log")
