"""Where an OpenVINO model spends its time, per layer and per RMNet block part, and how two
versions of a model (FP32 and INT8) compare part by part.

Why: the INT8 speed-up of RMNet on a CPU is far from uniform. The 1x1 reductions, the shortcut
projections and the head gain from INT8, while the 1x1 expansions of the first stages (few input
channels, then the residual sum and an ELU) and the depthwise convolutions (9 multiply-adds per
output, then an ELU) gain little or nothing: their cost is the ELU (an exponential per output
value, evaluated in float in both precisions) and memory traffic, not the multiply-adds that
INT8 speeds up. ``tools/quantize.py --profile`` prints this table for any model on any machine;
the numbers measured here are in results/ and docs/deployment.md.

``layer_times`` needs OpenVINO; ``layer_group`` and ``compare`` are plain functions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_BLOCK = re.compile(r"^bottleneck(\d+)_\d+/([A-Za-z]+(?:_[a-z]+)*)")


@dataclass(frozen=True)
class LayerTime:
    """One executed node of a compiled model: its kind, kernel and mean time per inference."""
    node_type: str
    exec_type: str
    ms: float


def layer_group(name: str) -> str:
    """The RMNet part a runtime node belongs to, from the layer names the generator emits
    (which the exporter keeps): ``bottleneck2_3/dim_inc/conv/WithoutBiases`` -> ``stage 2
    dim_inc``; ``stem/conv`` -> ``stem``; ``head/expand/conv`` -> ``head``; anything else ->
    its first path component (e.g. ``input_norm``)."""
    m = _BLOCK.match(name)
    if m:
        return f"stage {m.group(1)} {m.group(2)}"
    return name.split("/", 1)[0] or name


def layer_times(model_paths, batch: int, height: int, width: int, threads: int = 1,
                runs: int = 10, warmup: int = 3) -> list[dict[str, LayerTime]]:
    """Mean time per inference of every executed node of each model at ``batch``, from
    OpenVINO's performance counters (PERF_COUNT), in synchronous mode with ``threads`` threads
    (1 = what one stream of THROUGHPUT mode runs on). The models take turns, run by run, so a
    load change on the machine affects all alike. Nodes that take no time (fused into a
    neighbour) are left out. Input: random values in the raw-BGR range (speed does not depend
    on them)."""
    import openvino as ov

    core = ov.Core()
    x = np.random.default_rng(0).uniform(0, 255, (batch, 3, height, width)).astype(np.float32)
    requests = []
    for path in model_paths:
        model = core.read_model(str(path))
        model.reshape([batch, 3, height, width])
        compiled = core.compile_model(model, "CPU", {"PERF_COUNT": "YES",
                                                     "INFERENCE_NUM_THREADS": int(threads),
                                                     "INFERENCE_PRECISION_HINT": "f32"})
        requests.append(compiled.create_infer_request())
    for request in requests:
        for _ in range(warmup):
            request.infer({0: x})
    totals: list[dict[str, float]] = [{} for _ in requests]
    kinds: list[dict[str, tuple[str, str]]] = [{} for _ in requests]
    for _ in range(runs):
        for request, total, kind in zip(requests, totals, kinds):
            request.infer({0: x})
            for p in request.profiling_info:
                ms = p.real_time.total_seconds() * 1e3
                total[p.node_name] = total.get(p.node_name, 0.0) + ms
                kind[p.node_name] = (p.node_type, p.exec_type)
    return [{n: LayerTime(*kind[n], ms=t / runs) for n, t in total.items() if t > 0}
            for total, kind in zip(totals, kinds)]


@dataclass(frozen=True)
class GroupRow:
    """One block part: total time in each model, speed-up (a / b time ratio) and share of b."""
    group: str
    layers: int
    a_ms: float
    b_ms: float

    @property
    def speedup(self) -> float:
        return self.a_ms / self.b_ms if self.b_ms > 0 else float("inf")


def compare(a: dict[str, LayerTime], b: dict[str, LayerTime]) -> list[GroupRow]:
    """Group both models' node times by ``layer_group`` and pair them: one row per group, in
    network order (first appearance in ``a``, then groups only ``b`` has). Nodes only one model
    has (an INT8 reorder, a fused bias) count in their group all the same, so each column adds
    up to its model's total."""
    order: list[str] = []
    sums: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for which, times in enumerate((a, b)):
        for name, t in times.items():
            g = layer_group(name)
            if g not in sums:
                order.append(g)
                sums[g] = [0.0, 0.0]
                counts[g] = 0
            sums[g][which] += t.ms
            if which == 0 or name not in a:
                counts[g] += 1
    return [GroupRow(g, counts[g], sums[g][0], sums[g][1]) for g in order]


def format_comparison(rows: list[GroupRow], a_label: str = "FP32", b_label: str = "INT8",
                      slow: float = 1.15) -> list[str]:
    """The comparison as text lines: one per group, the total, and which groups gain less than
    ``slow``x (with their share of ``b``'s time)."""
    a_total = sum(r.a_ms for r in rows)
    b_total = sum(r.b_ms for r in rows)
    lines = [f"{'part':22s} {'layers':>6s} {a_label + ' ms':>9s} {b_label + ' ms':>9s} "
             f"{'speed-up':>9s} {'share':>6s}"]
    for r in rows:
        share = r.b_ms / b_total if b_total else 0.0
        lines.append(f"{r.group:22s} {r.layers:6d} {r.a_ms:9.3f} {r.b_ms:9.3f} "
                     f"{r.speedup:8.2f}x {share:6.1%}")
    lines.append(f"{'total':22s} {sum(r.layers for r in rows):6d} {a_total:9.3f} "
                 f"{b_total:9.3f} {a_total / b_total if b_total else float('inf'):8.2f}x")
    lagging = [r for r in rows if r.speedup < slow]
    if lagging and b_total:
        share = sum(r.b_ms for r in lagging) / b_total
        lines.append(f"parts under {slow:g}x: {', '.join(r.group for r in lagging)} "
                     f"({share:.0%} of the {b_label} time)")
    return lines
