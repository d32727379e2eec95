"""The loss layers through pycaffe (in the manner of BVLC's python/caffe/test/test_python_layer.py):
tiny nets of Input layers and one loss layer, ``force_backward: true`` and loss weights other
than 1. Finite-difference checks of the embedding diff and of the parameter-blob diffs, the
config and bottom errors, reshape, parameter accumulation, the iteration counter across
save/load, and the generic ``parse_config``."""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from layers import loss_math as lm
from rmnet.config import ConfigError, parse_config
from layers.config import AMSoftmaxConfig, LocalStructureConfig, SmartMarginsConfig
from tests.conftest import numeric_grad

N, D, K = 6, 5, 4
AM_TOPS = ("loss/am_softmax", "loss/am_softmax/per_sample")
LOCAL_TOPS = ("loss/center", "loss/push", "loss/glob_push", "loss/local/per_sample")
AM_WEIGHTS = (0.7, 0.0)
LOCAL_WEIGHTS = (0.7, 2.5, 1.3, 0.0)


def write_net(tmp_path: Path, kind: str, params: dict, *, n: int = N, d: int = D,
              weighted: bool = True, loss_weights: tuple | None = None,
              embedding_shape: tuple | None = None) -> str:
    """A net: Input (embedding, label[, sample_weight]) -> one loss layer named 'loss'."""
    emb = embedding_shape or (n, d, 1, 1)
    shapes = ["shape { " + " ".join(f"dim: {v}" for v in emb) + " }", f"shape {{ dim: {n} }}"]
    bottoms = ['bottom: "embedding"', 'bottom: "label"']
    tops = ['top: "embedding"', 'top: "label"']
    if weighted:
        shapes.append(f"shape {{ dim: {n} }}")
        bottoms.append('bottom: "sample_weight"')
        tops.append('top: "sample_weight"')
    if kind == "am":
        layer, names = "AMSoftmaxLossLayer", AM_TOPS
        weights = loss_weights or AM_WEIGHTS
        param_specs = "param { lr_mult: 1 decay_mult: 1 }"
    else:
        layer, names = "LocalStructureLossLayer", LOCAL_TOPS
        weights = loss_weights or LOCAL_WEIGHTS
        param_specs = "param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }"
    text = f"""\
        name: "loss_test"
        force_backward: true
        layer {{ name: "input" type: "Input" {' '.join(tops)}
                input_param {{ {' '.join(shapes)} }} }}
        layer {{ name: "loss" type: "Python" {' '.join(bottoms)}
                {' '.join(f'top: "{t}"' for t in names)}
                {' '.join(f'loss_weight: {w}' for w in weights)}
                {param_specs}
                python_param {{ module: "layers.losses" layer: "{layer}"
                               param_str: '{json.dumps(params)}' }} }}
    """
    path = tmp_path / f"{kind}_{abs(hash(text))}.prototxt"
    path.write_text(textwrap.dedent(text))
    return str(path)


def loss_layer(net):
    return net.layers[list(net._layer_names).index("loss")]


def fill(net, x, y, w=None):
    net.blobs["embedding"].data[...] = x.reshape(net.blobs["embedding"].data.shape)
    net.blobs["label"].data[...] = y
    if w is not None:
        net.blobs["sample_weight"].data[...] = w


def kink_free_case(seed: int, centres: np.ndarray, margins: tuple[float, float],
                   gap: float = 0.02, n: int = N):
    """Embeddings and labels (float32-exact) whose Push/GlobPush hinge terms all stay `gap` away
    from 0, with active and inactive terms of each (finite differences must not cross a kink)."""
    k, d = centres.shape
    c, _ = lm.normalize_rows(centres)
    for s in range(seed, seed + 500):
        rng = np.random.default_rng(s)
        x = rng.standard_normal((n, d)).astype(np.float32)
        y = np.concatenate([[0, 0, 1], rng.integers(0, k, n - 3)])
        u, _ = lm.normalize_rows(x)
        own = np.einsum("ij,ij->i", u, c[y])
        hp = (margins[0] - own[:, None] + u @ u.T)[y[:, None] != y[None, :]]
        other = np.ones((n, k), bool)
        other[np.arange(n), y] = False
        hg = (margins[1] - own[:, None] + u @ c.T)[other]
        if all(np.abs(h).min() > gap and (h > 0).any() and (h < 0).any() for h in (hp, hg)):
            return x, y.astype(np.float32)
    raise AssertionError("no kink-free case found")


def fd_check(net, top_weights, blobs, before_forward=lambda: None, eps=1e-3):
    """Finite differences of sum_k w_k * top_k w.r.t. every entry of each (name, data, diff)
    blob, compared with the analytic diff Caffe's backward produced."""
    def objective() -> float:
        before_forward()
        net.forward()
        return sum(w * float(net.blobs[t].data) for t, w in top_weights if w)

    for name, data, analytic in blobs:
        numeric = numeric_grad(objective, data, eps)
        scale = max(1e-2, float(np.abs(numeric).max()))
        err = float(np.abs(analytic.reshape(numeric.shape) - numeric).max()) / scale
        assert err < 1e-2, f"{name}: max error {err:.3g} of the gradient scale {scale:.3g}"
        assert np.abs(numeric).max() > 1e-3, f"{name}: vacuous check, gradient ~0"


def analytic_diffs(net, before_forward=lambda: None):
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0
    before_forward()
    net.forward()
    net.backward()
    return (net.blobs["embedding"].diff.copy(),
            [b.diff.copy() for b in net.params["loss"]])


# --- AM-Softmax -------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("scale,margin", [(30.0, 0.35), (5.0, 0.0)])
def test_am_softmax_layer_gradients(caffe, tmp_path, weighted, scale, margin):
    params = {"num_classes": K, "scale": scale, "margin": margin, "seed": 3}
    net = caffe.Net(write_net(tmp_path, "am", params, weighted=weighted), caffe.TRAIN)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = np.array([0, 0, 1, 3, 2, 1], np.float32)
    w = np.array([1.0, 0.5, 2.0, 0.0, 1.5, 1.0], np.float32) if weighted else None
    fill(net, x, y, w)
    grad_x, (grad_w,) = analytic_diffs(net)

    # Forward values: the maths module on the same inputs.
    fwd = lm.am_softmax_forward(x, net.params["loss"][0].data, y.astype(int), scale, margin, w)
    assert float(net.blobs[AM_TOPS[0]].data) == pytest.approx(fwd.loss, rel=1e-5)
    np.testing.assert_allclose(net.blobs[AM_TOPS[1]].data, fwd.per_sample, rtol=1e-5)
    assert net.blobs[AM_TOPS[1]].data.shape == (N,)
    if weighted:
        np.testing.assert_array_equal(grad_x[3], 0)   # weight 0: no gradient

    fd_check(net, list(zip(AM_TOPS, AM_WEIGHTS)),
             [("embedding", net.blobs["embedding"].data, grad_x),
              ("class weights", net.params["loss"][0].data, grad_w)])


def test_am_softmax_class_weights_init_is_seeded_unit_rows(caffe, tmp_path):
    def weights(seed):
        params = {"num_classes": 7, "seed": seed}
        return caffe.Net(write_net(tmp_path, "am", params), caffe.TEST).params["loss"][0].data

    a, b, c = weights(1), weights(1), weights(2)
    assert a.shape == (7, D)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)


# --- local-structure losses -------------------------------------------------------------------

LOCAL_CASES = {
    # name: (param overrides, weighted, counter value while checking)
    "all_terms_constant_margins": ({}, True, 0),
    "all_terms_smart_margins": ({"smart_margins": {"start": 0.1, "ramp_iters": 1000}}, False, 400),
    "center_only": ({"push": False, "glob_push": False}, True, 0),
    "push_only": ({"center": False, "glob_push": False}, False, 0),
    "glob_push_only_smart": ({"center": False, "push": False,
                              "smart_margins": {"start": 0.0, "ramp_iters": 100,
                                                "terms": ["glob_push"]}}, True, 30),
    "margins_off": ({"push_margin": 0.0, "glob_push_margin": 0.0}, True, 0),
    "reduction_all": ({"reduction": "all"}, True, 0),
}


@pytest.mark.parametrize("case", LOCAL_CASES)
def test_local_layer_gradients(caffe, tmp_path, case):
    overrides, weighted, counter = LOCAL_CASES[case]
    params = {"num_classes": K, "push_margin": 0.4, "glob_push_margin": 0.3, "seed": 5}
    params.update(overrides)
    net = caffe.Net(write_net(tmp_path, "local", params, weighted=weighted), caffe.TRAIN)
    layer = loss_layer(net)
    centres = net.params["loss"][0].data
    margins = layer.margins_at(counter)
    cfg = layer.cfg
    x, y = kink_free_case(7, centres, (margins["push"], margins["glob_push"]))
    w = np.array([1.0, 0.5, 2.0, 0.0, 1.5, 1.0], np.float32) if weighted else None
    fill(net, x, y, w)

    def reset_counter():   # each TRAIN forward advances the counter: pin it
        net.params["loss"][1].data[...] = counter

    grad_x, (grad_c, grad_counter) = analytic_diffs(net, reset_counter)
    assert layer.margins == margins
    assert not grad_counter.any()

    fwd = lm.local_structure_forward(
        x, centres, y.astype(int), center=cfg.center, push=cfg.push, glob_push=cfg.glob_push,
        push_margin=margins["push"], glob_push_margin=margins["glob_push"], sample_weight=w,
        reduction=cfg.reduction)
    for t, value in zip(LOCAL_TOPS[:3], fwd.losses):
        assert float(net.blobs[t].data) == pytest.approx(value, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(net.blobs[LOCAL_TOPS[3]].data, fwd.per_sample, rtol=1e-5,
                               atol=1e-7)
    for t, enabled in zip(LOCAL_TOPS[:3], (cfg.center, cfg.push, cfg.glob_push)):
        assert (float(net.blobs[t].data) != 0) == enabled   # disabled terms output 0

    fd_check(net, list(zip(LOCAL_TOPS, LOCAL_WEIGHTS)),
             [("embedding", net.blobs["embedding"].data, grad_x),
              ("centres", centres, grad_c)], before_forward=reset_counter)


def test_smart_margins_follow_the_counter(caffe, tmp_path):
    params = {"num_classes": K, "push_margin": 0.6, "glob_push_margin": 0.7,
              "smart_margins": {"start": 0.1, "ramp_iters": 4, "terms": ["push"]},
              "iter_size": 2}
    net = caffe.Net(write_net(tmp_path, "local", params), caffe.TRAIN)
    layer = loss_layer(net)
    fill(net, *kink_free_case(0, net.params["loss"][0].data, (0.3, 0.3)), np.ones(N))
    seen = []
    for _ in range(12):
        net.forward()
        seen.append(layer.margins["push"])
        assert layer.margins["glob_push"] == pytest.approx(0.7)   # not in "terms": constant
    # iter_size 2: the schedule moves every second forward; 0.1 -> 0.6 over 4 iterations.
    expected = [0.1, 0.1, 0.225, 0.225, 0.35, 0.35, 0.475, 0.475, 0.6, 0.6, 0.6, 0.6]
    np.testing.assert_allclose(seen, expected, atol=1e-9)


def test_iteration_counter_train_only_and_survives_save_load(caffe, tmp_path):
    params = {"num_classes": K, "smart_margins": {"start": 0.1, "ramp_iters": 10}}
    proto = write_net(tmp_path, "local", params)
    net = caffe.Net(proto, caffe.TRAIN)
    x, y = kink_free_case(1, net.params["loss"][0].data, (0.3, 0.3))
    fill(net, x, y, np.ones(N))
    for _ in range(3):
        net.forward()
    assert net.params["loss"][1].data[0] == 3
    assert loss_layer(net).iteration == 3
    model = str(tmp_path / "local.caffemodel")
    net.save(model)

    resumed = caffe.Net(proto, caffe.TRAIN, weights=model)
    np.testing.assert_array_equal(resumed.params["loss"][0].data, net.params["loss"][0].data)
    assert resumed.params["loss"][1].data[0] == 3
    fill(resumed, x, y, np.ones(N))
    resumed.forward()
    assert loss_layer(resumed).margins["push"] == pytest.approx(0.1 + 0.6 * 3 / 10)
    assert resumed.params["loss"][1].data[0] == 4

    test_net = caffe.Net(proto, caffe.TEST, weights=model)
    fill(test_net, x, y, np.ones(N))
    test_net.forward()
    test_net.forward()
    assert test_net.params["loss"][1].data[0] == 3      # TEST forwards do not count
    assert loss_layer(test_net).margins["push"] == pytest.approx(0.28)


def test_counter_with_a_learning_rate_is_caught(caffe, tmp_path):
    net = caffe.Net(write_net(tmp_path, "local", {"num_classes": K}), caffe.TRAIN)
    fill(net, *kink_free_case(2, net.params["loss"][0].data, (0.7, 0.7)), np.ones(N))
    net.params["loss"][1].data[...] = 2.9997   # what weight decay on the counter would do
    with pytest.raises(ValueError, match="lr_mult 0"):
        net.forward()


# --- Caffe conventions ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["am", "local"])
def test_param_diffs_accumulate_and_loss_weight_scales(caffe, tmp_path, kind):
    params = {"num_classes": K}
    unit = (1.0, 0.0) if kind == "am" else (1.0, 1.0, 1.0, 0.0)
    nets = [caffe.Net(write_net(tmp_path, kind, params, loss_weights=tuple(f * v for v in unit)),
                      caffe.TEST) for f in (1.0, 2.5)]
    x, y = kink_free_case(3, nets[0].params["loss"][0].data, (0.7, 0.7))
    for net in nets:
        fill(net, x, y, np.ones(N))
    gx1, (gp1, *_) = analytic_diffs(nets[0])
    gx2, (gp2, *_) = analytic_diffs(nets[1])
    np.testing.assert_allclose(gx2, 2.5 * gx1, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(gp2, 2.5 * gp1, rtol=1e-5, atol=1e-9)
    nets[0].backward()   # a second backward adds to the parameter diff (Caffe's convention)
    np.testing.assert_allclose(nets[0].params["loss"][0].diff, 2 * gp1, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(nets[0].blobs["embedding"].diff, gx1, rtol=1e-6)  # overwritten


@pytest.mark.parametrize("kind", ["am", "local"])
def test_without_sample_weight_equals_unit_weights(caffe, tmp_path, kind):
    params = {"num_classes": K}
    a = caffe.Net(write_net(tmp_path, kind, params, weighted=False), caffe.TEST)
    b = caffe.Net(write_net(tmp_path, kind, params, weighted=True), caffe.TEST)
    x, y = kink_free_case(4, a.params["loss"][0].data, (0.7, 0.7))
    fill(a, x, y)
    fill(b, x, y, np.full(N, 3.0))
    a.forward()
    b.forward()
    for t in (AM_TOPS if kind == "am" else LOCAL_TOPS):
        np.testing.assert_allclose(a.blobs[t].data, b.blobs[t].data, rtol=1e-6)


@pytest.mark.parametrize("kind", ["am", "local"])
def test_reshape_to_another_batch_size(caffe, tmp_path, kind):
    net = caffe.Net(write_net(tmp_path, kind, {"num_classes": K}, embedding_shape=(N, D)),
                    caffe.TRAIN)
    rng = np.random.default_rng(6)
    for n in (9, 3):
        net.blobs["embedding"].reshape(n, D)
        net.blobs["label"].reshape(n)
        net.blobs["sample_weight"].reshape(n)
        net.reshape()
        fill(net, rng.standard_normal((n, D)), rng.integers(0, K, n), np.ones(n))
        net.forward()
        net.backward()
        per_sample = net.blobs[(AM_TOPS if kind == "am" else LOCAL_TOPS)[-1]].data
        assert per_sample.shape == ((n,) if kind == "am" else (n, 3))
        assert net.blobs["embedding"].diff.shape == (n, D)
        assert np.abs(net.blobs["embedding"].diff).sum() > 0


@pytest.mark.parametrize("kind", ["am", "local"])
def test_gradient_on_per_sample_top_raises(caffe, tmp_path, kind):
    weights = (0.7, 1.0) if kind == "am" else (0.7, 2.5, 1.3, 1.0)
    net = caffe.Net(write_net(tmp_path, kind, {"num_classes": K}, loss_weights=weights),
                    caffe.TRAIN)
    fill(net, *kink_free_case(5, net.params["loss"][0].data, (0.7, 0.7)), np.ones(N))
    net.forward()
    with pytest.raises(ValueError, match="loss_weight 0"):
        net.backward()


# --- errors -----------------------------------------------------------------------------------

CONFIG_ERRORS = [
    ("am", {"num_classes": K, "scael": 30.0}, r"AMSoftmaxLossLayer: unknown param_str key 'scael'"),
    ("am", {"num_classes": K, "scale": -1.0}, r"AMSoftmaxLossLayer: .*'scale' must be > 0"),
    ("am", {"num_classes": K, "scale": "30"}, r"AMSoftmaxLossLayer: .*'scale' must be a number"),
    ("am", {"num_classes": K, "margin": 1.0}, r"'margin' must be in \[0, 1\)"),
    ("am", {"num_classes": 1}, r"'num_classes' must be >= 2"),
    ("am", {"num_classes": 3.5}, r"'num_classes' must be an integer"),
    ("am", {"scale": 30.0}, r"missing the required key 'num_classes'"),
    ("local", {"num_classes": K, "push": 1}, r"LocalStructureLossLayer: .*'push' must be true or"),
    ("local", {"num_classes": K, "push_margin": 1.2}, r"'push_margin' must be in \[0, 1\)"),
    ("local", {"num_classes": K, "smart_margins": {"start": 0.9}},
     r"'smart_margins.start' must be <= push_margin"),
    ("local", {"num_classes": K, "smart_margins": {"strat": 0.1}},
     r"unknown param_str key 'smart_margins.strat'"),
    ("local", {"num_classes": K, "smart_margins": {"terms": ["center"]}},
     r"in 'smart_margins'.*'terms' must be a list of"),
    ("local", {"num_classes": K, "smart_margins": 0.15}, r"'smart_margins' must be an object or null"),
    ("local", {"num_classes": K, "reduction": "sum"}, r"'reduction' must be one of \"active\""),
    ("local", {"num_classes": K, "center": False, "push": False, "glob_push": False},
     r"all false"),
]


@pytest.mark.parametrize("kind,params,message", CONFIG_ERRORS)
def test_config_errors_name_layer_and_key(caffe, tmp_path, kind, params, message):
    with pytest.raises(ValueError, match=message):
        caffe.Net(write_net(tmp_path, kind, params), caffe.TRAIN)


def test_config_param_str_not_json(caffe, tmp_path):
    proto = Path(write_net(tmp_path, "am", {"num_classes": K}))
    proto.write_text(proto.read_text().replace('{"num_classes": 4}', "{num_classes: 4}"))
    with pytest.raises(ValueError, match="AMSoftmaxLossLayer: param_str is not valid JSON"):
        caffe.Net(str(proto), caffe.TRAIN)


BOTTOM_ERRORS = [
    ("label", 4.0, r"label of sample 2 is 4, outside \[0, 4\)"),
    ("label", -1.0, r"label of sample 2 is -1, outside"),
    ("label", 1.5, r"label of sample 2 is 1.5, not an integer"),
    ("embedding", np.nan, r"the embedding of sample 2 contains NaN or inf"),
    ("embedding", np.inf, r"the embedding of sample 2 contains NaN or inf"),
    ("sample_weight", -0.5, r"sample_weight of sample 2 is -0.5"),
]


@pytest.mark.parametrize("kind", ["am", "local"])
@pytest.mark.parametrize("blob,value,message", BOTTOM_ERRORS)
def test_bad_bottoms_raise(caffe, tmp_path, kind, blob, value, message):
    net = caffe.Net(write_net(tmp_path, kind, {"num_classes": K}), caffe.TRAIN)
    fill(net, np.ones((N, D)), np.zeros(N), np.ones(N))
    if blob == "embedding":
        net.blobs[blob].data[2, 1] = value
    else:
        net.blobs[blob].data[2] = value
    name = "AMSoftmaxLossLayer" if kind == "am" else "LocalStructureLossLayer"
    with pytest.raises(ValueError, match=f"{name}: {message}"):
        net.forward()
    if kind == "local":
        assert net.params["loss"][1].data[0] == 0   # a failed forward does not count


@pytest.mark.parametrize("kind", ["am", "local"])
def test_bad_shapes_raise(caffe, tmp_path, kind):
    with pytest.raises(ValueError, match=r"must be \(N, D\) or \(N, D, 1, 1\), got shape"):
        caffe.Net(write_net(tmp_path, kind, {"num_classes": K}, embedding_shape=(N, D, 2, 2)),
                  caffe.TRAIN)
    net = caffe.Net(write_net(tmp_path, kind, {"num_classes": K}), caffe.TRAIN)
    net.blobs["label"].reshape(N + 1)
    with pytest.raises(ValueError, match=r"bottom 'label' has 7 values .* batch of 6"):
        net.reshape()


# --- parse_config (generic; the data layer uses it too) ---------------------------------------

@dataclass(frozen=True)
class _Inner:
    a: float = 1.0


@dataclass(frozen=True)
class _Outer:
    name: str
    count: int = 1
    limit: int | None = None
    ratios: list[float] = field(default_factory=list)
    pair: tuple[int, int] = (0, 0)
    inner: _Inner | None = None

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"'count' must be >= 0, got {self.count}")


def test_parse_config_types():
    cfg = parse_config(_Outer, '{"name": "x", "count": 4e1, "limit": null, "ratios": [1, 0.5],'
                               ' "pair": [2, 3], "inner": {"a": 2}}', "TestLayer")
    assert cfg == _Outer("x", 40, None, [1.0, 0.5], (2, 3), _Inner(2.0))
    assert isinstance(cfg.ratios[0], float) and isinstance(cfg.inner.a, float)
    assert parse_config(_Outer, '{"name": "y", "limit": 3}', "TestLayer").limit == 3
    with pytest.raises(ConfigError, match="missing the required key 'num_classes'"):
        parse_config(AMSoftmaxConfig, "", "AMSoftmaxLossLayer")   # empty param_str means {}
    sm = parse_config(LocalStructureConfig, '{"num_classes": 3, "smart_margins": {}}', "L")
    assert sm.smart_margins == SmartMarginsConfig()


@pytest.mark.parametrize("text,message", [
    ('{"name": "x", "count": true}', r"TestLayer: param_str key 'count' must be an integer, got true"),
    ('{"name": "x", "count": 1.5}', r"'count' must be an integer, got 1.5"),
    ('{"name": 3}', r"'name' must be a string"),
    ('{"name": "x", "ratios": [1, "a"]}', r"'ratios\[1\]' must be a number"),
    ('{"name": "x", "pair": [1]}', r"'pair' must be an array of 2 values"),
    ('{"name": "x", "limit": "3"}', r"'limit' must be an integer or null"),
    ('{"name": "x", "inner": {"b": 1}}', r"unknown param_str key 'inner.b'"),
    ('{"name": "x", "count": -2}', r"TestLayer: bad param_str: 'count' must be >= 0"),
    ('{"name": "x", "count": NaN}', r"'count' must be an integer, got NaN"),
    ('[1, 2]', r"TestLayer: param_str must be a JSON object"),
    ('{"name": "x",}', r"TestLayer: param_str is not valid JSON"),
])
def test_parse_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_Outer, text, "TestLayer")


# --- the generated train nets (the contract with generator/) ----------------------------------

GENERATED = sorted((Path(__file__).resolve().parent.parent / "prototxt").glob("*/train.prototxt"))


def generated_loss_layers(path: Path):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    net = text_format.Parse(path.read_text(), caffe_pb2.NetParameter())
    return [layer for layer in net.layer
            if layer.type == "Python" and layer.python_param.module == "layers.losses"]


@pytest.mark.skipif(not GENERATED, reason="no generated prototxt/*/train.prototxt")
def test_generated_train_nets_run_their_loss_layers(caffe, tmp_path):
    """Every generated train net's loss layers parse; the 'light' ones run forward/backward
    with their own param_str, loss weights and param specs (batch 8, 256-d, 751 classes)."""
    from caffe.proto import caffe_pb2
    configs = {"AMSoftmaxLossLayer": AMSoftmaxConfig,
               "LocalStructureLossLayer": LocalStructureConfig}
    for path in GENERATED:
        layers = generated_loss_layers(path)
        assert layers, path
        for layer in layers:
            parse_config(configs[layer.python_param.layer], layer.python_param.param_str,
                         layer.python_param.layer)
    light = [p for p in GENERATED if p.parent.name == "light"] or GENERATED[:1]
    net_param = caffe_pb2.NetParameter(name="generated_losses", force_backward=True)
    inp = net_param.layer.add(name="input", type="Input")
    for top, shape in (("embedding_calibrated", [8, 256, 1, 1]), ("embedding", [8, 256, 1, 1]),
                       ("label", [8]), ("sample_weight", [8])):
        inp.top.append(top)
        inp.input_param.shape.add(dim=shape)
    for layer in generated_loss_layers(light[0]):
        net_param.layer.add().CopyFrom(layer)
    proto = tmp_path / "generated_losses.prototxt"
    proto.write_text(str(net_param))
    net = caffe.Net(str(proto), caffe.TRAIN)
    rng = np.random.default_rng(8)
    for blob in ("embedding_calibrated", "embedding"):
        net.blobs[blob].data[...] = rng.standard_normal(net.blobs[blob].data.shape)
    net.blobs["label"].data[...] = np.repeat(rng.choice(751, 2, replace=False), 4)
    net.blobs["sample_weight"].data[...] = 1.0
    net.forward()
    net.backward()
    for blob in ("embedding_calibrated", "embedding"):
        assert np.abs(net.blobs[blob].diff).sum() > 0, blob
    for name, blobs in net.params.items():
        assert np.abs(blobs[0].diff).sum() > 0, name
