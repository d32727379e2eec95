"""Read what `caffe train` logs: iterations, learning rate, every train and test output.

Caffe's solver writes glog lines such as::

    I1123 12:00:00.000 123 solver.cpp:218] Iteration 100 (2.5 iter/s, 40s/100 iters), loss = 3.2
    I1123 12:00:00.000 123 solver.cpp:237]     Train net output #0: loss/am_softmax = 2.9 (* 1 = 2.9 loss)
    I1123 12:00:00.000 123 sgd_solver.cpp:105] Iteration 100, lr = 0.01
    I1123 12:00:00.000 123 solver.cpp:330] Iteration 200, Testing net (#0)
    I1123 12:00:00.000 123 solver.cpp:397]     Test net output #0: loss/am_softmax = 3.1 (* 1 = 3.1 loss)

`parse_caffe_log` turns them into per-series lists of (iteration, value), used by
tools/plot_training.py, the demo's training curves and the tests.
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


@dataclass
class CaffeLog:
    """Series keyed by name: 'loss' (total train loss), 'lr', 'train/<output>', 'test/<output>'."""
    series: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))

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
    for line in text.splitlines():
        if m := _ITER_LOSS.search(line):
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
