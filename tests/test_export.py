"""Export to ONNX/OpenVINO, the embedding API and the benchmark (rmnet/deploy/export.py, rmnet/deploy/embedder.py,
tools/export.py, tools/benchmark.py, rmnet/bench/baselines.py).

Random-weight deploy nets (``random_caffemodel``: BatchNorm statistics set, since a fresh
caffe.Net has them all zero) are exported and compared with pycaffe on JPEG images written here;
the comparisons are recomputed independently of the exporter's own check where it matters.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rmnet.bench.baselines import resnet50_prototxt
from rmnet.deploy.backends import OnnxRuntimeBackend, OpenVINOBackend
from rmnet.deploy.embedder import Embedder, search
from rmnet.deploy.export import ExportCheckError, export, random_caffemodel, synthetic_crops
from rmnet.deploy.graph import ExportError, load_graph

REPO = Path(__file__).resolve().parent.parent
LIGHT = REPO / "prototxt" / "light" / "deploy.prototxt"
STRONG = REPO / "prototxt" / "strong" / "deploy.prototxt"
TOL = 1e-4

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def images(work) -> Path:
    """Six synthetic person crops as JPEG files (real decoding path), varied sizes."""
    folder = work / "images"
    folder.mkdir()
    for i, crop in enumerate(synthetic_crops(6, seed=3)):
        if i % 2:
            crop = cv2.resize(crop, (48 + 8 * i, 100 + 20 * i))
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), crop)
    return folder


@pytest.fixture(scope="module")
def light(work, images, caffe) -> dict:
    weights = random_caffemodel(LIGHT, work / "light.caffemodel", seed=1)
    report = export(LIGHT, weights, work / "light_out", openvino=True, images=images)
    return {"weights": weights, "report": report}


def _pycaffe(caffe, prototxt: Path, weights: Path, blob: np.ndarray) -> np.ndarray:
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    net.blobs["data"].reshape(*blob.shape)
    net.reshape()
    net.blobs["data"].data[...] = blob
    return net.forward()[net.outputs[0]].reshape(len(blob), -1).copy()


# --- export ------------------------------------------------------------------------------------

def test_light_export_matches_pycaffe(light, images, caffe):
    report = light["report"]
    assert report.ok and set(report.max_abs_diff) == {"onnxruntime", "openvino"}
    assert all(d < TOL for d in report.max_abs_diff.values())
    assert report.images.startswith("6 images from")
    assert report.output == "embedding_calibrated" and report.input_hw == (160, 64)
    # independent of the exporter's check: another batch size, both runtimes
    from rmnet.data.images import load_blob
    blob = load_blob(sorted(images.glob("*.jpg"))[:3], 160, 64)
    ref = _pycaffe(caffe, LIGHT, light["weights"], blob)
    assert np.abs(ref).max() > 1.0   # a real signal, not all zeros
    for backend in (OnnxRuntimeBackend(report.onnx), OpenVINOBackend(report.openvino_xml)):
        assert np.abs(backend.infer(blob) - ref).max() < TOL, backend.runtime


def test_light_onnx_graph_is_folded(light):
    import onnx
    model = onnx.load(light["report"].onnx)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == 114                     # every convolution of the net
    assert ops.count("Mul") == 1 and ops.count("Add") == 1   # only the input normalisation
    assert ops[:2] == ["Mul", "Add"]
    assert [o.name for o in model.graph.output] == ["embedding_calibrated"]
    dim = model.graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param == "batch" and [d.dim_value for d in dim[1:]] == [3, 160, 64]
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    # The folded count of the published model (input normalisation included); the
    # calibration Scale folds into the last convolution and adds nothing
    assert params == 819_766


def test_strong_export_matches_pycaffe(work, images, caffe):
    weights = random_caffemodel(STRONG, work / "strong.caffemodel", seed=2)
    report = export(STRONG, weights, work / "strong_out", openvino=True, images=images,
                    n_images=4)
    assert report.input_hw == (384, 128)
    assert all(d < TOL for d in report.max_abs_diff.values()), report.lines()


ZOO = """
name: "zoo"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 23 dim: 17 } } }
layer { name: "norm/bn" type: "BatchNorm" bottom: "data" top: "norm" }
layer { name: "norm/scale" type: "Scale" bottom: "norm" top: "norm"
        scale_param { bias_term: true } }
layer { name: "c1" type: "Convolution" bottom: "norm" top: "c1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 bias_term: true
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c1/bn" type: "BatchNorm" bottom: "c1" top: "c1bn" }
layer { name: "c1/scale" type: "Scale" bottom: "c1bn" top: "c1bn" scale_param { bias_term: false } }
layer { name: "c1/act" type: "ReLU" bottom: "c1bn" top: "c1bn" relu_param { negative_slope: 0.1 } }
layer { name: "pool" type: "Pooling" bottom: "c1bn" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "dw" type: "Convolution" bottom: "pool" top: "dw"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 2 dilation: 2
                            bias_term: false weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "dw/scale" type: "Scale" bottom: "dw" top: "dws" scale_param { bias_term: true } }
layer { name: "mix" type: "Eltwise" bottom: "dw" bottom: "dws" top: "mix"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 } }
layer { name: "mx" type: "Eltwise" bottom: "mix" bottom: "pool" top: "mx"
        eltwise_param { operation: MAX } }
layer { name: "prod" type: "Eltwise" bottom: "mx" bottom: "pool" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "elu" type: "ELU" bottom: "prod" top: "prod" elu_param { alpha: 0.7 } }
layer { name: "ave" type: "Pooling" bottom: "prod" top: "ave"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "gp" type: "Pooling" bottom: "ave" top: "gp"
        pooling_param { pool: MAX global_pooling: true } }
layer { name: "head" type: "Convolution" bottom: "gp" top: "head"
        convolution_param { num_output: 5 kernel_size: 1 bias_term: false
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "calib" type: "Scale" bottom: "head" top: "out" scale_param { bias_term: true } }
"""


def test_layer_zoo_matches_pycaffe(work, caffe):
    """Every supported layer option, incl. cases where folding would be wrong.

    The input normalisation has a large mean (the padded stem must not absorb it); ``dw`` is
    read both by its non-in-place Scale and by the Eltwise (so the Scale must not be folded);
    odd sizes make the 3x3/2 max-pool round up (ceil_mode) and the AVE pool hang over the edge.
    """
    proto = work / "zoo.prototxt"
    proto.write_text(ZOO)
    weights = random_caffemodel(proto, work / "zoo.caffemodel", seed=4)
    # a big input mean and small variance: any border mistake in the stem shows
    net = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    net.params["norm/bn"][0].data[...] = [100.0, 120.0, 90.0]
    net.params["norm/bn"][1].data[...] = [900.0, 1600.0, 400.0]
    net.save(str(weights))
    g = load_graph(proto, weights)
    assert g.shapes["pool"][2:] == (6, 4)   # Caffe's ceil: floor would give 5x4
    assert all(g.shapes[b] == net.blobs[b].data.shape for b in g.shapes)   # as Caffe shapes
    report = export(proto, weights, work / "zoo_out", openvino=True, n_images=5)
    assert report.max_abs_ref > 0.01
    assert all(d < 1e-5 for d in report.max_abs_diff.values()), report.lines()
    import onnx
    ops = [n.op_type for n in onnx.load(report.onnx).graph.node]
    assert ops.count("Conv") == 3 and "LeakyRelu" in ops and "Elu" in ops
    assert ops.count("Add") == 2   # input normalisation and the unfolded dw/scale


def test_resnet50_baseline(work, caffe):
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2
    from rmnet.deploy.graph import conv_macs, count_params

    text = resnet50_prototxt()
    net = caffe_pb2.NetParameter()
    text_format.Parse(text, net)
    proto = work / "r50.prototxt"
    proto.write_text(text)
    g = load_graph(proto, None)
    assert g.shapes["pool1"][2:] == (96, 32) and g.shapes["res5_2"][1:] == (2048, 12, 4)
    assert 7.9e9 < 2 * conv_macs(net, g.shapes) < 8.2e9          # the paper's "8 GFLOPs"
    assert 23.5e6 < count_params(net, g.param_sizes)["params_folded"] < 24.7e6
    # a small input keeps the pycaffe check fast; same layers, ceil-mode pooling included
    small = work / "r50_small.prototxt"
    small.write_text(resnet50_prototxt(64, 32))
    weights = random_caffemodel(small, work / "r50_small.caffemodel")
    report = export(small, weights, work / "r50_out", openvino=False, relative=True,
                    n_images=2)
    assert report.ok and report.output == "embedding"
    with pytest.raises(ValueError, match="multiple of 32"):
        resnet50_prototxt(100, 64)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layer_type", ["Python", "LRN"])
def test_unknown_layer_refused(work, layer_type):
    text = LIGHT.read_text().replace('type: "ELU"', f'type: "{layer_type}"', 1)
    proto = work / f"bad_{layer_type}.prototxt"
    proto.write_text(text)
    with pytest.raises(ExportError) as e:
        load_graph(proto, None)
    msg = str(e.value)
    assert str(proto) in msg and "'bottleneck1_0/dim_red/act'" in msg and layer_type in msg


def _edit_caffemodel(src: Path, dst: Path, edit) -> Path:
    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    net.ParseFromString(src.read_bytes())
    edit(net)
    dst.write_bytes(net.SerializeToString())
    return dst


def test_mismatched_caffemodel_refused(work, light):
    def drop(net):
        keep = [lay for lay in net.layer if lay.name != "bottleneck3_2/dw/bn"]
        del net.layer[:]
        net.layer.extend(keep)

    def reshape(net):
        lay = next(lay for lay in net.layer if lay.name == "bottleneck2_0/dw/conv")
        lay.blobs[0].shape.dim[0] = 8    # a consistent blob of another net's shape
        del lay.blobs[0].data[72:]

    cases = [(drop, "'bottleneck3_2/dw/bn' (type BatchNorm) has no parameters"),
             (reshape, "'bottleneck2_0/dw/conv' (type Convolution) blob 0 has shape "
                       "(8, 1, 3, 3) in the caffemodel, the prototxt needs (16, 1, 3, 3)")]
    for i, (edit, expected) in enumerate(cases):
        bad = _edit_caffemodel(light["weights"], work / f"bad{i}.caffemodel", edit)
        out = work / f"bad_out{i}"
        with pytest.raises(ExportError) as e:
            export(LIGHT, bad, out)
        msg = str(e.value)
        assert expected in msg and str(bad) in msg and str(LIGHT) in msg
        assert not out.exists()   # refused before anything was written
    # the CLI: exit status 2 and the message
    from commands.export import main
    assert main(["--prototxt", str(LIGHT), "--weights", str(work / "bad0.caffemodel"),
                 "--out", str(work / "cli_bad")]) == 2


def test_failed_check_writes_nothing(work, light, capsys):
    out = work / "strict"
    with pytest.raises(ExportCheckError) as e:
        export(LIGHT, light["weights"], out, openvino=False, tolerance=1e-12, n_images=2)
    assert "nothing written" in str(e.value) and not e.value.report.ok
    assert not out.exists()            # no file, no staging folder, not even the folder
    from commands.export import main
    assert main(["--prototxt", str(LIGHT), "--weights", str(light["weights"]), "--out",
                 str(out), "--tolerance", "1e-12"]) == 1
    assert "FAIL" in capsys.readouterr().out


# --- embedding API -----------------------------------------------------------------------------

def _crops(rng: np.random.Generator) -> list[np.ndarray]:
    base = synthetic_crops(4, seed=5)
    sizes = [(128, 64), (37, 11), (300, 90), (160, 64)]
    return [cv2.resize(c, (w, h)) for c, (h, w) in zip(base, sizes)] + [
        rng.integers(0, 256, (61, 200, 3), dtype=np.uint8)]   # even a landscape crop


def test_embedder_runtimes_agree(work, light):
    caffe_files = [LIGHT, light["weights"]]
    crops = _crops(np.random.default_rng(0))
    auto = Embedder.load(caffe_files, cache_dir=work / "cache")
    assert auto.runtime == "openvino" and auto.input_size == (160, 64)
    ref = auto.embed(crops)
    assert ref.shape == (5, 256) and ref.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    exported = sorted((work / "cache").glob("*/model.onnx"))
    assert len(exported) == 1   # auto-exported (and checked) once, into the cache
    loads = [Embedder.load(caffe_files, rt, cache_dir=work / "cache")
             for rt in ("pycaffe", "opencv", "onnxruntime")]
    loads += [Embedder.load(light["report"].onnx, "opencv"),
              Embedder.load(light["report"].onnx),
              Embedder.load(light["report"].openvino_xml)]
    assert [e.runtime for e in loads] == ["pycaffe", "opencv", "onnxruntime", "opencv",
                                          "openvino", "openvino"]
    for emb in loads:
        assert np.abs(emb.embed(crops) - ref).max() < TOL, emb.runtime
    assert len(sorted((work / "cache").glob("*/model.onnx"))) == 1   # cache reused


def test_embedder_batches_paths_and_errors(work, light):
    emb = Embedder.load(light["report"].onnx, "onnxruntime", batch_size=3)
    crops = synthetic_crops(7, seed=6)
    one_by_one = np.concatenate([emb.embed([c]) for c in crops])
    np.testing.assert_allclose(emb.embed(crops), one_by_one, atol=1e-5)   # 3 + 3 + 1
    folder = work / "png"
    folder.mkdir()
    paths = []
    for i, c in enumerate(crops):
        paths.append(folder / f"{i}.png")   # lossless: the same pixels come back
        cv2.imwrite(str(paths[-1]), c)
    np.testing.assert_allclose(emb.embed_paths(paths, batch=2), one_by_one, atol=1e-5)
    assert emb.embed([]).shape == (0, 256)
    with pytest.raises(ValueError, match="crop 1: expected uint8"):
        emb.embed([crops[0], crops[1].astype(np.float32)])
    with pytest.raises(ValueError, match=r"crop 0: expected a BGR \(H, W, 3\)"):
        emb.embed([crops[0][:, :, 0]])
    with pytest.raises(ValueError, match="needs both"):
        Embedder.load(light["weights"])
    with pytest.raises(RuntimeError, match="'pycaffe' cannot run"):
        Embedder.load(light["report"].onnx, "pycaffe")


def test_search_top_k():
    c10, s10 = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
    # raw (unnormalised) descriptors: search normalises them itself
    gallery = np.array([[1, 0], [0, 2], [2, 2], [-1, 0], [5 * c10, 5 * s10], [1, 1]])
    queries = np.array([[1.0, 0.0], [0.0, -3.0]])
    idx, sims = search(queries, gallery, k=3)
    assert idx.dtype == np.int64 and sims.dtype == np.float32
    # query 0 (0 deg): 0 deg, 10 deg, then the two 45 deg items tie exactly: lower index first
    assert idx[0].tolist() == [0, 4, 2]
    np.testing.assert_allclose(sims[0], [1.0, c10, np.sqrt(0.5)], atol=1e-6)
    # query 1 (-90 deg): 0 deg and 180 deg tie at 0 (by index), then 10 deg (-sin 10 deg)
    assert idx[1].tolist() == [0, 3, 4]
    np.testing.assert_allclose(sims[1], [0, 0, -s10], atol=1e-6)
    idx, sims = search(queries, gallery, k=100)   # k larger than the gallery
    assert idx.shape == (2, 6) and np.all(np.diff(sims, axis=1) <= 0)
    assert idx[0].tolist() == [0, 4, 2, 5, 1, 3]
    with pytest.raises(ValueError, match="lengths differ"):
        search(queries, np.ones((3, 4)), k=1)
    with pytest.raises(ValueError, match="k must be"):
        search(queries, gallery, k=0)


# --- benchmark ---------------------------------------------------------------------------------

def test_benchmark_quick_json(work, monkeypatch, capsys):
    import commands.benchmark as bench

    real = bench.runtime_available
    monkeypatch.setattr(bench, "runtime_available",
                        lambda rt: False if rt == "opencv" else real(rt))
    out, png = work / "bench.json", work / "bench.png"
    assert bench.main(["--quick", "--models", "light", "--runtimes",
                       "opencv,onnxruntime,openvino-sync,openvino-async", "--batches", "1,2",
                       "--workdir", str(work / "bench"), "--json", str(out),
                       "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "skipping opencv: not installed" in text and "% of SGEMM-bound" in text
    data = json.loads(out.read_text())
    assert data["sgemm"]["median"] > 1 and len(data["sgemm"]["repeats"]) == 6
    cells = {(r["runtime"], r["batch"]) for r in data["results"]}
    assert cells == {(rt, b) for rt in ("onnxruntime", "openvino-sync", "openvino-async")
                     for b in (1, 2)}
    for r in data["results"]:
        s = r["images_per_s"]
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert len(s["repeats"]) == 3
    light_info = data["models"]["light"]
    assert abs(light_info["gflops"] - 0.1158) < 0.001 and abs(light_info["mparams"] - 0.820) < 0.001
    assert "opencv" in data["skipped"] and data["targets"]["checked"]
    assert "speedup_over_resnet50" not in data["targets"]   # no baseline in this run
    assert png.stat().st_size > 10_000


# --- INT8 --------------------------------------------------------------------------------------

def test_quantize_reports_change_and_guards_writing(work, light, capsys, monkeypatch):
    pytest.importorskip("nncf")
    import commands.quantize as quant
    from rmnet.data.synthetic import SyntheticConfig, generate

    data = work / "syn"
    generate(data, SyntheticConfig(train_ids=4, test_ids=4, images_per_id=3,
                                   queries_per_id=1, seed=7))
    common = ["--model", light["report"].onnx, "--data", str(data), "--calib", "8",
              "--warmup", "1", "--repeats", "1", "--min-time", "0.05"]
    # the real NNCF path; an impossible accuracy bound, overridden by --force
    out = work / "int8"
    assert quant.main(common + ["--out", str(out), "--max-rank1-drop", "-1000", "--force",
                                "--batches", "2,4", "--profile",
                                "--json", str(work / "q.json")]) == 0
    printed = capsys.readouterr().out
    assert "ACCURACY CHANGE: rank-1" in printed
    assert "images/s tput, batch 2" in printed and "images/s tput, batch 4" in printed
    assert "each at its best batch" in printed
    xml = out / f"{Path(light['report'].onnx).stem}-int8.xml"
    assert sorted(p.name for p in out.iterdir()) == [xml.with_suffix(".bin").name, xml.name]
    blob = np.stack([cv2.resize(c, (64, 160)) for c in synthetic_crops(2)]).transpose(0, 3, 1, 2)
    assert OpenVINOBackend(xml).infer(blob.astype(np.float32)).shape == (2, 256)
    import openvino as ov
    int8_ops = {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}
    assert "FakeQuantize" in int8_ops   # really quantized
    report = json.loads((work / "q.json").read_text())
    assert report["int8"]["model"] == str(xml) and report["calibration"]["images"] == 8
    assert report["calibration"]["ranges"] == "minmax"
    assert 0.9 < report["descriptor_cosine_mean"] <= 1.0001   # INT8 close to FP32
    assert set(report["int8"]["speed"]) == {"throughput_b2", "throughput_b4", "latency_b1"}
    best = report["throughput_best"]
    assert report["throughput_speedup"] == pytest.approx(
        report["int8"]["speed"][best["int8"]]["median"]
        / report["fp32"]["speed"][best["fp32"]]["median"])
    # the per-part profile: every RMNet stage's parts, both precisions timed
    prof = "\n".join(report["profile"])
    for part in ("stem", "stage 1 dim_red", "stage 1 dw", "stage 1 dim_inc", "stage 4 shortcut",
                 "head", "total"):
        assert part in prof
    for k in ("rank1", "mAP", "mAP_official"):
        assert 0 <= report["int8"]["accuracy"][k] <= 100
    # without --force a drop beyond the bound is reported and nothing is written (NNCF
    # replaced by the FP32 model itself here, to keep the test short: the drop is then 0)
    monkeypatch.setattr(quant, "quantize",
                        lambda path, calib, preset, *rest: ov.Core().read_model(str(path)))
    refused = work / "int8_refused"
    assert quant.main(common + ["--out", str(refused), "--max-rank1-drop", "-1"]) == 1
    text = capsys.readouterr()
    assert "ACCURACY CHANGE: rank-1 +0.00 points" in text.out and "not written" in text.err
    assert not refused.exists()


def test_quantize_stops_when_the_fp32_export_does_not_match(work, light, capsys, monkeypatch):
    """An FP32 export that fails its check against pycaffe ends quantize.py with the check's
    message and exit status 1, not a traceback."""
    import commands.quantize as quant
    from rmnet.deploy.export import ExportCheckError
    from rmnet.data.synthetic import SyntheticConfig, generate

    data = work / "syn_check"
    generate(data, SyntheticConfig(train_ids=2, test_ids=2, images_per_id=2,
                                   queries_per_id=1, seed=2))

    def mismatch(*args, **kwargs):
        raise ExportCheckError("export of light does not match pycaffe: openvino max abs diff 0.1",
                               report=None)
    monkeypatch.setattr(quant, "export", mismatch)
    assert quant.main(["--prototxt", str(LIGHT), "--weights", str(light["weights"]), "--data",
                       str(data), "--out", str(work / "never")]) == 1
    err = capsys.readouterr().err
    assert "error: export of light does not match pycaffe" in err and "Traceback" not in err
    assert not (work / "never").exists()


def test_minmax_ranges_cover_what_mean_minmax_clips(light):
    """--ranges minmax (the default) sets every activation quantizer to the extremes over all
    calibration images; NNCF's mean_minmax averages per-image extremes, so its upper limits are
    lower wherever images differ. Compared quantizer by quantizer on the same 8 images."""
    pytest.importorskip("nncf")
    import commands.quantize as quant

    calib = np.stack([cv2.resize(c, (64, 160)) for c in synthetic_crops(8, seed=5)])
    calib = calib.transpose(0, 3, 1, 2).astype(np.float32)

    def highs(ranges: str) -> dict[str, float]:
        model = quant.quantize(Path(light["report"].openvino_xml), calib, "performance",
                               ranges=ranges)
        out = {}
        for op in model.get_ops():
            # activation quantizers: input 0 is not a constant (weights' FQs have one)
            if op.get_type_name() == "FakeQuantize" and \
                    op.input_value(0).get_node().get_type_name() != "Constant":
                high = op.input_value(2).get_node().get_data()
                out[op.get_friendly_name()] = float(np.max(high))
        return out

    wide, mean = highs("minmax"), highs("mean_minmax")
    assert wide.keys() == mean.keys() and len(wide) > 50
    assert all(wide[k] >= mean[k] * (1 - 1e-6) for k in wide)
    assert sum(wide[k] > mean[k] * 1.01 for k in wide) > len(wide) // 2
    with pytest.raises(ValueError, match="ranges must be one of minmax"):
        quant.quantize(Path(light["report"].openvino_xml), calib, "performance", ranges="max")


def test_quantize_with_accuracy_control_keeps_rank1(work, light, capsys):
    """--accuracy-control: NNCF keeps layers in FP32 until rank-1 drops by at most the bound
    (here 0 points), so the written INT8 model's rank-1 equals the FP32 one."""
    pytest.importorskip("nncf")
    import commands.quantize as quant
    from rmnet.data.synthetic import SyntheticConfig, generate

    data = work / "syn_ac"
    generate(data, SyntheticConfig(train_ids=4, test_ids=4, images_per_id=3,
                                   queries_per_id=1, seed=7))
    out = work / "int8_ac"
    assert quant.main(["--model", light["report"].onnx, "--data", str(data), "--calib", "8",
                       "--warmup", "1", "--repeats", "1", "--min-time", "0.05",
                       "--out", str(out), "--accuracy-control", "--max-rank1-drop", "0",
                       "--json", str(work / "q_ac.json")]) == 0
    report = json.loads((work / "q_ac.json").read_text())
    assert report["calibration"]["accuracy_control"] is True
    assert report["int8"]["accuracy"]["rank1"] >= report["fp32"]["accuracy"]["rank1"]
    assert report["int8"]["model"] is not None

