"""The project's Caffe patches for fast CPU training (scripts/caffe/patches), through pycaffe.

Each patched layer against numpy's float64 maths of the same layer and against central
differences, with a random upstream gradient (not ones), batches > 1, odd sizes and strides:
- convolutions with the batch split across OpenMP threads: 1x1 (with and without bias,
  several bottoms), 3x3 with an im2col buffer per thread, and grouped ones;
- depthwise convolutions (group == channels == num_output: the direct path), strides 1-3,
  padding, dilation, rectangular kernels, including the zero-padded-plane path of stride 1;
- BatchNorm (batch statistics and global statistics, in place as in the nets) followed by
  Scale with a bias term, and Scale/Bias alone;
- Net's fused BatchNorm -> Scale -> ELU / scheduled Dropout and Eltwise SUM -> ELU chains
  against the same layers run one by one (and numpy), against central differences, with
  forward and backward ranges that split a chain, and in the generated light net;
- ELU, including large negative inputs;
- MAX pooling (planes in parallel), with overlapping windows, padding, the mask top and
  global pooling;
- Eltwise SUM with coefficients, Split's backward (the sum of its tops' diffs) and ReLU
  with a negative slope;
- that one thread, two and three give the same bits for all of these layers (each value is
  computed by one thread in a fixed order), and the 1x1 convolution to float rounding.
The scheduled Dropout option is tested in tests/test_dropout.py; Caffe's own gtests of these
layers run in tests/test_caffe_gtests.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, central_difference, numeric_grad


def make_net(caffe, tmp_path: Path, shapes: dict[str, tuple], layers: str, phase="TRAIN",
             force_backward: bool = True):
    inputs = "\n".join(
        f'layer {{ name: "in_{n}" type: "Input" top: "{n}" '
        f'input_param {{ shape {{ {" ".join(f"dim: {d}" for d in s)} }} }} }}'
        for n, s in shapes.items())
    path = tmp_path / "net.prototxt"
    force = "force_backward: true\n" if force_backward else ""
    path.write_text(f'name: "t"\n{force}{inputs}\n{textwrap.dedent(layers)}')
    return caffe.Net(str(path), getattr(caffe, phase))


def run(net, inputs: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
    for k, v in inputs.items():
        net.blobs[k].data[...] = v
    net.forward()
    for k, g in grads.items():
        net.blobs[k].diff[...] = g
    net.backward()


def weighted_loss(net, inputs, grads):
    """f() = sum(top * g) in float64: its gradient w.r.t. anything is what backward computes."""
    def f() -> float:
        for k, v in inputs.items():
            net.blobs[k].data[...] = v
        net.forward()
        return float(sum((net.blobs[k].data.astype(np.float64) * g).sum()
                         for k, g in grads.items()))
    return f


def conv_ref(x, w, b, stride, pad, dilation, group):
    """Direct float64 convolution (N C H W, weights Cout x Cin/g x KH x KW)."""
    n, c, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    out = np.zeros((n, cout, oh, ow))
    per_group = cout // group
    for o in range(cout):
        g = o // per_group
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cin_g:(g + 1) * cin_g,
                           i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_grads_ref(x, w, b, dy, stride, pad, dilation, group):
    """(dx, dw, db) of sum(conv_ref(x) * dy) in float64. The convolution is linear in x and in
    w separately, so each gradient entry is the loss of a unit probe: exact, independent of the
    path Caffe takes."""
    dx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1.0
        dx[idx] = (conv_ref(e, w, None, stride, pad, dilation, group) * dy).sum()
    dw = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[idx] = 1.0
        dw[idx] = (conv_ref(x, e, None, stride, pad, dilation, group) * dy).sum()
    db = dy.sum(axis=(0, 2, 3)) if b is not None else None
    return dx, dw, db


CONV_CASES = [
    # name, (N, C, H, W), num_output, kernel (h, w), stride, pad, dilation, group, bias
    ("1x1", (3, 6, 5, 7), 4, (1, 1), 1, 0, 1, 1, True),
    ("1x1 no bias, wide", (2, 3, 3, 9), 8, (1, 1), 1, 0, 1, 1, False),
    ("depthwise 3x3 s1", (2, 5, 7, 5), 5, (3, 3), 1, 1, 1, 5, True),
    ("depthwise 3x3 s2", (3, 4, 9, 6), 4, (3, 3), 2, 1, 1, 4, True),
    ("depthwise 3x2 s3 dil2", (2, 3, 11, 9), 3, (3, 2), 3, 2, 2, 3, False),
    ("grouped, not depthwise", (2, 4, 6, 5), 6, (3, 3), 2, 1, 1, 2, True),
    ("3x3 s2 (im2col per thread)", (3, 3, 9, 7), 5, (3, 3), 2, 1, 1, 1, True),
    # stride 1, 0 <= pad <= dilation * (kernel - 1): the zero-padded plane path
    ("depthwise 5x3 s1 pad 2", (3, 4, 6, 5), 4, (5, 3), 1, 2, 1, 4, False),
    ("depthwise 3x3 s1 pad 0", (2, 3, 6, 7), 3, (3, 3), 1, 0, 1, 3, True),
    ("depthwise 3x3 s1 dil2", (2, 3, 8, 7), 3, (3, 3), 1, 2, 2, 3, False),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_convolution_paths_match_numpy(caffe, tmp_path, case):
    _, shape, cout, (kh, kw), stride, pad, dil, group, bias = case
    net = make_net(caffe, tmp_path, {"x": shape}, f"""
        layer {{ name: "conv" type: "Convolution" bottom: "x" top: "y"
          convolution_param {{ num_output: {cout} kernel_h: {kh} kernel_w: {kw} stride: {stride}
            pad: {pad} dilation: {dil} group: {group} bias_term: {str(bias).lower()}
            weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" }} }} }}
    """)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    w = net.params["conv"][0].data.astype(np.float64)
    b = net.params["conv"][1].data.astype(np.float64) if bias else None
    y = conv_ref(x.astype(np.float64), w, b, (stride,) * 2, (pad,) * 2, (dil,) * 2, group)
    dy = rng.standard_normal(y.shape).astype(np.float32) * 1.3
    for p in net.params["conv"]:
        p.diff[...] = 0
    run(net, {"x": x}, {"y": dy})
    np.testing.assert_allclose(net.blobs["y"].data, y, rtol=1e-4, atol=1e-4)
    dx, dw, db = conv_grads_ref(x.astype(np.float64), w, b, dy.astype(np.float64),
                                (stride,) * 2, (pad,) * 2, (dil,) * 2, group)
    np.testing.assert_allclose(net.blobs["x"].diff, dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.params["conv"][0].diff, dw, rtol=1e-4, atol=1e-3)
    if bias:
        np.testing.assert_allclose(net.params["conv"][1].diff, db, rtol=1e-4, atol=1e-4)
    # parameter gradients accumulate over backward passes (the solver clears them)
    before = net.params["conv"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["conv"][0].diff, 2 * before, rtol=1e-5, atol=1e-5)
    # and the input gradient by central differences through Caffe, on a few entries
    for idx in [(0,) * 4, tuple(s - 1 for s in shape), (1, shape[1] // 2, shape[2] // 2, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += 0.5
        xm[idx] -= 0.5
        numeric = (weighted_loss(net, {"x": xp}, {"y": dy})()
                   - weighted_loss(net, {"x": xm}, {"y": dy})())
        assert numeric == pytest.approx(dx[idx], rel=1e-3, abs=1e-3), idx


def test_1x1_convolution_with_two_bottoms(caffe, tmp_path):
    """Each bottom has its own top; the weight gradient sums over both."""
    shape = (2, 3, 4, 5)
    net = make_net(caffe, tmp_path, {"a": shape, "b": shape}, """
        layer { name: "conv" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb"
          convolution_param { num_output: 2 kernel_size: 1
            weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" } } }
    """)
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    ga, gb = (rng.standard_normal((2, 2, 4, 5)).astype(np.float32) for _ in range(2))
    for p in net.params["conv"]:
        p.diff[...] = 0
    run(net, {"a": a, "b": b}, {"ya": ga, "yb": gb})
    w = net.params["conv"][0].data[:, :, 0, 0].astype(np.float64)
    bias = net.params["conv"][1].data.astype(np.float64)
    for x, top in ((a, "ya"), (b, "yb")):
        np.testing.assert_allclose(net.blobs[top].data,
                                   np.einsum("oc,nchw->nohw", w, x) + bias[None, :, None, None],
                                   rtol=1e-5, atol=1e-5)
    dw = np.einsum("nohw,nchw->oc", ga, a) + np.einsum("nohw,nchw->oc", gb, b)
    np.testing.assert_allclose(net.params["conv"][0].diff[:, :, 0, 0], dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.params["conv"][1].diff, (ga + gb).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.blobs["b"].diff, np.einsum("oc,nohw->nchw", w, gb),
                               rtol=1e-4, atol=1e-5)


BN_SCALE = """
    layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" BN_PARAM }
    layer { name: "scale" type: "Scale" bottom: "y" top: "y"
      scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                    bias_filler { type: "gaussian" std: 1 } } }
"""


def bn_scale_ref(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    xn = (x - mu) / np.sqrt(var + eps)
    return xn * gamma[None, :, None, None] + beta[None, :, None, None], mu, var


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (1, 5, 3, 3), (7, 2, 1, 1)])
def test_batchnorm_scale_train_mode(caffe, tmp_path, shape):
    """BatchNorm on batch statistics, in place into Scale with a bias (as the nets use them):
    the output, running statistics, every gradient, against numpy and finite differences."""
    net = make_net(caffe, tmp_path, {"x": shape},
                   BN_SCALE.replace("BN_PARAM", "batch_norm_param { use_global_stats: false }"))
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = net.params["scale"][0].data.astype(np.float64)
    beta = net.params["scale"][1].data.astype(np.float64)
    for p in net.params["scale"]:
        p.diff[...] = 0
    run(net, {"x": x}, {"y": dy})
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    y, mu, var = bn_scale_ref(x64, gamma, beta)
    np.testing.assert_allclose(net.blobs["y"].data, y, rtol=1e-4, atol=1e-4)
    m = x.size // shape[1]
    # running statistics: one update from zero, variance with the m/(m-1) correction
    np.testing.assert_allclose(net.params["bn"][0].data, mu.ravel(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["bn"][1].data,
                               var.ravel() * (m / (m - 1) if m > 1 else 1), rtol=1e-4, atol=1e-5)
    assert net.params["bn"][2].data[0] == 1
    xn = (x64 - mu) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(net.params["scale"][0].diff, (dy64 * xn).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.params["scale"][1].diff, dy64.sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)
    analytic = net.blobs["x"].diff.astype(np.float64)
    xs = x64.copy()
    numeric = numeric_grad(lambda: bn_scale_ref(xs, gamma, beta)[0].ravel() @ dy64.ravel(), xs)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=2e-4)
    if m > 1:
        assert np.abs(analytic).max() > 1e-3


def test_batchnorm_global_stats_and_scale(caffe, tmp_path):
    shape = (3, 4, 5, 3)
    net = make_net(caffe, tmp_path, {"x": shape},
                   BN_SCALE.replace("BN_PARAM", "batch_norm_param { use_global_stats: true }"),
                   phase="TEST")
    rng = np.random.default_rng(4)
    mean, var, factor = rng.standard_normal(4), rng.uniform(0.5, 2, 4), 2.5
    net.params["bn"][0].data[...] = mean * factor
    net.params["bn"][1].data[...] = var * factor
    net.params["bn"][2].data[...] = factor
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    run(net, {"x": x}, {"y": dy})
    sd = np.sqrt(var + 1e-5)[None, :, None, None]
    gamma = net.params["scale"][0].data.astype(np.float64)[None, :, None, None]
    beta = net.params["scale"][1].data.astype(np.float64)[None, :, None, None]
    np.testing.assert_allclose(net.blobs["y"].data, (x - mean[None, :, None, None]) / sd * gamma
                               + beta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.blobs["x"].diff, dy * gamma / sd, rtol=1e-4, atol=1e-5)


CHAIN_AFTER = {
    "ELU": 'layer {{ name: "act" type: "ELU" bottom: "{b}" top: "{c}" elu_param {{ alpha: 0.7 }} }}',
    "Dropout": 'layer {{ name: "act" type: "Dropout" bottom: "{b}" top: "{c}" '
               'param {{ lr_mult: 0 decay_mult: 0 }} '
               'dropout_param {{ dropout_ratio: 0.3 switch_off_iter: 100 }} }}',
    "": "",
}


def chain_net(caffe, tmp_path: Path, after: str, in_place: bool, shape=(5, 6, 7, 9)):
    """Copy -> BatchNorm -> Scale with bias -> `after` -> Power, all in place on "h" (Net runs
    BatchNorm..after as one pass) or on distinct blobs (Net runs them one by one)."""
    a, b, c = ("h", "h", "h") if in_place else ("b1", "b2", "b3" if after else "b2")
    copy_top = "h" if in_place else "h0"
    layers = f"""
        layer {{ name: "copy" type: "Power" bottom: "x" top: "{copy_top}" }}
        layer {{ name: "bn" type: "BatchNorm" bottom: "{copy_top}" top: "{a}" }}
        layer {{ name: "scale" type: "Scale" bottom: "{a}" top: "{b}"
          scale_param {{ bias_term: true filler {{ type: "gaussian" std: 1 }}
                        bias_filler {{ type: "gaussian" std: 1 }} }} }}
        {CHAIN_AFTER[after].format(b=b, c=c)}
        layer {{ name: "out" type: "Power" bottom: "{c}" top: "z" power_param {{ scale: 1.5 }} }}
    """
    (tmp_path / ("in_place" if in_place else "apart")).mkdir(exist_ok=True)
    return make_net(caffe, tmp_path / ("in_place" if in_place else "apart"), {"x": shape}, layers)


def chain_pair(caffe, tmp_path: Path, after: str):
    """The in-place (fused) and distinct-blob nets with the same parameters."""
    fused, apart = chain_net(caffe, tmp_path, after, True), chain_net(caffe, tmp_path, after, False)
    for name, params in fused.params.items():
        for p, q in zip(params, apart.params[name]):
            q.data[...] = p.data
            p.diff[...] = q.diff[...] = 0.25          # gradients accumulate on top of this
    return fused, apart


def assert_nets_agree(fused, apart):
    np.testing.assert_allclose(fused.blobs["z"].data, apart.blobs["z"].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.blobs["x"].diff, apart.blobs["x"].diff, rtol=1e-5, atol=1e-6)
    for name, params in fused.params.items():
        for i, (p, q) in enumerate(zip(params, apart.params[name])):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6, err_msg=f"{name} {i}")
            np.testing.assert_allclose(p.diff, q.diff, rtol=1e-5, atol=1e-5, err_msg=f"{name} {i}")


@pytest.mark.parametrize("after", ["ELU", "Dropout", ""])
def test_a_fused_batchnorm_scale_chain_computes_what_the_layers_compute(caffe, tmp_path, after):
    """Net runs BatchNorm -> Scale (-> ELU or scheduled Dropout) in place as one pass; the same
    layers on distinct blobs run one by one. Outputs, input gradients, running statistics, the
    Dropout's counter and the accumulated parameter gradients agree, over two iterations."""
    fused, apart = chain_pair(caffe, tmp_path, after)
    assert fused._fused_chains == [(2, 3 if after else 2)]
    assert apart._fused_chains == []
    rng = np.random.default_rng(21)
    for _ in range(2):
        x = (rng.standard_normal((5, 6, 7, 9)) * 2 + 1).astype(np.float32)
        dz = rng.standard_normal((5, 6, 7, 9)).astype(np.float32)
        run(fused, {"x": x}, {"z": dz})
        run(apart, {"x": x}, {"z": dz})
        assert_nets_agree(fused, apart)
    assert np.abs(fused.blobs["x"].diff).max() > 1e-3
    if after == "Dropout":   # the mask was applied: about 30% of the outputs are exactly zero
        assert 0.2 < (fused.blobs["z"].data == 0).mean() < 0.4
        assert fused.params["act"][0].data[0] == 2


def test_a_fused_chain_against_central_differences(caffe, tmp_path):
    """The fused BatchNorm -> Scale -> ELU backward pass against central differences of
    sum(z * dz) (dz random, not ones), at a few input elements."""
    fused = chain_net(caffe, tmp_path, "ELU", True)
    assert fused._fused_chains == [(2, 3)]
    rng = np.random.default_rng(22)
    x = (rng.standard_normal((5, 6, 7, 9)) * 2 + 1).astype(np.float32)
    dz = rng.standard_normal((5, 6, 7, 9)).astype(np.float32)
    run(fused, {"x": x}, {"z": dz})
    analytic = fused.blobs["x"].diff.copy()
    f = weighted_loss(fused, {"x": x}, {"z": dz})
    for idx in [(0, 0, 0, 0), (2, 3, 4, 5), (4, 5, 6, 8), (1, 2, 3, 1)]:
        assert central_difference(f, x, idx, 1e-2) == pytest.approx(analytic[idx], rel=2e-2,
                                                              abs=2e-3), idx


@pytest.mark.parametrize("steps", [
    [("f", 0, 5), ("b", 5, 3), ("b", 2, 0)],      # backward split inside the chain
    [("f", 0, 2), ("f", 3, 5), ("b", 5, 0)],      # forward split inside the chain
    [("f", 0, 5), ("b", 5, 4), ("b", 3, 0)],
])
def test_partial_passes_through_a_chain_run_the_layers(caffe, tmp_path, steps):
    """Forward or backward ranges that cover only part of a chain run its layers one by one,
    with what the layers alone compute (the Scale finds its input where the last forward pass
    left it)."""
    fused, apart = chain_pair(caffe, tmp_path, "ELU")
    rng = np.random.default_rng(23)
    x = rng.standard_normal((5, 6, 7, 9)).astype(np.float32)
    dz = rng.standard_normal((5, 6, 7, 9)).astype(np.float32)
    for net in (fused, apart):
        net.blobs["x"].data[...] = x
        for kind, first, last in steps:
            if kind == "f":
                net._forward(first, last)
            else:
                if first == 5:
                    net.blobs["z"].diff[...] = dz
                net._backward(first, last)
    assert_nets_agree(fused, apart)


def test_a_fused_eltwise_elu_chain_computes_what_the_layers_compute(caffe, tmp_path):
    """Eltwise SUM (coefficients 1 and -0.5) with an ELU in place on its top runs as one pass;
    the same with the ELU on another blob runs one by one: the same output and gradients."""
    nets = []
    for e in ("s", "e"):
        (tmp_path / e).mkdir()
        nets.append(make_net(caffe, tmp_path / e, {"a": (3, 4, 5, 7), "b": (3, 4, 5, 7)}, f"""
            layer {{ name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s"
                     eltwise_param {{ operation: SUM coeff: 1 coeff: -0.5 }} }}
            layer {{ name: "act" type: "ELU" bottom: "s" top: "{e}" elu_param {{ alpha: 0.7 }} }}
            layer {{ name: "out" type: "Power" bottom: "{e}" top: "z" power_param {{ scale: 2 }} }}
        """))
    fused, apart = nets
    assert fused._fused_chains == [(2, 2)] and apart._fused_chains == []
    rng = np.random.default_rng(24)
    inputs = {k: (rng.standard_normal((3, 4, 5, 7)) * 2).astype(np.float32) for k in "ab"}
    dz = rng.standard_normal((3, 4, 5, 7)).astype(np.float32)
    for net in nets:
        run(net, inputs, {"z": dz})
    s = inputs["a"].astype(np.float64) - 0.5 * inputs["b"]
    t = np.where(s > 0, s, 0.7 * np.expm1(np.minimum(s, 0)))
    np.testing.assert_allclose(fused.blobs["z"].data, 2 * t, rtol=1e-5, atol=1e-6)
    da = 2 * dz * np.where(s > 0, 1.0, t + 0.7)
    for net in nets:
        np.testing.assert_allclose(net.blobs["a"].diff, da, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.blobs["b"].diff, -0.5 * da, rtol=1e-5, atol=1e-6)


def test_the_light_net_runs_every_batchnorm_and_eltwise_as_a_chain(caffe, tmp_path):
    """In the generated light net every BatchNorm starts a fused chain, with the ELU after it
    wherever there is one, and so does every Eltwise SUM with its ELU."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    param = text_format.Parse((REPO / "prototxt" / "light" / "deploy.prototxt").read_text(),
                              caffe_pb2.NetParameter())
    param.layer[0].input_param.shape[0].dim[0] = 2
    path = tmp_path / "deploy.prototxt"
    path.write_text(text_format.MessageToString(param))
    net = caffe.Net(str(path), caffe.TEST)
    types = [layer.type for layer in net.layers]
    chains = [(first, count) for first, count in net._fused_chains if types[first] == "BatchNorm"]
    sums = [(first, count) for first, count in net._fused_chains if types[first] == "Eltwise"]
    assert len(chains) + len(sums) == len(net._fused_chains)
    assert len(chains) == types.count("BatchNorm")
    for first, count in chains:
        assert types[first + 1] == "Scale"
        if count == 3:
            assert types[first + 2] == "ELU"
    assert sum(count == 3 for _, count in chains) > len(chains) // 2
    assert len(sums) == types.count("Eltwise") > 0
    assert all(count == 2 and types[first + 1] == "ELU" for first, count in sums)


def test_scale_with_a_bottom_scale_and_axis(caffe, tmp_path):
    """Scale by a second bottom over axes 1-2 (not the parameter path): diffs of both bottoms."""
    net = make_net(caffe, tmp_path, {"x": (2, 3, 4, 5), "s": (3, 4)}, """
        layer { name: "scale" type: "Scale" bottom: "x" bottom: "s" top: "y"
                scale_param { axis: 1 } }
    """)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    s = rng.standard_normal((3, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    run(net, {"x": x, "s": s}, {"y": dy})
    np.testing.assert_allclose(net.blobs["y"].data, x * s[None, :, :, None], rtol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, dy * s[None, :, :, None], rtol=1e-6)
    np.testing.assert_allclose(net.blobs["s"].diff, (dy * x).sum(axis=(0, 3)), rtol=1e-4,
                               atol=1e-5)


def test_elu_forward_and_gradient(caffe, tmp_path):
    shape = (3, 5, 7, 9)
    net = make_net(caffe, tmp_path, {"x": shape}, """
        layer { name: "elu" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.7 } }
    """)
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.flat[:6] = [-200.0, -87.5, -30.0, -1e-7, 0.0, 1e-7]
    dy = rng.standard_normal(shape).astype(np.float32)
    run(net, {"x": x}, {"y": dy})
    x64 = x.astype(np.float64)
    y = np.where(x64 > 0, x64, 0.7 * np.expm1(np.minimum(x64, 0)))
    np.testing.assert_allclose(net.blobs["y"].data, y, rtol=3e-6, atol=2e-7)
    np.testing.assert_allclose(net.blobs["x"].diff, dy * np.where(x64 > 0, 1.0, y + 0.7),
                               rtol=1e-5, atol=1e-7)
    # central differences away from the kink at 0
    f = weighted_loss(net, {"x": x}, {"y": dy})
    analytic = net.blobs["x"].diff.copy()
    for idx in [(0, 1, 2, 3), (2, 4, 6, 8), (1, 0, 0, 5)]:
        if abs(x[idx]) < 0.05:
            continue
        assert central_difference(f, x, idx, 1e-2) == pytest.approx(analytic[idx], rel=5e-3,
                                                              abs=1e-3), idx


def test_elu_in_place(caffe, tmp_path):
    """In place (as the nets use it) the backward pass reads the output as its input."""
    shape = (2, 3, 4, 5)
    net = make_net(caffe, tmp_path, {"x": shape}, """
        layer { name: "copy" type: "Power" bottom: "x" top: "h" }
        layer { name: "elu" type: "ELU" bottom: "h" top: "h" }
    """)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    run(net, {"x": x}, {"h": dy})
    y = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    np.testing.assert_allclose(net.blobs["h"].data, y, rtol=3e-6, atol=2e-7)
    np.testing.assert_allclose(net.blobs["x"].diff, dy * np.where(x > 0, 1.0, y + 1.0),
                               rtol=1e-5, atol=1e-7)


def test_scale_with_bias_out_of_place_accumulates_parameter_gradients(caffe, tmp_path):
    """Scale with a bias term, not in place, backward twice without clearing the parameter
    diffs: Caffe accumulates them, so they are twice one backward's."""
    shape = (3, 4, 5, 6)
    net = make_net(caffe, tmp_path, {"x": shape}, """
        layer { name: "scale" type: "Scale" bottom: "x" top: "y"
          scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                        bias_filler { type: "gaussian" std: 1 } } }
    """)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = net.params["scale"][0].data.astype(np.float64)[None, :, None, None]
    beta = net.params["scale"][1].data.astype(np.float64)[None, :, None, None]
    for p in net.params["scale"]:
        p.diff[...] = 0
    run(net, {"x": x}, {"y": dy})
    net.backward()
    np.testing.assert_allclose(net.blobs["y"].data, x * gamma + beta, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, dy * gamma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.params["scale"][0].diff, 2 * (dy * x).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.params["scale"][1].diff, 2 * dy.sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)


def test_scale_with_a_frozen_bias(caffe, tmp_path):
    """lr_mult 0 on the bias (and no force_backward, which would ask for every gradient; the
    loss weight makes Caffe run the backward pass): no bias gradient, the scale and input
    gradients still right (the path that does not fuse the bias into the backward pass)."""
    shape = (2, 3, 4, 5)
    net = make_net(caffe, tmp_path, {"x": shape}, """
        layer { name: "conv" type: "Convolution" bottom: "x" top: "h"
          convolution_param { num_output: 3 kernel_size: 1 } }
        layer { name: "scale" type: "Scale" bottom: "h" top: "s" loss_weight: 1
          param { lr_mult: 1 } param { lr_mult: 0 }
          scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                        bias_filler { type: "gaussian" std: 1 } } }
    """, force_backward=False)
    net.params["conv"][0].data[...] = np.eye(3)[:, :, None, None]
    net.params["conv"][1].data[...] = 0
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = net.params["scale"][0].data.astype(np.float64)[None, :, None, None]
    beta = net.params["scale"][1].data.astype(np.float64)[None, :, None, None]
    for name in ("conv", "scale"):
        for p in net.params[name]:
            p.diff[...] = 0
    run(net, {"x": x}, {"s": dy})
    np.testing.assert_allclose(net.blobs["s"].data, x * gamma + beta, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(net.blobs["h"].diff, dy * gamma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.params["scale"][0].diff, (dy * x).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)
    assert not net.params["scale"][1].diff.any()
    np.testing.assert_allclose(net.params["conv"][1].diff, (dy * gamma).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)


def max_pool_ref(x, kernel, stride, pad):
    """float64 MAX pooling as Caffe defines it (windows clipped to the image, first maximum
    wins; output size rounds up), with the argmax index inside each plane."""
    n, c, h, w = x.shape
    oh = -(-(h + 2 * pad - kernel) // stride) + 1
    ow = -(-(w + 2 * pad - kernel) // stride) + 1
    if pad and (oh - 1) * stride >= h + pad:
        oh -= 1
    if pad and (ow - 1) * stride >= w + pad:
        ow -= 1
    y = np.full((n, c, oh, ow), -np.inf)
    idx = np.full((n, c, oh, ow), -1)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = max(i * stride - pad, 0), max(j * stride - pad, 0)
            h1, w1 = min(i * stride - pad + kernel, h), min(j * stride - pad + kernel, w)
            win = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
            k = win.argmax(axis=2)
            y[:, :, i, j] = win.max(axis=2)
            idx[:, :, i, j] = (h0 + k // (w1 - w0)) * w + w0 + k % (w1 - w0)
    return y, idx


@pytest.mark.parametrize("kernel,stride,pad,shape", [
    (2, 2, 0, (3, 4, 8, 6)),       # the nets' shortcut pooling
    (3, 2, 1, (2, 3, 9, 7)),       # overlapping windows: gradients add up
    (3, 1, 0, (1, 5, 4, 5)),
])
def test_max_pooling_forward_mask_and_gradient(caffe, tmp_path, kernel, stride, pad, shape):
    net = make_net(caffe, tmp_path, {"x": shape}, f"""
        layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" top: "mask"
          pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}
    """)
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(np.float32)
    y_ref, idx = max_pool_ref(x.astype(np.float64), kernel, stride, pad)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    run(net, {"x": x}, {"y": dy})
    np.testing.assert_array_equal(net.blobs["y"].data, y_ref.astype(np.float32))
    np.testing.assert_array_equal(net.blobs["mask"].data, idx)
    dx = np.zeros(shape)
    planes = dx.reshape(shape[0] * shape[1], -1)
    for p, (ix, g) in enumerate(zip(idx.reshape(len(planes), -1), dy.reshape(len(planes), -1))):
        np.add.at(planes[p], ix, g)
    np.testing.assert_allclose(net.blobs["x"].diff, dx, rtol=1e-6, atol=1e-7)


def test_global_max_pooling_without_a_mask_top(caffe, tmp_path):
    shape = (4, 6, 5, 3)
    net = make_net(caffe, tmp_path, {"x": shape}, """
        layer { name: "pool" type: "Pooling" bottom: "x" top: "y"
          pooling_param { pool: MAX global_pooling: true } }
    """)
    rng = np.random.default_rng(14)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    run(net, {"x": x}, {"y": dy})
    np.testing.assert_array_equal(net.blobs["y"].data[:, :, 0, 0], x.max(axis=(2, 3)))
    flat = x.reshape(24, -1)
    dx = np.zeros_like(flat)
    dx[np.arange(24), flat.argmax(axis=1)] = dy.ravel()
    np.testing.assert_array_equal(net.blobs["x"].diff, dx.reshape(shape))


def test_eltwise_sum_with_coefficients(caffe, tmp_path):
    """Three bottoms whose size is not a multiple of the block size; forward and the three
    input gradients."""
    shape = (2, 3, 37, 29)
    net = make_net(caffe, tmp_path, {"a": shape, "b": shape, "c": shape}, """
        layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
          eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 } }
    """)
    rng = np.random.default_rng(15)
    a, b, c = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    dy = rng.standard_normal(shape).astype(np.float32)
    run(net, {"a": a, "b": b, "c": c}, {"y": dy})
    np.testing.assert_allclose(net.blobs["y"].data, a.astype(np.float64) - 2 * b + 0.5 * c,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(net.blobs["a"].diff, dy)
    np.testing.assert_array_equal(net.blobs["b"].diff, -2 * dy)
    np.testing.assert_array_equal(net.blobs["c"].diff, 0.5 * dy)


def test_split_backward_sums_the_consumers_gradients(caffe, tmp_path):
    """A blob read by three layers: Caffe inserts a Split whose backward adds the three diffs."""
    shape = (3, 5, 11, 13)
    net = make_net(caffe, tmp_path, {"x": shape}, """
        layer { name: "p1" type: "Power" bottom: "x" top: "a" power_param { scale: 2 } }
        layer { name: "p2" type: "Power" bottom: "x" top: "b" power_param { scale: -3 } }
        layer { name: "p3" type: "Power" bottom: "x" top: "c" power_param { scale: 0.25 } }
    """)
    assert any(t == "Split" for t in (layer.type for layer in net.layers))
    rng = np.random.default_rng(16)
    x = rng.standard_normal(shape).astype(np.float32)
    da, db, dc = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    run(net, {"x": x}, {"a": da, "b": db, "c": dc})
    np.testing.assert_allclose(net.blobs["x"].diff,
                               2 * da.astype(np.float64) - 3 * db + 0.25 * dc,
                               rtol=1e-5, atol=1e-6)


def test_relu_with_a_negative_slope(caffe, tmp_path):
    shape = (2, 3, 17, 19)
    net = make_net(caffe, tmp_path, {"x": shape}, """
        layer { name: "copy" type: "Power" bottom: "x" top: "h" }
        layer { name: "relu" type: "ReLU" bottom: "h" top: "h" relu_param { negative_slope: 0.1 } }
    """)
    rng = np.random.default_rng(17)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    run(net, {"x": x}, {"h": dy})
    np.testing.assert_allclose(net.blobs["h"].data, np.where(x > 0, x, 0.1 * x), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, np.where(x > 0, dy, 0.1 * dy), rtol=1e-6)


THREADS_SCRIPT = """
import sys, numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TRAIN)
rng = np.random.default_rng(3)
for name, layer in zip(net._layer_names, net.layers):
    if layer.type != "BatchNorm":
        for p in net.params.get(name, []):
            p.data[...] = rng.standard_normal(p.data.shape)
for name in net.inputs:
    net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].data.shape)
net.forward()
for name in net.outputs:
    net.blobs[name].diff[...] = rng.standard_normal(net.blobs[name].data.shape) * 0.7
for params in net.params.values():
    for p in params:
        p.diff[...] = 0
net.backward()
out = {f"data:{k}": b.data for k, b in net.blobs.items()}
out.update({f"diff:{k}": b.diff for k, b in net.blobs.items()})
out.update({f"param:{k}:{i}": p.diff for k, ps in net.params.items() for i, p in enumerate(ps)})
np.savez(sys.argv[2], **out)
"""


def run_on_threads(tmp_path: Path, net_path: Path, thread_counts) -> list[dict]:
    """THREADS_SCRIPT on net_path in a fresh process per OMP_NUM_THREADS value."""
    results = []
    for run_no, threads in enumerate(thread_counts):
        out = tmp_path / f"r{run_no}.npz"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), GLOG_minloglevel="2")
        done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(net_path), str(out)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(dict(np.load(out)))
    return results


def test_convolutions_give_the_same_result_on_any_thread_count(caffe, tmp_path):
    """The batch is split into per-thread image ranges with private gradient sums (and, for
    the 3x3 convolution, private im2col buffers): 1 thread (the stock loop), 2, and 3 threads
    on 5 images (uneven ranges) agree to float rounding, and the same thread count gives the
    same bits twice."""
    net_path = tmp_path / "conv.prototxt"
    net_path.write_text(
        'force_backward: true\n'
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 6 dim: 4 dim: 3 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "y"\n'
        '  convolution_param { num_output: 7 kernel_size: 1 } }\n'
        'layer { name: "conv3" type: "Convolution" bottom: "y" top: "z"\n'
        '  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }\n')
    results = run_on_threads(tmp_path, net_path, (1, 2, 3, 3))
    for run_no in (1, 2):
        for key, ref in results[0].items():
            np.testing.assert_allclose(results[run_no][key], ref, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{key}, {(1, 2, 3)[run_no]} threads")
    for key in results[2]:
        np.testing.assert_array_equal(results[2][key], results[3][key], err_msg=key)
    # the weight gradients really are sums over all five images
    assert np.abs(results[0]["param:conv:0"]).max() > 0.1
    assert np.abs(results[0]["param:conv3:0"]).max() > 0.1


def test_the_other_patched_layers_give_the_same_bits_on_any_thread_count(caffe, tmp_path):
    """BatchNorm, Scale with bias, ELU, ReLU, depthwise convolution, MAX pooling, Eltwise SUM
    and Split compute every value on one thread in a fixed order, so 1, 2 and 3 threads give
    identical outputs and gradients (odd sizes, so the threads' ranges are uneven)."""
    net_path = tmp_path / "block.prototxt"
    net_path.write_text(textwrap.dedent("""\
        force_backward: true
        layer { name: "x" type: "Input" top: "x"
                input_param { shape { dim: 5 dim: 7 dim: 13 dim: 9 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "b" }
        layer { name: "scale" type: "Scale" bottom: "b" top: "b" scale_param { bias_term: true } }
        layer { name: "elu" type: "ELU" bottom: "b" top: "b" }
        layer { name: "dw" type: "Convolution" bottom: "b" top: "d"
                convolution_param { num_output: 7 group: 7 kernel_size: 3 pad: 1 stride: 2 } }
        layer { name: "relu" type: "ReLU" bottom: "d" top: "d" relu_param { negative_slope: 0.2 } }
        layer { name: "pool" type: "Pooling" bottom: "x" top: "p"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
        layer { name: "sum" type: "Eltwise" bottom: "d" bottom: "p" top: "y" }
        layer { name: "sq" type: "Power" bottom: "y" top: "z" power_param { power: 2 } }
        """))
    # x feeds BatchNorm and the pooling: Caffe inserts a Split
    assert "Split" in [layer.type for layer in caffe.Net(str(net_path), caffe.TRAIN).layers]
    results = run_on_threads(tmp_path, net_path, (1, 2, 3))
    for threads, result in zip((2, 3), results[1:]):
        assert result.keys() == results[0].keys()
        for key, ref in results[0].items():
            np.testing.assert_array_equal(result[key], ref, err_msg=f"{key}, {threads} threads")
    assert np.abs(results[0]["diff:x"]).max() > 1e-3
    assert np.abs(results[0]["param:scale:0"]).max() > 1e-3
