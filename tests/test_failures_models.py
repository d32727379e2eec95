"""Damaged and inconsistent models under failure: a deploy net Caffe would abort on (an Eltwise
over blobs of different shapes, and the other shape checks Caffe makes while it builds a net) is
one line naming the layer before Caffe sees it, on every path that loads through pycaffe; and
what Caffe accepts is never refused (each refusal below is shown to abort a real Caffe). Then
the export check's scale, the Embedder's fallback to pycaffe and its aspect-ratio warning, and
what the re-run probe across tools/ found (Caffe's and FAISS's writers on a full disk, flags
that would have been ignored, out-of-range values, a train net given as the deploy net)."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rmnet.caffe.protos import parse_net, read_net
from rmnet.caffe.shapes import ShapeError, check_shapes, pool_output_size
from tests.absent_packages import installed, needs
from tests.conftest import REPO
from tests.test_failures_outputs import features_file, one_line, run_main, small_fs  # noqa: F401

LIGHT = REPO / "prototxt" / "light" / "deploy.prototxt"

INPUT = ('layer {{ name: "data" type: "Input" top: "data" '
         'input_param {{ shape {{ dim: 1 dim: 3 dim: {h} dim: {w} }} }} }}\n')


def conv(name: str, bottom: str, out: int = 4, k: int = 3, s: int = 1, p: int = 1,
         group: int = 1) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {out} kernel_size: {k} stride: {s} pad: {p} '
            f'group: {group} weight_filler {{ type: "msra" }} }} }}\n')


def eltwise_net(stride_b: int) -> str:
    return (INPUT.format(h=16, w=8) + conv("a", "data") + conv("b", "data", s=stride_b)
            + 'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }\n')


# Nets Caffe builds (the pre-check must pass them, with Caffe's shapes) ...
ACCEPTED = {
    # padded ceil-mode pooling: Caffe 5x5, floor 4x4 (the ONNX exporter refuses this one)
    "padded_ceil_pooling": INPUT.format(h=8, w=8) + conv("c", "data") +
    'layer { name: "p" type: "Pooling" bottom: "c" top: "p" '
    'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }\n',
    # a kernel one wider than the input: C++ division truncates (-1 / 2 == 0), output 1
    "kernel_wider_than_input": INPUT.format(h=4, w=4) + conv("c", "data", k=5, s=2, p=0),
    "eltwise_sum_coefficients": eltwise_net(1).replace(
        'top: "sum" }', 'top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -1 } }'),
    "concat_channels": INPUT.format(h=8, w=8) + conv("a", "data") + conv("b", "data", out=2)
    + 'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }\n',
    "depthwise_and_global": INPUT.format(h=8, w=8) + conv("a", "data", out=6)
    + conv("dw", "a", out=6, group=6, s=2)
    + 'layer { name: "g" type: "Pooling" bottom: "dw" top: "g" '
      'pooling_param { pool: AVE global_pooling: true } }\n'
    + 'layer { name: "fc" type: "InnerProduct" bottom: "g" top: "fc" '
      'inner_product_param { num_output: 5 } }\n',
    "legacy_input": 'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
    + conv("a", "data"),
    "train_only_layer_skipped": eltwise_net(1) + conv("odd", "sum", group=3).replace(
        '"odd" ', '"odd" include { phase: TRAIN } ', 1),
}

# ... and nets Caffe aborts on (glog CHECK): refused first, naming the layer.
REFUSED = {
    "eltwise_shape_mismatch": (eltwise_net(2), "layer 'sum' (type Eltwise): bottoms have "
                               "different shapes (a (1, 4, 16, 8), b (1, 4, 8, 4))"),
    "eltwise_coefficient_count": (eltwise_net(1).replace(
        'top: "sum" }', 'top: "sum" eltwise_param { coeff: 1 } }'), "1 coefficients for 2"),
    "concat_spatial_mismatch": (INPUT.format(h=8, w=8) + conv("a", "data") +
                                conv("b", "data", s=2) +
                                'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" '
                                'top: "cat" }\n', "layer 'cat' (type Concat): bottoms differ"),
    "group_does_not_divide": (INPUT.format(h=8, w=8) + conv("a", "data", group=2),
                              "group 2 does not divide the 3 input channels"),
    "pooling_pad_not_below_kernel": (INPUT.format(h=8, w=8) +
                                     'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                                     'pooling_param { pool: MAX kernel_size: 2 pad: 2 } }\n',
                                     "padding 2x2 must be smaller than the kernel 2x2"),
    "empty_convolution_output": (INPUT.format(h=4, w=4) + conv("c", "data", k=7, s=2, p=0),
                                 "too small for a 7x7 kernel (output 0x0)"),
    "unknown_bottom": (INPUT.format(h=8, w=8) + conv("a", "nothing"),
                       "reads blob 'nothing', which no earlier layer produces"),
    "unknown_layer_type": (INPUT.format(h=8, w=8) +
                           'layer { name: "x" type: "NoSuchLayer" bottom: "data" top: "x" }\n',
                           "Caffe has no layer type 'NoSuchLayer'"),
}

CAFFE_NET = """
import sys, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
print({b: tuple(net.blobs[b].data.shape) for b in net.blobs.keys()})
"""


def caffe_build(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    """Caffe building the net in a process of its own (an abort ends only that one)."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    return subprocess.run([sys.executable, "-c", CAFFE_NET, str(proto)], capture_output=True,
                          text=True, timeout=120)


def known_types() -> list[str]:
    from rmnet.caffe.pycaffe import import_caffe
    return list(import_caffe().layer_type_list())


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_what_caffe_builds_passes_with_caffes_shapes(tmp_path, case):
    r = caffe_build(tmp_path, ACCEPTED[case])
    assert r.returncode == 0, r.stderr
    caffe_shapes = eval(r.stdout.strip().splitlines()[-1])
    ours = check_shapes(parse_net(ACCEPTED[case]), "net", known_types=known_types())
    assert {b: ours[b] for b in caffe_shapes if b in ours} == \
        {b: s for b, s in caffe_shapes.items() if b in ours}
    assert set(ours) - set(caffe_shapes) == set()


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_caffe_aborts_on_is_refused_naming_the_layer(tmp_path, case):
    text, needle = REFUSED[case]
    r = caffe_build(tmp_path, text)
    assert r.returncode != 0 and "Check failed" in r.stderr + r.stdout or \
        "Unknown" in r.stderr, (r.returncode, r.stderr[-500:])      # Caffe aborts on it ...
    with pytest.raises(ShapeError, match="net: layer '") as e:      # ... we refuse it first
        check_shapes(parse_net(text), "net", known_types=known_types())
    assert needle in str(e.value)


def test_the_project_nets_pass_with_caffes_shapes():
    from rmnet.caffe.pycaffe import load_net
    for proto in sorted(REPO.glob("prototxt/*/*.prototxt")):
        for phase in ("TEST", "TRAIN"):
            check_shapes(read_net(proto), proto, phase, known_types=known_types())
        if proto.name == "deploy.prototxt":
            net = load_net(proto)
            ours = check_shapes(read_net(proto), proto)
            assert all(ours[b] == tuple(net.blobs[b].data.shape)
                       for b in net.blobs.keys() if b in ours)


def test_pooling_sizes_are_caffes():
    assert pool_output_size(8, 3, 2, 1) == (4, 5)       # ceil, padded: Caffe keeps 5
    assert pool_output_size(7, 3, 2, 1) == (4, 4)
    assert pool_output_size(6, 2, 2, 1) == (4, 4)       # the last window would start in the pad
    assert pool_output_size(7, 3, 2, 0, ceil_mode=False) == (3, 3)


def test_an_eltwise_mismatch_is_one_line_in_eval_market_and_the_embedder(tmp_path):
    from commands import eval_market
    from rmnet.data.synthetic import SyntheticConfig, generate
    from rmnet.deploy.embedder import Embedder
    from rmnet.deploy.export import random_caffemodel
    market = tmp_path / "market"
    generate(market, SyntheticConfig(train_ids=1, test_ids=2, images_per_id=2, seed=3))
    good, bad = tmp_path / "good.prototxt", tmp_path / "deploy.prototxt"
    good.write_text(eltwise_net(1))
    bad.write_text(eltwise_net(2))                 # same weights, shapes no longer add up
    weights = random_caffemodel(good, tmp_path / "w.caffemodel")
    code, _, err = run_main(eval_market.main, ["--prototxt", bad, "--weights", weights,
                                               "--data", market, "--no-progress"])
    line = one_line(err, progress=True)         # after the dataset summary line
    assert code == 2 and f"{bad}: layer 'sum' (type Eltwise): bottoms have different" in line
    with pytest.raises(ShapeError, match="bottoms have different shapes"):
        Embedder.load([bad, weights], runtime="pycaffe")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), "--prototxt",
                        str(bad), "--weights", str(weights), "--out", str(tmp_path / "exp")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bottoms have different shapes" in one_line(r.stderr)


# --- the export check and the Embedder's fallback ---------------------------------------------

@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """The light net as init_weights leaves it: outputs in the thousands."""
    from training.run import init_weights
    out = tmp_path_factory.mktemp("untrained") / "init.caffemodel"
    init_weights(LIGHT, out, log=lambda *_: None)
    return out


@needs("onnx", "onnxruntime")   # tools/export.py (checked on ONNX Runtime) in a child process
def test_the_default_export_check_is_scale_aware(tmp_path, untrained):
    from rmnet.deploy.export import ExportReport
    tool = [sys.executable, str(REPO / "tools" / "export.py"), "--prototxt", str(LIGHT),
            "--weights", str(untrained)]
    r = subprocess.run([*tool, "--out", str(tmp_path / "a")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([*tool, "--out", str(tmp_path / "b"), "--absolute"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--relative" in one_line(r.stderr)
    assert not list((tmp_path / "b").glob("*.onnx"))
    big = ExportReport("p", "w", max_abs_ref=1500.0, max_abs_diff={"onnxruntime": 8e-4})
    small = ExportReport("p", "w", max_abs_ref=0.5, max_abs_diff={"onnxruntime": 2e-4})
    assert big.ok and not small.ok                      # small outputs: the absolute bound
    assert not ExportReport("p", "w", max_abs_ref=1500.0, max_abs_diff={"o": 8e-4},
                            check="absolute").ok


@pytest.mark.parametrize("hidden", ["onnx", "onnxruntime"])
def test_an_export_this_python_cannot_do_is_one_line_before_pycaffe_runs(tmp_path, monkeypatch,
                                                                           hidden):
    """tools/export.py where onnx (or ONNX Runtime, the check's runtime without --openvino) cannot
    be imported: exit 2, one line naming the package, and nothing written. The package is made
    unimportable for this process (a None in sys.modules), as on a machine without it."""
    from commands import export
    from rmnet.deploy import export as exporter
    from rmnet.deploy.graph import ExportError
    weights = exporter.random_caffemodel(LIGHT, tmp_path / "w.caffemodel")
    monkeypatch.setitem(sys.modules, hidden, None)

    def pycaffe_runs(*args, **kwargs):
        raise AssertionError("pycaffe ran before the missing package was named")
    monkeypatch.setattr(exporter, "caffe_forward", pycaffe_runs)
    code, out, err = run_main(export.main, ["--prototxt", LIGHT, "--weights", weights,
                                            "--out", tmp_path / "out"])
    line = one_line(err)
    needle = ("exporting needs the onnx package" if hidden == "onnx" or not installed("onnx")
              else "no runtime to check the ONNX export with")
    assert code == 2 and needle in line and out == "", err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError) as e:      # the library's error says which import failed
        exporter.export(LIGHT, weights, tmp_path / "out", openvino=False)
    assert isinstance(e.value.__cause__, ModuleNotFoundError)
    assert e.value.__cause__.name in (hidden, "onnx")


@needs("onnx", "onnxruntime")   # the exporting runtime that falls back
def test_the_embedder_falls_back_to_pycaffe_when_the_export_cannot_serve(tmp_path, untrained,
                                                                          monkeypatch):
    import functools

    import numpy as np

    import rmnet.deploy.embedder as embedder
    from rmnet.deploy.export import random_caffemodel
    crop = np.zeros((128, 64, 3), np.uint8)
    # a net the exporter cannot convert (padded ceil-mode pooling), Caffe runs it
    proto = tmp_path / "ceil.prototxt"
    proto.write_text(ACCEPTED["padded_ceil_pooling"])
    weights = random_caffemodel(proto, tmp_path / "ceil.caffemodel")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        emb = embedder.Embedder.load([proto, weights], cache_dir=tmp_path / "cache")
    assert emb.runtime == "pycaffe" and emb.embed([crop]).shape == (1, emb.dim)
    assert [str(w.message).count("\n") for w in seen] == [0]
    assert seen[0].category is embedder.ExportFallbackWarning
    assert "falling back to pycaffe" in str(seen[0].message) and "pooling" in str(seen[0].message)
    # an export that fails its check against pycaffe (made strict enough to fail)
    monkeypatch.setattr(embedder, "export", functools.partial(embedder.export, check="absolute"))
    with pytest.warns(embedder.ExportFallbackWarning, match="does not match pycaffe"):
        emb = embedder.Embedder.load([LIGHT, untrained], cache_dir=tmp_path / "cache")
    assert emb.runtime == "pycaffe"
    with pytest.raises(embedder.ExportCheckError):      # asked for by name: the error
        embedder.Embedder.load([LIGHT, untrained], runtime="onnxruntime",
                               cache_dir=tmp_path / "cache")


def test_an_opencv_without_its_caffe_importer_is_not_chosen_and_says_why(tmp_path, untrained,
                                                                         monkeypatch):
    """OpenCV 5 dropped cv2.dnn.readNetFromCaffe: "auto" must pass over OpenCV for Caffe files
    (here OpenVINO and ONNX Runtime are hidden, so OpenCV would be next), and asking for it by
    name is a clear RuntimeUnavailable, not an AttributeError."""
    cv2 = pytest.importorskip("cv2")
    import rmnet.deploy.backends as backends
    import rmnet.deploy.embedder as embedder
    if hasattr(cv2.dnn, "readNetFromCaffe"):
        monkeypatch.delattr(cv2.dnn, "readNetFromCaffe")
    real = backends.runtime_available
    hidden = lambda r: r not in ("openvino", "onnxruntime") and real(r)  # noqa: E731
    monkeypatch.setattr(backends, "runtime_available", hidden)
    monkeypatch.setattr(embedder, "runtime_available", hidden)
    emb = embedder.Embedder.load([LIGHT, untrained], cache_dir=tmp_path / "cache")
    assert emb.runtime == "pycaffe"
    with pytest.raises(backends.RuntimeUnavailable, match="opencv"):
        embedder.Embedder.load([LIGHT, untrained], runtime="opencv", cache_dir=tmp_path / "cache")
    with pytest.raises(backends.RuntimeUnavailable, match="has no Caffe importer"):
        backends.OpenCVBackend(LIGHT, untrained)


def test_the_embedder_warns_once_about_crops_evaluation_would_refuse(tmp_path):
    import cv2
    import numpy as np

    from rmnet.deploy.embedder import AspectRatioWarning, Embedder
    from rmnet.deploy.export import random_caffemodel
    proto = tmp_path / "ceil.prototxt"
    proto.write_text(ACCEPTED["depthwise_and_global"].replace("dim: 8 dim: 8", "dim: 16 dim: 8"))
    weights = random_caffemodel(proto, tmp_path / "w.caffemodel")
    emb = Embedder.load([proto, weights], runtime="pycaffe")          # input 16x8: ratio 2.00
    person, wide, strip = (np.zeros(s, np.uint8) for s in ((128, 64, 3), (64, 128, 3),
                                                          (400, 40, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb.embed([person, person[:100]])                               # within 2x: silent
    with pytest.warns(AspectRatioWarning) as seen:
        emb.embed([person, wide, strip, person])
    assert len(seen) == 1 and str(seen[0].message).startswith(
        "2 of 4 crops have an aspect ratio (height / width) more than 2x off the model's 2.00")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb.embed([wide])                                               # once per Embedder
    emb = Embedder.load([proto, weights], runtime="pycaffe")
    paths = []
    for i, img in enumerate((person, wide)):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    with pytest.warns(AspectRatioWarning, match="1 of 2 images"):
        emb.embed_paths(paths)
    quiet = Embedder.load([proto, weights], runtime="pycaffe", max_aspect_change=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.embed([wide])


# --- found by the re-run probe across tools/ ---------------------------------------------------



def test_caffes_own_writers_never_meet_a_full_disk(tmp_path, small_fs):  # noqa: F811
    """Caffe aborts (CHECK) when it cannot write a caffemodel; every net the project saves goes
    through save_net, so a full disk is the one-line OSError of every other output."""
    from commands import init_weights
    mnt, fill, _ = small_fs
    fill()
    code, _, err = run_main(init_weights.main, [LIGHT, "-o", mnt / "init.caffemodel"])
    assert code == 2 and "No space left on device" in one_line(err, progress=True)
    assert str(mnt / "init.caffemodel") in err
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"]


@needs("faiss")   # through tools/gallery.py, which reports the ImportError itself
def test_a_gallery_build_on_a_full_disk_leaves_nothing(tmp_path, small_fs):  # noqa: F811
    from commands import gallery
    from rmnet.data.synthetic import SyntheticConfig, generate
    from rmnet.deploy.export import random_caffemodel
    mnt, fill, _ = small_fs
    market = tmp_path / "market"
    generate(market, SyntheticConfig(train_ids=1, test_ids=2, images_per_id=2, seed=3))
    weights = random_caffemodel(LIGHT, tmp_path / "w.caffemodel")
    fill()
    code, _, err = run_main(gallery.main, ["build", "--prototxt", LIGHT, "--weights", weights,
                                           "--images", market / "query", "--out", mnt / "g",
                                           "--runtime", "pycaffe", "--no-progress"])
    assert code == 2 and "No space left on device" in one_line(err, progress=True)
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"]      # not even the folder


@pytest.mark.parametrize("openvino", [pytest.param(False, marks=needs("onnx", "onnxruntime")),
                                      pytest.param(True, marks=needs("onnx", "openvino"))])
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, openvino):
    """ONNX's writer raises an OSError naming no file, OpenVINO's a bare RuntimeError: both are
    the one line naming the file; the --out folder the export made is removed again."""
    from commands import export
    from rmnet.deploy.export import random_caffemodel
    mnt = tmp_path / "fs"
    mnt.mkdir()
    size = "5m" if openvino else "64k"             # 5 MiB, 1 filled: the ONNX file fits
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        weights = random_caffemodel(LIGHT, tmp_path / "w.caffemodel")
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * ((1 << 20) if openvino else (64 << 10) - 4096))
        args = ["--prototxt", LIGHT, "--weights", weights, "--out", mnt / "exp"]
        code, _, err = run_main(export.main, args + (["--openvino"] if openvino else []))
        line = one_line(err)
        assert code == 2 and "No space left on device" in line and str(mnt / "exp") in line
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
    finally:
        # lazily: OpenVINO may still map the (deleted) staged weights until it is collected
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_the_net_generator_refuses_a_read_only_location(tmp_path, small_fs):  # noqa: F811
    mnt, _, read_only = small_fs
    read_only()
    r = subprocess.run([sys.executable, "-m", "generator", "--out", str(mnt / "p"),
                        "--variant", "light"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"{mnt} is not writable" in one_line(r.stderr)


@pytest.mark.parametrize("argv,needle", [
    (["--k1", "5"], "--k1 applies only with --rerank"),
    (["--lambda", "0.5", "--k2", "3"], "--k2, --lambda apply only with --rerank"),
    (["--index-k", "5"], "--index-k applies only with --index"),
    (["--top-k", "3", "--seed", "1"], "--top-k, --seed apply only with --rank-list"),
    (["--batch", "8"], "--batch and --max-aspect-change only apply when extracting"),
])
def test_eval_market_refuses_flags_that_would_be_ignored(tmp_path, argv, needle):
    from commands import eval_market
    feats = features_file(tmp_path / "feats.h5")
    code, out, err = run_main(eval_market.main, ["--features", feats, *argv])
    assert code == 2 and needle in err and out == ""


def test_flags_out_of_range_are_usage_errors(tmp_path):
    from commands import bench_layers, export, quantize
    for main, argv, needle in (
            (export.main, ["--prototxt", LIGHT, "--weights", LIGHT, "--out", tmp_path / "e",
                           "--tolerance", "0"], "--tolerance must be > 0"),
            (quantize.main, ["--prototxt", LIGHT, "--weights", LIGHT, "--data", tmp_path,
                             "--out", tmp_path / "q", "--calib", "0"], "--calib and --repeats"),
            (bench_layers.main, ["--data-only", "--data-root", tmp_path / "nope"],
             f"dataset root {tmp_path / 'nope'} does not exist")):
        code, _, err = run_main(main, argv)
        assert code == 2 and needle in err.strip().splitlines()[-1] and "Traceback" not in err


@needs("faiss")   # through tools/gallery.py, which reports the ImportError itself
def test_gallery_search_breadth_flags(tmp_path):
    from commands import gallery
    from rmnet.data.synthetic import SyntheticConfig, generate
    from rmnet.deploy.export import random_caffemodel
    market = tmp_path / "market"
    generate(market, SyntheticConfig(train_ids=1, test_ids=2, images_per_id=2, seed=3))
    weights = random_caffemodel(LIGHT, tmp_path / "w.caffemodel")
    code, _, err = run_main(gallery.main, ["build", "--prototxt", LIGHT, "--weights", weights,
                                           "--images", market / "query", "--out", tmp_path / "g",
                                           "--runtime", "pycaffe", "--no-progress"])
    assert code == 0, err
    search = ["search", tmp_path / "g", "--images", market / "query", "--runtime", "pycaffe"]
    code, _, err = run_main(gallery.main, [*search, "--nprobe", "0"])
    assert code == 2 and "--nprobe must be >= 1" in err
    code, _, err = run_main(gallery.main, [*search, "--nprobe", "4"])
    assert code == 0 and "note: --nprobe does not apply to this gallery's index (flat)" in err


def test_a_train_net_given_as_the_deploy_net_is_named_before_its_data_layer_runs(tmp_path):
    from rmnet.caffe.pycaffe import load_net
    with pytest.raises(ValueError, match=r"no Input layer \(a deploy prototxt is needed; this "
                                         r"one reads data through 'market_data'"):
        load_net(REPO / "prototxt" / "light" / "train.prototxt")
