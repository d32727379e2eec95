"""The prototxt generator: the published RMNet graph, every variant's nets in real Caffe, OpenCV's
importer, refused input sizes, config and template errors, and the committed files.

The expected published graph below is written out by hand from the reference description of
Intel's deployed model (stem ReLU, ELU elsewhere, depthwise 3x3 with group = width, stride-2
depthwise + max-pool/1x1-conv shortcut in downsampling blocks, 4 / 1+8 / 1+10 / 1+11 blocks, global
max pooling head 256 -> 512 -> 256), independently of generator/plan.py.
"""
from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from generator import (ConfigError, GenerationError, InputSizeError, generate_all,
                       list_variants, load_variant, render)
from generator.__main__ import main as cli_main
from generator.output import COMMITTED, compare
from generator.render import TEMPLATES_DIR, annotate
from tests.conftest import REPO

VARIANTS = list_variants()
TABLE2 = ["t2_1_am_softmax", "t2_2_hsm", "t2_3_center", "t2_4_disabled_dropout", "t2_5_push",
          "t2_6_glob_push", "t2_7_smart_margins", "t2_8_weighted_hsm",
          "t2_9_increased_resolution"]


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    return generate_all()


def write_net(tmp_path: Path, text: str, name: str = "net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- the published graph ---------------------------------------------------------------------

def expected_published() -> list[tuple]:
    """(name, type, bottom, top, details) of the published deploy graph, by hand."""
    L = []

    def conv(prefix, bottom, n, k, s, p, act, group=1, top=None):
        blob = top or prefix
        L.append((f"{prefix}/conv", "Convolution", [bottom], [blob],
                  dict(num_output=n, kernel=k, stride=s, pad=p, group=group)))
        L.append((f"{prefix}/bn", "BatchNorm", [blob], [blob], {}))
        L.append((f"{prefix}/scale", "Scale", [blob], [blob], {}))
        if act:
            L.append((f"{prefix}/act", act, [blob], [blob], {}))

    L.append(("data", "Input", [], ["data"], dict(shape=[1, 3, 160, 64])))
    L.append(("input_norm/bn", "BatchNorm", ["data"], ["input_norm"], {}))
    L.append(("input_norm/scale", "Scale", ["input_norm"], ["input_norm"], {}))
    conv("stem", "input_norm", 32, 3, 2, 1, "ReLU")
    bottom, c_in = "stem", 32
    for stage, (c, n_plain, down) in enumerate([(32, 4, False), (64, 8, True), (128, 10, True),
                                                (256, 11, True)], start=1):
        for i in range(n_plain + (1 if down else 0)):
            b = f"bottleneck{stage}_{i}"
            s = c // 4
            stride = 2 if down and i == 0 else 1
            conv(f"{b}/dim_red", bottom, s, 1, 1, 0, "ELU")
            conv(f"{b}/dw", f"{b}/dim_red", s, 3, stride, 1, "ELU", group=s)
            conv(f"{b}/dim_inc", f"{b}/dw", c, 1, 1, 0, None)
            if stride == 2:
                L.append((f"{b}/shortcut/pool", "Pooling", [bottom], [f"{b}/shortcut/pool"],
                          dict(pool="MAX", kernel=2, stride=2)))
                conv(f"{b}/shortcut", f"{b}/shortcut/pool", c, 1, 1, 0, None)
                shortcut = f"{b}/shortcut"
            else:
                assert c == c_in
                shortcut = bottom
            L.append((f"{b}/sum", "Eltwise", [f"{b}/dim_inc", shortcut], [b], {}))
            L.append((f"{b}/act", "ELU", [b], [b], {}))
            bottom, c_in = b, c
    L.append(("head/pool", "Pooling", [bottom], ["head/pool"], dict(pool="MAX", glob=True)))
    conv("head/expand", "head/pool", 512, 1, 1, 0, "ELU")
    conv("head/embedding", "head/expand", 256, 1, 1, 0, None, top="embedding")
    return L


def describe(layer) -> tuple:
    """The same tuple as expected_published(), read from a LayerParameter."""
    d: dict = {}
    if layer.type == "Convolution":
        p = layer.convolution_param
        d = dict(num_output=p.num_output, kernel=p.kernel_size[0], stride=p.stride[0],
                 pad=p.pad[0], group=p.group)
    elif layer.type == "Pooling":
        p = layer.pooling_param
        d = dict(pool="MAX" if p.pool == 0 else str(p.pool))
        if p.global_pooling:
            d["glob"] = True
        else:
            d.update(kernel=p.kernel_size, stride=p.stride)
    elif layer.type == "Input":
        d = dict(shape=list(layer.input_param.shape[0].dim))
    return (layer.name, layer.type, list(layer.bottom), list(layer.top), d)


def test_published_graph_layer_by_layer():
    net = render("light", "deploy", deploy_output="embedding").net
    got = [describe(layer) for layer in net.layer]
    want = expected_published()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w
    # Block counts per stage: 4, 1+8, 1+10, 1+11 (36 blocks).
    sums = [layer.name for layer in net.layer if layer.type == "Eltwise"]
    assert [sum(n.startswith(f"bottleneck{s}_") for n in sums) for s in (1, 2, 3, 4)] == \
        [4, 9, 11, 12]
    # Hyper-parameters the tuples do not show.
    for layer in net.layer:
        if layer.type == "Convolution":
            assert layer.convolution_param.bias_term is False
        if layer.type == "BatchNorm":
            assert [p.lr_mult for p in layer.param] == [0, 0, 0]
            assert not layer.batch_norm_param.HasField("use_global_stats")
        if layer.type == "Scale":
            assert layer.scale_param.bias_term
        if layer.type == "ELU":
            assert layer.elu_param.alpha == 1
        if layer.type == "Eltwise":
            assert layer.eltwise_param.operation == 1   # SUM
    types = [layer.type for layer in net.layer]
    assert types.count("ReLU") == 1 and "Dropout" not in types and "Python" not in types


def test_deploy_outputs(caffe, tmp_path):
    calibrated = render("light", "deploy")                       # the variant default
    plain = render("light", "deploy", deploy_output="embedding")
    last = calibrated.net.layer[-1]
    assert (last.name, last.type, list(last.bottom), list(last.top)) == \
        ("calibration", "Scale", ["embedding"], ["embedding_calibrated"])
    assert last.scale_param.bias_term and last.scale_param.filler.value == 1
    assert [layer.name for layer in calibrated.net.layer[:-1]] == \
        [layer.name for layer in plain.net.layer]
    a = caffe.Net(write_net(tmp_path, calibrated.text, "a.prototxt"), caffe.TEST)
    b = caffe.Net(write_net(tmp_path, plain.text, "b.prototxt"), caffe.TEST)
    assert a.outputs == ["embedding_calibrated"] and b.outputs == ["embedding"]
    assert a.blobs["embedding_calibrated"].data.shape == (1, 256, 1, 1)
    count = lambda n: sum(x.data.size for blobs in n.params.values() for x in blobs)  # noqa: E731
    assert count(a) - count(b) == 512   # calibration: one scale + one bias per channel


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_deploy_net_instantiates(caffe, tmp_path, variant):
    r = render(variant, "deploy")
    net = caffe.Net(write_net(tmp_path, r.text), caffe.TEST)
    cfg = load_variant(variant).config
    assert net.blobs["data"].data.shape == (1, 3, cfg["input"]["height"], cfg["input"]["width"])
    assert net.blobs[net.outputs[0]].data.shape == (1, 256, 1, 1)
    h, w = cfg["input"]["height"] // 16, cfg["input"]["width"] // 16
    assert net.blobs["bottleneck4_11"].data.shape == (1, 256, h, w)


def test_activation_variant_replaces_every_elu():
    elu = render("light", "deploy").net
    relu = render("light_relu", "deploy").net
    assert [x.type for x in relu.layer].count("ELU") == 0
    n_elu = [x.type for x in elu.layer].count("ELU")
    assert n_elu == 36 * 3 + 1        # 2 in each branch + 1 after each sum, + head/expand
    assert [x.type for x in relu.layer].count("ReLU") == n_elu + 1    # + the stem's
    assert [x.name for x in relu.layer] == [x.name for x in elu.layer]


# --- OpenCV ----------------------------------------------------------------------------------

def randomise(net, layers: dict, seed: int, x: np.ndarray | None = None) -> None:
    """Random weights and random BatchNorm statistics (positive variances).

    With an input batch ``x``, each BatchNorm's statistics are drawn around the mean and variance
    its input really has (the net is run up to it), so activations stay O(1) through the 36
    blocks and the output depends on the image: a meaningful net to compare two engines on."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        kind = layers[name].type
        if kind == "Scale":
            # Residual branches start small (as trained ResNets' do), so the sums stay O(1).
            lo, hi = (0.1, 0.3) if name.endswith("/dim_inc/scale") else (0.5, 1.5)
            blobs[0].data[...] = rng.uniform(lo, hi, blobs[0].data.shape)
            blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)
        elif kind != "BatchNorm":
            for b in blobs:
                b.data[...] = rng.normal(0, np.sqrt(2.0 / b.data[0].size), b.data.shape)
    if x is not None:
        net.blobs["data"].reshape(*x.shape)
        net.blobs["data"].data[...] = x
    names = list(net._layer_names)
    done = 0
    for i, name in enumerate(names):
        if name not in layers or layers[name].type != "BatchNorm":   # (Caffe's split layers)
            continue
        blobs = net.params[name]
        c = blobs[0].data.size
        factor = rng.uniform(0.5, 2.0)          # Caffe divides the stored stats by it
        if x is None:
            mean, var = rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)
        else:
            if i > done:
                net.forward(start=names[done], end=names[i - 1])
            a = net.blobs[layers[name].bottom[0]].data
            a = a.transpose(1, 0, 2, 3).reshape(c, -1)
            mean = a.mean(axis=1) + rng.normal(0, 0.1, c) * a.std(axis=1)
            var = (a.var(axis=1) + 0.1 * a.var() + 1e-3) * rng.uniform(0.8, 1.25, c)
            done = i
        blobs[0].data[...] = mean * factor
        blobs[1].data[...] = var * factor
        blobs[2].data[...] = factor


@pytest.mark.parametrize("output", ["embedding_calibrated", "embedding"])
def test_opencv_caffe_importer_matches_pycaffe(caffe, tmp_path, output):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer (removed in OpenCV 5); "
                    f"needs opencv-python-headless < 5")
    r = render("light", "deploy", deploy_output=output)
    proto = write_net(tmp_path, r.text)
    net = caffe.Net(proto, caffe.TEST)
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (10, 3, 160, 64)).astype(np.float32)
    randomise(net, layers_by_name(r.net), seed=3, x=x[:8])
    model = str(tmp_path / "random.caffemodel")
    net.save(model)
    x = x[8:]                          # other images than the statistics came from
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    want = net.forward()[output].copy()
    cv = cv2.dnn.readNetFromCaffe(proto, model)
    cv.setInput(x)
    got = cv.forward()
    assert got.shape == want.shape == (2, 256, 1, 1)
    assert want.std() > 0.1 and abs(want[0] - want[1]).max() > 0.1    # not a degenerate net
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# --- input sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width,where", [(150, 64, "bottleneck2_0"),
                                                (168, 64, "bottleneck4_0"),
                                                (160, 72, "bottleneck4_0"),
                                                (160, 52, "bottleneck3_0")])
def test_odd_side_at_a_downsampling_block_is_refused(height, width, where):
    with pytest.raises(InputSizeError) as e:
        render("light", "deploy", overrides={"input": {"height": height, "width": width}})
    msg = str(e.value)
    assert f"{height}x{width}" in msg and where in msg
    assert "multiples of 16" in msg and "light.json" in msg


def test_multiples_of_16_work(caffe, tmp_path):
    r = render("light", "deploy", overrides={"input": {"height": 176, "width": 80}})
    net = caffe.Net(write_net(tmp_path, r.text), caffe.TEST)
    assert net.blobs["bottleneck4_11"].data.shape == (1, 256, 11, 5)
    # The shortcut pool and the strided depthwise conv agree at every downsampling block.
    for s in (2, 3, 4):
        assert net.blobs[f"bottleneck{s}_0/shortcut/pool"].data.shape[2:] == \
            net.blobs[f"bottleneck{s}_0/dw"].data.shape[2:]


# --- train and test nets (structure; Caffe instantiation further down) -------------------------

def layers_by_name(net) -> dict:
    return {layer.name: layer for layer in net.layer}


def param_str(layer) -> dict:
    return json.loads(layer.python_param.param_str)


def test_dropout_only_in_train_nets_on_every_residual_branch():
    cfg = load_variant("t2_1_am_softmax").config
    train = render("t2_1_am_softmax", "train").net
    names = [layer.name for layer in train.layer]
    drops = [layer for layer in train.layer if layer.type == "Dropout"]
    assert len(drops) == 36
    for d in drops:
        block = d.name.rsplit("/", 1)[0]
        blob = f"{block}/dim_inc"
        assert list(d.bottom) == list(d.top) == [blob]
        assert d.dropout_param.dropout_ratio == pytest.approx(cfg["dropout"]["ratio"])
        i = names.index(d.name)
        assert names[i - 1] == f"{block}/dim_inc/scale"         # after the expand's BN/Scale
        later = names.index(f"{block}/sum")
        assert i < later                                        # before the SUM
    for phase in ("test", "deploy"):
        net = render("t2_1_am_softmax", phase).net
        assert not [x for x in net.layer if x.type == "Dropout" or "dropout" in x.name]
    off = render("t2_1_am_softmax", "train", overrides={"dropout": {"enabled": False}}).net
    assert not [x for x in off.layer if "dropout" in x.name]
    ratio = render("t2_1_am_softmax", "train", overrides={"dropout": {"ratio": 0.25}}).net
    assert {x.dropout_param.dropout_ratio for x in ratio.layer if x.type == "Dropout"} == {0.25}


def test_late_switch_off_uses_the_native_scheduled_dropout():
    net = render("t2_4_disabled_dropout", "train").net
    drops = [x for x in net.layer if x.name.endswith("/dropout")]
    assert len(drops) == 36 and {x.type for x in drops} == {"Dropout"}
    seeds = set()
    for d in drops:
        p = d.dropout_param
        assert (round(p.dropout_ratio, 6), p.switch_off_iter, p.iter_size) == (0.1, 100000, 1)
        assert [(x.lr_mult, x.decay_mult) for x in d.param] == [(0, 0)]   # the pass counter
        seeds.add(p.seed)
    assert seeds == set(range(36))                # each block its own mask stream
    other = render("t2_4_disabled_dropout", "train", overrides={"seed": 2}).net
    assert {x.dropout_param.seed for x in other.layer if x.name.endswith("/dropout")} == \
        set(range(2000, 2036))
    plain = render("t2_3_center", "train").net    # no switch-off: Caffe's plain Dropout
    assert {x.dropout_param.HasField("switch_off_iter") for x in plain.layer
            if x.name.endswith("/dropout")} == {False}


def test_table2_rows_add_up():
    """Each row's train net adds what its row says to the previous row's."""
    def summary(variant):
        net = layers_by_name(render(variant, "train").net)
        am = net["loss/am_softmax"]
        local = net.get("loss/local")
        fb = net.get("hsm_feedback")
        data = param_str(net["market_data"])
        return {
            "am": (list(am.bottom), list(am.loss_weight)),
            "local": None if local is None else (param_str(local)["center"],
                                                  param_str(local)["push"],
                                                  param_str(local)["glob_push"],
                                                  param_str(local)["smart_margins"],
                                                  list(local.loss_weight)),
            "feedback": None if fb is None else (list(fb.bottom)[1:], param_str(fb)["weights"]),
            "mining": (data["mining"], data["weighted"]),
            "size": (data["height"], data["width"]),
            "dropout": {(x.type, x.dropout_param.switch_off_iter) for x in net.values()
                        if x.name.endswith("/dropout")},
        }
    rows = {v: summary(v) for v in TABLE2}
    am = (["embedding_calibrated", "label", "sample_weight"], [1.0, 0.0])
    assert rows["t2_1_am_softmax"] == {"am": am, "local": None, "feedback": None,
                                       "mining": (False, False), "size": (160, 64),
                                       "dropout": {("Dropout", -1)}}
    assert rows["t2_2_hsm"]["feedback"] == (["loss/am_softmax/per_sample"], [1.0])
    assert rows["t2_2_hsm"]["mining"] == (True, False)
    assert rows["t2_3_center"]["local"] == (True, False, False, None, [1.0, 0.0, 0.0, 0.0])
    assert rows["t2_4_disabled_dropout"]["dropout"] == {("Dropout", 100000)}
    assert rows["t2_5_push"]["local"] == (True, True, False, None, [1.0, 1.0, 0.0, 0.0])
    assert rows["t2_6_glob_push"]["local"] == (True, True, True, None, [1.0, 1.0, 1.0, 0.0])
    assert rows["t2_7_smart_margins"]["local"][3] == {"start": 0.15, "ramp_iters": 40000}
    assert rows["t2_8_weighted_hsm"]["mining"] == (True, True)
    # Weighted ranking: AM-Softmax w1, then center w2, push (not ranked, paper step b), gpush w3.
    assert rows["t2_8_weighted_hsm"]["feedback"] == (
        ["loss/am_softmax/per_sample", "loss/local/per_sample"], [1.0, 1.0, 0.0, 1.0])
    assert rows["t2_9_increased_resolution"]["size"] == (384, 128)
    # Cumulative: each row differs from the previous in its own entry only.
    changed = {"t2_2_hsm": {"feedback", "mining"}, "t2_3_center": {"local"},
               "t2_4_disabled_dropout": {"dropout"}, "t2_5_push": {"local"},
               "t2_6_glob_push": {"local"}, "t2_7_smart_margins": {"local"},
               "t2_8_weighted_hsm": {"feedback", "mining"},
               "t2_9_increased_resolution": {"size"}}
    for prev, row in zip(TABLE2, TABLE2[1:]):
        diff = {k for k in rows[row] if rows[row][k] != rows[prev][k]}
        assert diff == changed[row], row
    # Table 3: light is the row-8 net, strong the row-9 net (same bodies, different names).
    strip = lambda t: t.split("\n", 2)[2].replace("rmnet_strong", "X").replace(  # noqa: E731
        "rmnet_t2_9_increased_resolution", "X")
    assert strip(render("strong", "train").text) == strip(
        render("t2_9_increased_resolution", "train").text)


def test_loss_weights_and_margins_come_from_the_config():
    over = {"losses": {"am_softmax": {"weight": 0.5, "scale": 16.0, "margin": 0.2},
                       "center": {"weight": 0.1}, "push": {"weight": 0.3, "margin": 0.5},
                       "glob_push": {"weight": 0.2, "margin": 0.4}},
            "hsm": {"rank_with_push": True}, "seed": 7}
    net = layers_by_name(render("light", "train", overrides=over).net)
    am, local = net["loss/am_softmax"], net["loss/local"]
    assert list(am.loss_weight) == [0.5, 0.0]
    assert param_str(am) == {"num_classes": 751, "scale": 16.0, "margin": 0.2, "seed": 7}
    # tops: center (w2), push (w4), glob_push (w3), per-sample
    assert list(local.top) == ["loss/center", "loss/push", "loss/glob_push",
                               "loss/local/per_sample"]
    assert list(local.loss_weight) == pytest.approx([0.1, 0.3, 0.2, 0.0])
    p = param_str(local)
    assert (p["push_margin"], p["glob_push_margin"], p["seed"]) == (0.5, 0.4, 8)
    assert [(x.lr_mult, x.decay_mult) for x in local.param] == [(1, 0), (0, 0)]
    assert param_str(net["hsm_feedback"])["weights"] == pytest.approx([0.5, 0.1, 0.3, 0.2])


def test_data_section_passes_through_with_derived_keys():
    net = layers_by_name(render("strong", "train",
                                overrides={"data": {"root": "/x", "workers": 3}}).net)
    p = param_str(net["market_data"])
    assert p["root"] == "/x" and p["workers"] == 3 and p["batch_size"] == 64
    assert (p["height"], p["width"], p["num_classes"], p["mining"], p["weighted"]) == \
        (384, 128, 751, True, True)
    assert list(net["market_data"].top) == ["data", "label", "sample_weight", "sample_id"]
    test = layers_by_name(render("strong", "test").net)
    assert "hsm_feedback" not in test and test["market_data"].python_param.layer == "MarketDataLayer"
    assert set(test["silence"].bottom) == {"sample_id", "loss/am_softmax/per_sample",
                                           "loss/local/per_sample"}


def test_names_are_shared_by_train_test_deploy_and_variants(caffe, tmp_path):
    learnable = lambda net: {x.name for x in net.layer  # noqa: E731
                             if x.type in ("Convolution", "BatchNorm", "Scale")}
    deploy = learnable(render("light", "deploy").net)
    assert learnable(render("light", "train").net) == deploy
    assert learnable(render("light", "test").net) == deploy
    assert learnable(render("t2_1_am_softmax", "deploy").net) == deploy
    assert learnable(render("strong", "deploy").net) == deploy
    # Weights move by name: light's deploy weights load into strong's deploy net.
    a = caffe.Net(write_net(tmp_path, render("light", "deploy").text, "a.prototxt"), caffe.TEST)
    randomise(a, layers_by_name(render("light", "deploy").net), seed=5)
    a.save(str(tmp_path / "a.caffemodel"))
    b = caffe.Net(write_net(tmp_path, render("strong", "deploy").text, "b.prototxt"), caffe.TEST,
                  weights=str(tmp_path / "a.caffemodel"))
    for name, blobs in a.params.items():
        for x, y in zip(blobs, b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)


# --- train and test nets in Caffe (need the project's Python layers) ---------------------------

def _layers_ready() -> str | None:
    """None when the layers the train/test nets name can be imported, else why not."""
    missing = []
    for module in ("layers.losses", "layers.data", "layers.dropout"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
    if missing:
        return ("train/test nets use Python layers that are not importable yet: "
                + "; ".join(missing))
    return None


def make_market(root: Path, n_ids: int = 4, per_id: int = 3) -> None:
    """A tiny Market-1501-layout folder with real JPEGs (distinct per identity)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        (root / split).mkdir(parents=True)
    for pid in range(1, n_ids + 1):
        colour = rng.integers(0, 255, 3)
        for k in range(per_id):
            img = np.clip(colour + rng.normal(0, 20, (128, 64, 3)), 0, 255).astype(np.uint8)
            cam = k % 6 + 1
            cv2.imwrite(str(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg"),
                        img)
            cv2.imwrite(str(root / "bounding_box_test" / f"{pid + 100:04d}_c{cam}s1_{k:06d}_00.jpg"),
                        img)
        cv2.imwrite(str(root / "query" / f"{pid + 100:04d}_c6s1_000099_00.jpg"), img)


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_and_test_nets_instantiate(caffe, tmp_path, variant):
    reason = _layers_ready()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "market"
    make_market(root)
    over = {"num_classes": 4, "data": {"root": str(root), "batch_size": 8, "images_per_id": 2,
                                       "workers": 0}}
    for phase, caffe_phase in (("train", caffe.TRAIN), ("test", caffe.TEST)):
        r = render(variant, phase, overrides=over)
        net = caffe.Net(write_net(tmp_path, r.text, f"{phase}.prototxt"), caffe_phase)
        assert "loss/am_softmax" in net.outputs
        # One real step through every part of the fullest net. (Not the TEST net: untrained,
        # its BatchNorm global statistics are still zero.)
        if variant == "light" and phase == "train":
            net.forward()
            for out in net.outputs:
                assert np.isfinite(net.blobs[out].data).all(), out
            net.backward()
            assert np.abs(net.params["stem/conv"][0].diff).sum() > 0


# --- config files --------------------------------------------------------------------------

def variants_dir(tmp_path: Path, **files: dict) -> Path:
    d = tmp_path / "variants"
    d.mkdir()
    shutil.copy(REPO / "generator" / "variants" / "_base.json", d / "_base.json")
    for name, obj in files.items():
        (d / f"{name}.json").write_text(json.dumps(obj))
    return d


def test_extends_merges_objects_and_replaces_values(tmp_path):
    d = variants_dir(tmp_path, a={"extends": "_base", "losses": {"push": {"margin": 0.3}}},
                     b={"extends": "a", "input": {"width": 128}})
    v = load_variant("b", variants_dir=d)
    cfg = v.config
    assert cfg["losses"]["push"] == {"enabled": False, "weight": 1.0, "margin": 0.3}
    assert cfg["input"] == {"height": 160, "width": 128}
    assert [p.name for p in v.files] == ["_base.json", "a.json", "b.json"]
    from generator.config import list_variants as lv
    assert lv(d) == ["a", "b"]                     # _base is abstract


@pytest.mark.parametrize("obj,needle", [
    ({"extends": "_base", "losses": {"centre": {"enabled": True}}}, "unknown key 'losses.centre'"),
    ({"extends": "_base", "dropuot": {}}, "unknown key 'dropuot'"),
    ({"extends": "_base", "activation": "gelu"}, "'activation' must be one of 'elu', 'relu'"),
    ({"extends": "_base", "dropout": {"ratio": 1.5}}, "'dropout.ratio' must be a number"),
    ({"extends": "_base", "data": {"height": 100}}, "'data.height' is set by the generator"),
    ({"extends": "_base", "hsm": {"weighted": True}}, "hsm.weighted is true but hsm.enabled"),
    ({"extends": "nowhere"}, "extends 'nowhere'"),
    ({"extends": "bad"}, "'extends' loops"),
    ({"input": {"height": 160}}, "'input.width' is not set"),
])
def test_bad_config_names_the_file(tmp_path, obj, needle):
    d = variants_dir(tmp_path, bad=obj)
    with pytest.raises(ConfigError) as e:
        load_variant("bad", variants_dir=d)
    assert needle in str(e.value)
    assert "bad.json" in str(e.value)


def test_invalid_json_names_file_and_line(tmp_path):
    d = variants_dir(tmp_path)
    (d / "broken.json").write_text('{\n  "extends": "_base",\n  "seed": 1,,\n}\n')
    with pytest.raises(ConfigError, match=r"broken\.json: invalid JSON at line 3"):
        load_variant("broken", variants_dir=d)


def test_shipped_variants_are_all_valid():
    assert set(TABLE2) | {"light", "strong", "light_relu", "finetune", "scratch_small"} == set(VARIANTS)
    for v in VARIANTS:
        load_variant(v)


# --- templates -----------------------------------------------------------------------------

def broken_templates(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    d = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, d)
    text = (d / "blocks.j2").read_text()
    assert text.count(old) == 1
    line = text[: text.index(old)].count("\n") + 1
    (d / "blocks.j2").write_text(text.replace(old, new))
    return d, line


def test_unknown_proto_field_names_template_and_line(tmp_path):
    d, line = broken_templates(tmp_path, "kernel_size: {{ kernel }}", "kernel_sise: {{ kernel }}")
    with pytest.raises(GenerationError) as e:
        render("light", "deploy", templates_dir=d)
    msg = str(e.value)
    assert f"blocks.j2 line {line}" in msg and "kernel_sise" in msg and "light" in msg


def test_undefined_template_variable_names_template_and_line(tmp_path):
    d, line = broken_templates(tmp_path, "dropout_param { dropout_ratio: {{ cfg.ratio }} }",
                               "dropout_param { dropout_ratio: {{ cfg.ratoi }} }")
    with pytest.raises(GenerationError) as e:
        render("t2_1_am_softmax", "train", templates_dir=d)
    assert f"blocks.j2 line {line}" in str(e.value) and "ratoi" in str(e.value)


def test_miswired_blob_is_caught_at_generation(tmp_path):
    d, _ = broken_templates(tmp_path, 'bottom: "{{ b.name }}/dim_inc"',
                            'bottom: "{{ b.name }}/dim_incc"')
    with pytest.raises(GenerationError, match=r"reads blob 'bottleneck1_0/dim_incc'"):
        render("light", "deploy", templates_dir=d)


def test_annotation_keeps_line_numbers_and_skips_tags():
    src = '{% if x %}\nlayer {\n{#- a\n comment -#}\n  name: "{{ n }}"\n{% endif %}'
    out = annotate(src, "t.j2").split("\n")
    assert len(out) == 6
    assert out[0] == "{% if x %}" and out[2] == "{#- a" and out[3] == " comment -#}"
    assert out[1].endswith("#@t.j2:2") and out[4].endswith("#@t.j2:5")


# --- the committed files -----------------------------------------------------------------

def test_committed_prototxt_match_fresh_output(fresh):
    out = REPO / "prototxt"
    problems = compare(out)
    # any prototxt there, generated-marked or not, must come from a variant
    extra = {p.relative_to(out).as_posix() for p in out.glob("*/*.prototxt")} - set(fresh)
    problems += [f"not produced by any variant: {rel}" for rel in sorted(extra)]
    assert not problems, ("prototxt/ is out of date; run `.venv/bin/python -m generator --out "
                          "prototxt`: " + ", ".join(problems))
    assert len(fresh) == 3 * len(COMMITTED)
    # only the models a user runs by name are committed; no committed net is a copy of another
    assert sorted({rel.split("/")[0] for rel in fresh}) == sorted(COMMITTED)
    assert len(set(fresh.values())) == len(fresh)


def test_ablation_rows_render_on_demand(tmp_path, capsys):
    out, solvers = tmp_path / "prototxt", tmp_path / "solvers"
    assert cli_main(["--out", str(out), "--solvers", str(solvers), "--ablations"]) == 0
    assert sorted(p.name for p in out.iterdir()) == TABLE2
    assert sorted(p.stem for p in solvers.iterdir()) == TABLE2
    for row in TABLE2:
        for phase in ("train", "test", "deploy"):
            assert (out / row / f"{phase}.prototxt").read_text() == render(row, phase).text
        s = (solvers / f"{row}.prototxt").read_text()
        assert f'net: "{out.as_posix()}/{row}/train.prototxt"' in s
    assert cli_main(["--out", str(out), "--solvers", str(solvers), "--ablations",
                     "--check"]) == 0
    with pytest.raises(SystemExit):
        cli_main(["--out", str(out), "--ablations", "--variant", "light"])


def test_output_is_canonical_and_deterministic(fresh):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    text = fresh["light/train.prototxt"]
    assert render("light", "train").text == text
    body = "\n".join(line for line in text.split("\n") if not line.startswith("#"))
    net = text_format.Parse(body, caffe_pb2.NetParameter())
    assert text_format.MessageToString(net, as_utf8=True) == body


def test_cli_writes_checks_and_lists(tmp_path, capsys):
    out = tmp_path / "prototxt"
    assert cli_main(["--out", str(out), "--variant", "light"]) == 0
    assert sorted(p.name for p in (out / "light").iterdir()) == \
        ["deploy.prototxt", "test.prototxt", "train.prototxt"]
    assert (out / "light" / "deploy.prototxt").read_text() == render("light", "deploy").text
    assert cli_main(["--out", str(out), "--variant", "light", "--check"]) == 0
    (out / "light" / "test.prototxt").write_text("# RMNet edited\n")
    assert cli_main(["--out", str(out), "--variant", "light", "--check"]) == 1
    assert compare(out, ["light"]) == [f"differs from fresh output: {out}/light/test.prototxt"]
    capsys.readouterr()
    assert cli_main(["--list"]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert [name for name, _ in listed] == VARIANTS
    assert {name for name, kind in listed if kind == "committed"} == set(COMMITTED)
    assert cli_main(["--variant", "light", "--phase", "deploy", "--deploy-output",
                     "embedding"]) == 0
    assert capsys.readouterr().out == render("light", "deploy", deploy_output="embedding").text


def test_cli_unknown_variant_and_stale_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["--out", str(tmp_path), "--variant", "no_such_variant"])
    assert "unknown variant 'no_such_variant'" in capsys.readouterr().err
    from generator.output import stale_files
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "train.prototxt").write_text("# RMNet train net of variant 'gone'\n")
    (tmp_path / "gone" / "mine.prototxt").write_text("name: \"hand-written\"\n")
    assert stale_files(tmp_path, {}) == [tmp_path / "gone" / "train.prototxt"]


# --- solvers ---------------------------------------------------------------------------------

def test_committed_solvers_match_fresh_output_and_resolve_from_the_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)      # the solvers name their nets relative to the repo root
    problems = compare(Path("prototxt"), None, Path("solvers"))
    assert not problems, "run `make prototxt`: " + ", ".join(problems)
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    from generator import solver_name
    names = sorted(p.stem for p in (REPO / "solvers").glob("*.prototxt"))
    assert names == sorted(solver_name(v) for v in COMMITTED)
    assert "market" in names and "market_strong" in names
    for path in (REPO / "solvers").glob("*.prototxt"):
        s = text_format.Parse(path.read_text(), caffe_pb2.SolverParameter())
        assert (REPO / s.net).is_file() and (REPO / s.test_net[0]).is_file(), path


def test_market_solver_is_the_papers_schedule():
    from generator import render_solver
    s = render_solver("light").solver
    assert s.net == "prototxt/light/train.prototxt" and list(s.test_net) == ["prototxt/light/test.prototxt"]
    assert (s.lr_policy, s.stepsize) == ("step", 50000)
    assert s.base_lr == pytest.approx(0.01) and s.gamma == pytest.approx(0.1)   # float32 fields
    assert s.momentum == pytest.approx(0.9) and s.weight_decay == pytest.approx(1e-4)
    assert s.snapshot_prefix == "snapshots/light" and s.snapshot > 0
    # Dropout is switched off in the last, lr 1e-4 phase, before training ends.
    switch = load_variant("light").config["dropout"]["switch_off_iter"]
    assert 2 * s.stepsize <= switch < s.max_iter


def test_scratch_small_is_a_short_schedule_from_3e2_to_3e3():
    from generator import render_solver
    s = render_solver("scratch_small").solver
    cfg = load_variant("scratch_small").config

    def lr(it: int) -> float:          # Caffe's "step" policy
        return s.base_lr * s.gamma ** (it // s.stepsize)
    assert s.lr_policy == "step" and s.max_iter == 4200 and s.snapshot == 600
    assert lr(0) == pytest.approx(0.03) and lr(s.max_iter - 1) == pytest.approx(0.003, rel=1e-4)
    assert s.stepsize * 2 > s.max_iter                         # one decay, no 3e-4 phase
    # the paper's ramps and the dropout switch-off fall inside the run, dropout off at 3e-3
    assert lr(cfg["dropout"]["switch_off_iter"]) == pytest.approx(0.003, rel=1e-4)
    assert cfg["dropout"]["switch_off_iter"] < s.max_iter
    assert cfg["data"]["difficulty_ramp_iters"] < s.max_iter
    assert cfg["losses"]["smart_margins"]["ramp_iters"] < s.max_iter
    train = render("scratch_small", "train").net
    am = [json.loads(l.python_param.param_str) for l in train.layer
          if l.python_param.layer == "AMSoftmaxLossLayer"]
    assert len(am) == 1 and am[0]["margin"] == 0.0 and am[0]["scale"] == 30.0
    bns = [l.batch_norm_param for l in train.layer if l.type == "BatchNorm"]
    assert bns and all(b.moving_average_fraction == pytest.approx(0.99) for b in bns)


def test_batchnorm_moving_average_fraction_reaches_every_training_batchnorm():
    def fractions(net):
        return [(l.batch_norm_param.HasField("moving_average_fraction"),
                 round(l.batch_norm_param.moving_average_fraction, 6),
                 l.batch_norm_param.use_global_stats)
                for l in net.layer if l.type == "BatchNorm"]
    default = fractions(render("light", "train").net)
    assert default and all(f == (False, 0.999, False) for f in default)   # Caffe's default, unwritten
    faster = {"batchnorm": {"moving_average_fraction": 0.99}}
    written = fractions(render("light", "train", overrides=faster).net)
    assert len(written) == len(default) and all(f == (True, 0.99, False) for f in written)
    deploy = render("light", "deploy", overrides=faster).net
    assert all(not l.batch_norm_param.HasField("moving_average_fraction")
               for l in deploy.layer if l.type == "BatchNorm")
    kept = {"batchnorm": {"moving_average_fraction": 0.99, "use_global_stats": True}}
    assert all(f == (False, 0.999, True)        # stored statistics keep no running average
               for f in fractions(render("light", "train", overrides=kept).net))
    with pytest.raises(ConfigError, match="moving_average_fraction"):
        render("light", "train", overrides={"batchnorm": {"moving_average_fraction": 0}})


def test_iter_size_reaches_the_layers_that_count_iterations():
    net = render("light", "train", overrides={"solver": {"iter_size": 3}}).net
    counted = [json.loads(l.python_param.param_str)["iter_size"] for l in net.layer
               if l.python_param.layer == "LocalStructureLossLayer"]
    counted += [l.dropout_param.iter_size for l in net.layer
                if l.type == "Dropout" and l.dropout_param.HasField("switch_off_iter")]
    assert len(counted) == 37 and set(counted) == {3}


def test_switch_off_after_the_end_of_training_is_refused():
    with pytest.raises(ConfigError, match="never be switched off"):
        load_variant("light", overrides={"solver": {"max_iter": 1000}})


def test_write_run_gives_a_self_contained_run(caffe, tmp_path):
    from generator import write_run
    paths = write_run("t2_1_am_softmax", tmp_path / "run",
                      overrides={"data": {"root": "/data/m"}, "num_classes": 10})
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    s = text_format.Parse(paths["solver"].read_text(), caffe_pb2.SolverParameter())
    assert s.net == str(paths["train"]) and list(s.test_net) == [str(paths["test"])]
    assert s.snapshot_prefix == str(paths["snapshots"] / "t2_1_am_softmax")
    assert paths["snapshots"].is_dir()
    assert '\\"root\\": \\"/data/m\\"' in paths["train"].read_text()


# --- param_str checked at render time with the layers' own dataclasses ---------------------------

@pytest.mark.parametrize("overrides,needle", [
    ({"data": {"batchsize": 3}}, "unknown param_str key 'batchsize'"),
    ({"data": {"workers": -1}}, "workers must be >= 0"),
    ({"losses": {"smart_margins": {"start": 0.1, "ramp": 5}}}, "unknown param_str key "
                                                                "'smart_margins.ramp'"),
    ({"losses": {"smart_margins": {"start": 0.9}}}, "'smart_margins.start' must be <="),
])
def test_a_bad_layer_config_is_refused_when_rendering(overrides, needle):
    with pytest.raises(GenerationError) as e:
        render("t2_7_smart_margins", "train", overrides=overrides)
    msg = str(e.value)
    assert needle in msg
    assert "t2_7_smart_margins" in msg and "layer '" in msg       # names the net and the layer


def test_every_python_layer_of_every_net_is_in_the_registry():
    from layers.registry import PARAM_CONFIGS
    seen = set()
    for name in list_variants():
        for phase in ("train", "test"):
            for layer in render(name, phase).net.layer:
                if layer.type == "Python":
                    seen.add((layer.python_param.module, layer.python_param.layer))
    from generator.pretrain import render_pretrain
    seen |= {(layer.python_param.module, layer.python_param.layer)
             for layer in render_pretrain(num_classes=2, root="classes").net.layer
             if layer.type == "Python"}
    # every registered layer is used by some net (but the Python twin of the native scheduled
    # Dropout, kept for users of stock Caffe), and each registered module really has it
    assert seen == set(PARAM_CONFIGS) - {("layers.dropout", "ScheduledDropoutLayer")}
    for module, cls in PARAM_CONFIGS:
        assert hasattr(importlib.import_module(module), cls)
