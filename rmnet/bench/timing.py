"""The timing harness every benchmark shares: timers that size their repeats to a target
duration, round-robin interleaving (so load from other jobs on a shared machine hits every
measured thing alike), medians with spread, and the machine's SGEMM rate as the ceiling.

A ``Timer``'s ``run(n)`` performs n units of ``batch`` images each. ``run_interleaved`` warms
every timer up (at least ``warmup`` units and 0.2 s, then sizes a repeat to about ``min_time``
seconds) and runs repeat r of every timer before repeat r + 1 of any.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def spread(values: list[float]) -> dict:
    """Median, min, max and quartiles of repeated measurements."""
    v = sorted(values)
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else (v[0],) * 3
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q1, "q3": q3,
            "repeats": values}


class Timer:
    """One thing to time: ``run(n)`` performs n units of work of ``batch`` images each."""

    def __init__(self, label: str, run: Callable[[int], None], batch: int, min_units: int = 1):
        self.label, self.run, self.batch, self.min_units = label, run, batch, min_units
        self.units = min_units
        self.rates: list[float] = []

    def warm_up(self, warmup: int, min_time: float) -> None:
        """At least ``warmup`` units and 0.2 s; then size a repeat to about ``min_time`` s."""
        t0 = time.perf_counter()
        done = 0
        while done < max(warmup, self.min_units) or time.perf_counter() - t0 < 0.2:
            self.run(self.min_units)
            done += self.min_units
        per_unit = (time.perf_counter() - t0) / done
        self.units = max(self.min_units, round(min_time / max(per_unit, 1e-9)))

    def repeat(self) -> float:
        """One timed repeat; its images/s is recorded and returned."""
        t = time.perf_counter()
        self.run(self.units)
        rate = self.units * self.batch / (time.perf_counter() - t)
        self.rates.append(rate)
        return rate

    def stats(self) -> dict:
        return {**spread(self.rates), "units_per_repeat": self.units}


def sync_timer(label: str, backend, blob: np.ndarray) -> Timer:
    """Synchronous calls of ``backend.infer`` on one batch."""
    def run(n: int) -> None:
        for _ in range(n):
            backend.infer(blob)
    return Timer(label, run, len(blob))


def async_timer(label: str, backend, blob: np.ndarray) -> Timer:
    """OpenVINO THROUGHPUT mode: an AsyncInferQueue with the plugin's optimal number of
    requests, kept full; a unit is one batch, a repeat waits for all its units."""
    import openvino as ov

    model = backend.model.clone()
    model.reshape([len(blob), 3, *backend.input_hw])
    compiled = backend.core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT",
                                                         "INFERENCE_PRECISION_HINT": "f32"})
    n_req = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, n_req)

    def run(n: int) -> None:
        for _ in range(n):
            queue.start_async({0: blob})
        queue.wait_all()
    timer = Timer(label, run, len(blob), min_units=n_req)
    timer.infer_requests = n_req
    return timer


def run_interleaved(timers: list[Timer], warmup: int, repeats: int, min_time: float,
                    log: Callable[[str], None] = print) -> None:
    """Warm every timer up, then time them round-robin: repeat r of every timer runs before
    repeat r + 1 of any, so a load change on the machine hits all of them alike."""
    for t in timers:
        t.warm_up(warmup, min_time)
    for r in range(repeats):
        for t in timers:
            t.repeat()
        log(f"  repeat {r + 1}/{repeats}: " + ", ".join(
            f"{t.label} {t.rates[-1]:.1f}" for t in timers[:3])
            + (f", ... ({len(timers)} timers)" if len(timers) > 3 else ""))


def measure_sgemm(repeats: int, size: int = 2048) -> dict:
    """numpy float32 size x size matmul rate (OpenBLAS) in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b   # warm-up: thread pool start, page faults
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        rates.append(2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    out = {**spread(rates), "size": size}
    try:
        from threadpoolctl import threadpool_info
        numpy_blas = [i for i in threadpool_info() if "numpy" in i.get("filepath", "")]
        if numpy_blas:
            out["blas"] = {k: numpy_blas[0].get(k) for k in
                           ("internal_api", "version", "architecture", "num_threads")}
    except ImportError:
        pass
    return out
