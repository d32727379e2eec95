"""The checks of tools/gpu_check.py, as functions: Caffe's GPU code against its CPU code.
(In training, not rmnet.caffe: it builds nets with training.run's data-layer swap.)

- ``compare_modes``: one train net (its data layer swapped for inputs of fixed random images
  and labels) run forward and backward in two modes with the same weights; every blob's values
  and gradients and every parameter gradient compared, i.e. every layer's forward and
  backward. The Python layers (losses, scheduled dropout) run on the host in both modes, so the
  comparison measures Caffe's own layers.
- ``finite_difference``: one native layer type (those the train nets use: Convolution dense,
  1x1 and depthwise, BatchNorm, Scale, ELU, ReLU, Pooling, Eltwise) in a tiny net whose
  objective is sum(layer output x fixed random weights); its analytic input and parameter
  gradients against central differences.

Both take a ``mode`` ("cpu" or "gpu"), so the suite runs them on the CPU here (where the
comparison is CPU against CPU) and gpu_check on a GPU. Seeds fix every random value.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORWARD_TOL = 2e-3    # max |a - b| / max |a| per blob, values
BACKWARD_TOL = 1e-2   # the same for gradients (BatchNorm's backward amplifies rounding)
FD_TOL = 3e-2         # finite differences in float32: relative to the gradient's scale


def set_mode(mode: str, device: int = 0) -> None:
    import caffe

    if mode == "gpu":
        caffe.set_device(device)
        caffe.set_mode_gpu()
    elif mode == "cpu":
        caffe.set_mode_cpu()
    else:
        raise ValueError(f"mode must be cpu or gpu, got {mode!r}")


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| scaled by the larger of max |a|, max |b| (0 for two zero blobs)."""
    scale = max(float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)))
    if scale == 0:
        return 0.0
    return float(np.abs(a - b).max(initial=0)) / scale


@dataclass(frozen=True)
class BlobDiff:
    what: str        # "value"/"gradient" of a blob, or "param gradient"
    name: str        # blob or layer[i]
    error: float     # rel_error
    tolerance: float
    abs_error: float = 0.0   # max |a - b|

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def _inputs_net(prototxt: str | Path, batch: int):
    """The train net's NetParameter with inputs instead of the data layer, at ``batch``."""
    from training.run import without_data_layer

    net_param = without_data_layer(prototxt, drop_feedback=True)
    for layer in net_param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    return net_param


def _run(net_param, mode: str, device: int, feed: dict[str, np.ndarray],
         params: dict[str, list[np.ndarray]] | None):
    from rmnet.caffe.pycaffe import net_from_param

    set_mode(mode, device)
    net = net_from_param(net_param, "TRAIN")
    set_mode(mode, device)          # net_from_param leaves pycaffe in CPU mode
    if params is None:
        params = {k: [b.data.copy() for b in v] for k, v in net.params.items()}
    for k, v in net.params.items():
        for blob, value in zip(v, params[k]):
            blob.data[...] = value
    for k, value in feed.items():
        net.blobs[k].data[...] = value
    net.forward()
    net.backward()
    values = {k: b.data.copy() for k, b in net.blobs.items()}
    grads = {k: b.diff.copy() for k, b in net.blobs.items()}
    pgrads = {f"{k}[{i}]": b.diff.copy() for k, v in net.params.items() for i, b in enumerate(v)}
    return params, values, grads, pgrads


def compare_modes(prototxt: str | Path, modes: tuple[str, str] = ("cpu", "gpu"),
                  batch: int = 8, images_per_id: int = 4, seed: int = 0,
                  device: int = 0) -> list[BlobDiff]:
    """Every blob's value and gradient and every parameter gradient of the train net
    ``prototxt`` after one forward/backward in ``modes[0]`` and ``modes[1]``."""
    net_param = _inputs_net(prototxt, batch)
    rng = np.random.default_rng(seed)
    inputs = [layer for layer in net_param.layer if layer.type == "Input"][0]
    tops = list(inputs.top)
    shape = tuple(inputs.input_param.shape[0].dim)
    feed = {tops[0]: rng.uniform(0, 255, shape).astype(np.float32)}
    extra = {1: (np.arange(batch) // images_per_id).astype(np.float32),   # label
             2: np.ones(batch, np.float32),                                # sample_weight
             3: np.arange(batch, dtype=np.float32)}                        # sample_id
    for i, name in enumerate(tops[1:], 1):
        feed[name] = extra.get(i, np.zeros(batch, np.float32))
    params, va, ga, pa = _run(net_param, modes[0], device, feed, None)
    _, vb, gb, pb = _run(net_param, modes[1], device, feed, params)
    def diff(what: str, name: str, a: np.ndarray, b: np.ndarray, tol: float) -> BlobDiff:
        return BlobDiff(what, name, rel_error(a, b), tol,
                        float(np.abs(a - b).max(initial=0)))

    out = [diff("value", k, va[k], vb[k], FORWARD_TOL) for k in va]
    out += [diff("gradient", k, ga[k], gb[k], BACKWARD_TOL) for k in ga]
    out += [diff("param gradient", k, pa[k], pb[k], BACKWARD_TOL) for k in pa]
    return out


# --- finite differences on the native layers ------------------------------------------------

@dataclass(frozen=True)
class LayerCase:
    name: str
    layer: str                    # the layer's prototxt body (type and params), bottom "x" top "y"
    shape: tuple[int, ...]        # of x


NATIVE_CASES = [
    LayerCase("conv3x3", 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
              'pad: 1 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }',
              (2, 3, 6, 5)),
    LayerCase("conv1x1", 'type: "Convolution" convolution_param { num_output: 5 kernel_size: 1 '
              'bias_term: false weight_filler { type: "gaussian" std: 0.3 } }', (2, 4, 5, 4)),
    LayerCase("depthwise3x3s2", 'type: "Convolution" convolution_param { num_output: 4 group: 4 '
              'kernel_size: 3 pad: 1 stride: 2 bias_term: false weight_filler { type: "gaussian" std: 0.3 } }',
              (2, 4, 7, 6)),
    LayerCase("batchnorm", 'type: "BatchNorm" batch_norm_param { use_global_stats: false }',
              (4, 3, 3, 3)),
    LayerCase("scale", 'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" std: 0.5 } '
              'bias_filler { type: "gaussian" std: 0.5 } }', (2, 3, 4, 4)),
    LayerCase("elu", 'type: "ELU" elu_param { alpha: 1.0 }', (2, 3, 4, 4)),
    LayerCase("relu", 'type: "ReLU"', (2, 3, 4, 4)),
    LayerCase("maxpool", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
              (2, 3, 6, 4)),
    LayerCase("avepool_global", 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
              (2, 3, 5, 4)),
]


def _case_prototxt(case: LayerCase, shape_y: tuple[int, ...] | None = None) -> str:
    dims = " ".join(f"dim: {d}" for d in case.shape)
    text = (f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'
            f'layer {{ name: "layer" bottom: "x" top: "y" {case.layer} }}\n')
    if shape_y is not None:
        ydims = " ".join(f"dim: {d}" for d in shape_y)
        text += (f'layer {{ name: "r" type: "Input" top: "r" input_param {{ shape {{ {ydims} }} }} }}\n'
                 'layer { name: "prod" type: "Eltwise" bottom: "y" bottom: "r" top: "yr" '
                 'eltwise_param { operation: PROD } }\n'
                 'layer { name: "obj" type: "Reduction" bottom: "yr" top: "obj" '
                 'reduction_param { operation: SUM } loss_weight: 1 }\n')
    return text


def _net(text: str):
    import caffe

    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write("force_backward: true\n" + text)
        f.flush()
        return caffe.Net(f.name, caffe.TRAIN)


@dataclass(frozen=True)
class FDResult:
    case: str
    mode: str
    error: float         # worst |analytic - numeric| / gradient scale, inputs and parameters
    checked: int         # values perturbed

    @property
    def ok(self) -> bool:
        return self.error <= FD_TOL


def finite_difference(case: LayerCase, mode: str = "cpu", device: int = 0, seed: int = 0,
                      samples: int = 12, eps: float = 1e-2) -> FDResult:
    """The layer's gradients w.r.t. its input and parameters against central differences of
    sum(y * r), at ``samples`` random positions of each."""
    import caffe

    set_mode(mode, device)
    caffe.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    shape_y = _net(_case_prototxt(case)).blobs["y"].data.shape
    net = _net(_case_prototxt(case, tuple(shape_y)))
    x = rng.normal(0, 1, case.shape).astype(np.float32)
    r = rng.normal(0, 1, shape_y).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["r"].data[...] = r

    def objective() -> float:
        net.blobs["x"].data[...] = x
        net.blobs["r"].data[...] = r
        net.forward()
        return float(net.blobs["obj"].data.flat[0])

    objective()
    net.backward()
    # (name, current values, analytic gradient, set values): a parameter is written through a
    # fresh `blob.data` each time, which moves its memory's head to the host, so a GPU forward
    # copies the change over (a kept numpy view would be stale on the device).
    targets = [("x", x.copy(), net.blobs["x"].diff.copy(), lambda v: x.__setitem__(..., v))]
    for i, blob in enumerate(net.params.get("layer", [])):
        if case.name == "batchnorm":
            break                      # its blobs are running statistics, not learnt
        targets.append((f"param{i}", blob.data.copy(), blob.diff.copy(),
                        lambda v, b=blob: b.data.__setitem__(..., v)))
    worst, checked = 0.0, 0
    for _, base, grad, assign in targets:
        scale = max(float(np.abs(grad).max(initial=0)), 1e-3)
        for j in rng.choice(base.size, size=min(samples, base.size), replace=False):
            values = base.copy()
            values.reshape(-1)[j] += eps
            assign(values)
            up = objective()
            values.reshape(-1)[j] -= 2 * eps
            assign(values)
            down = objective()
            assign(base)
            numeric = (up - down) / (2 * eps)
            worst = max(worst, abs(numeric - float(grad.reshape(-1)[j])) / scale)
            checked += 1
    return FDResult(case.name, mode, worst, checked)


def loss_curve(log: str | Path) -> list[tuple[int, float]]:
    """(iteration, smoothed loss) pairs of a Caffe training log."""
    import re

    pat = re.compile(r"\] Iteration (\d+) \(.*\), loss = (\S+)|\] Iteration (\d+), loss = (\S+)")
    out = []
    for line in Path(log).read_text(errors="replace").splitlines():
        if m := pat.search(line):
            it, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            out.append((int(it), float(value)))
    return out


def images_per_second(log: str | Path, batch: int, skip: int = 5) -> float | None:
    """Training images/s from a Caffe log's timestamps, between the ``skip``-th and the last
    "Iteration N" lines with a loss (start-up excluded)."""
    import re

    pat = re.compile(r"^I(?:\d{4}|\d{8}) (\d\d):(\d\d):(\d\d\.\d+) .*\] Iteration (\d+).*loss = ")
    points = []
    for line in Path(log).read_text(errors="replace").splitlines():
        if m := pat.match(line.strip()):
            h, mi, s, it = int(m.group(1)), int(m.group(2)), float(m.group(3)), int(m.group(4))
            points.append((it, h * 3600 + mi * 60 + s))
    if len(points) <= skip + 1:
        return None
    (i0, t0), (i1, t1) = points[skip], points[-1]
    if t1 < t0:
        t1 += 86400                           # past midnight
    return (i1 - i0) * batch / (t1 - t0) if t1 > t0 else None


def curves_match(cpu: list[tuple[int, float]], gpu: list[tuple[int, float]],
                 first_tol: float = 0.01, last_tol: float = 0.10, tail: int = 5) -> tuple[bool, str]:
    """Whether two runs from the same weights and batches agree: the first logged loss within
    ``first_tol`` (only rounding differs before the first update), and the mean of the last
    ``tail`` logged losses within ``last_tol`` (hard-sample mining feeds the losses back, so
    small differences change later batches)."""
    ok, numbers = curve_agreement(cpu, gpu, first_tol, last_tol, tail)
    if "problem" in numbers:
        return False, numbers["problem"]
    n = numbers
    return ok, (f"first loss {n['first_cpu']:.4f} vs {n['first_gpu']:.4f} "
                f"({100 * n['first_rel_diff']:.2f}%), last {n['tail']} mean "
                f"{n['tail_mean_cpu']:.4f} vs {n['tail_mean_gpu']:.4f} "
                f"({100 * n['tail_rel_diff']:.1f}%)")


def curve_agreement(cpu: list[tuple[int, float]], gpu: list[tuple[int, float]],
                    first_tol: float = 0.01, last_tol: float = 0.10,
                    tail: int = 5) -> tuple[bool, dict]:
    """curves_match's rule with its numbers (for a report): the first losses, the means of
    the last ``tail`` common ones, their relative differences and the tolerances; a
    "problem" entry when the curves cannot be compared."""
    numbers: dict = {"first_tol": first_tol, "tail_tol": last_tol}
    if not cpu or not gpu:
        return False, dict(numbers, problem="no loss in a log")
    a, b = dict(cpu), dict(gpu)
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return False, dict(numbers, problem="the logs share fewer than two iterations")
    first = abs(a[common[0]] - b[common[0]]) / max(abs(a[common[0]]), 1e-6)
    ta = float(np.mean([a[i] for i in common[-tail:]]))
    tb = float(np.mean([b[i] for i in common[-tail:]]))
    last = abs(ta - tb) / max(abs(ta), 1e-6)
    numbers.update(first_iteration=common[0], first_cpu=a[common[0]], first_gpu=b[common[0]],
                   first_rel_diff=first, tail=min(tail, len(common)), tail_mean_cpu=ta,
                   tail_mean_gpu=tb, tail_rel_diff=last)
    return first <= first_tol and last <= last_tol, numbers


def compare_caffemodels(a: str | Path, b: str | Path, skip_types: tuple[str, ...] = ("BatchNorm",),
                        prototxt: str | Path | None = None) -> tuple[float, int, list[str]]:
    """(largest |difference| over learnt weights, layers compared, layers skipped) of two
    caffemodels. BatchNorm's blobs are each rank's own running statistics (Caffe reduces
    gradients, not statistics), so they are skipped when ``prototxt`` names their layers."""
    from rmnet.caffe.caffemodel import read_caffemodel

    skip: set[str] = set()
    if prototxt is not None:
        from rmnet.caffe.protos import read_net

        skip = {l.name for l in read_net(prototxt).layer if l.type in skip_types}
    wa, wb = read_caffemodel(a), read_caffemodel(b)
    worst, n = 0.0, 0
    for name, blobs in wa.items():
        if name in skip or name not in wb:
            continue
        for x, y in zip(blobs, wb[name]):
            worst = max(worst, float(np.abs(x - y).max(initial=0)))
        n += 1
    return worst, n, sorted(skip)

