"""OpenVINO IR -> caffemodel import (rmnet/deploy/ir.py, ir_import.py, tools/import_openvino.py)
and the BatchNorm un-fold for fine-tuning (training/unfold.py).

The IRs are written by the project: v11 by its own exporter, v6/v7 (the format of Intel's
releases) by tests/ir_fixtures.py from the published format, FP32 and FP16.
"""
from __future__ import annotations

import glob
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from rmnet.deploy.export import export, random_caffemodel
from rmnet.deploy.graph import AffineRecord, ConvRecord, load_graph
from rmnet.deploy.ir import IRError, forward, read_ir
from rmnet.deploy.ir_import import (IRImportError, decoded_images, identity_variance,
                                    import_ir, l2n)
from tests.absent_packages import needs
from tests.ir_fixtures import write_old_ir

REPO = Path(__file__).resolve().parent.parent
LIGHT = REPO / "prototxt" / "light" / "deploy.prototxt"
STRONG = REPO / "prototxt" / "strong" / "deploy.prototxt"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("import_openvino")


@pytest.fixture(scope="module")
def light(work, caffe):
    weights = random_caffemodel(LIGHT, work / "light.caffemodel", seed=3)
    return {"weights": weights, "graph": load_graph(LIGHT, weights)}


@pytest.fixture(scope="module")
def synthetic_data(work) -> Path:
    from rmnet.data import synthetic

    root = work / "synthetic"
    synthetic.generate(root, synthetic.SyntheticConfig(train_ids=30, test_ids=8, seed=5))
    return root


def folded_values(prototxt, weights) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per convolution / input affine: the folded (weight, bias) the graph computes."""
    out = {}
    for rec in load_graph(prototxt, weights).records:
        if isinstance(rec, ConvRecord):
            out[rec.name] = (rec.weight, rec.bias)
        elif isinstance(rec, AffineRecord):
            out[rec.name] = (rec.scale, rec.shift)
    return out


def descriptors(prototxt, weights, blob) -> np.ndarray:
    from rmnet.deploy.backends import PycaffeBackend

    return PycaffeBackend(prototxt, weights).infer(blob)


def test_identity_variance_makes_caffe_batchnorm_exact():
    for eps in (1e-5, 1e-3, 2e-5, 0.1):
        v = identity_variance(eps)
        assert v.dtype == np.float32
        assert np.float32(v + np.float32(eps)) == np.float32(1.0)
        assert abs(float(v) - (1 - eps)) < 1e-6


@pytest.mark.parametrize("version,precision,elu_style",
                         [(7, "FP32", "activation"), (6, "FP16", "type")])
def test_old_ir_round_trip(work, light, version, precision, elu_style):
    g = light["graph"]
    xml = write_old_ir(g, work / f"v{version}_{precision}.xml", version=version,
                       precision=precision, elu_style=elu_style, seed=version)
    ir = read_ir(xml)
    assert (ir.version, ir.precision, ir.input_hw) == (version, precision, (160, 64))
    # the published 0079 FP32 .bin is 3,279,064 bytes: 819,766 float32 values
    assert xml.with_suffix(".bin").stat().st_size == 819_766 * (4 if precision == "FP32" else 2)
    kinds = [op.kind for op in ir.ops]
    assert kinds.count("conv") == 114 and kinds.count("sum") == 36
    assert kinds.count("elu") == 109 and kinds.count("globalmaxpool") == 1
    # the published graph with BatchNorm folded (and the input normalisation): 819,766 values
    assert ir.parameter_count == 819_766   # the calibration folds into head/embedding too
    out = work / f"imported_v{version}.caffemodel"
    report = import_ir(xml, out, seed=1)
    assert report.ok and report.variant == "light" and report.convolutions == 114
    assert report.reference.startswith("numpy")
    assert report.max_abs_diff < 1e-5
    # the imported model computes the IR's values: the folded graph equals the IR's weights
    # (float16-rounded for FP16), and the original's to float32 noise (FP32)
    got, orig = folded_values(LIGHT, out), folded_values(LIGHT, light["weights"])
    assert set(got) == set(orig)
    for name, (w, b) in orig.items():
        if precision == "FP16":
            w = w.astype(np.float16).astype(np.float64)
            b = b.astype(np.float16).astype(np.float64)
        np.testing.assert_allclose(got[name][0], w, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(got[name][1], b, rtol=1e-6, atol=1e-6, err_msg=name)
    blob, _ = decoded_images(None, 160, 64, 4, seed=2)
    a, b = descriptors(LIGHT, out, blob), descriptors(LIGHT, light["weights"], blob)
    limit = 1e-5 if precision == "FP32" else 1e-2
    assert np.abs(l2n(a) - l2n(b)).max() < limit


def test_v11_round_trip_through_the_exporter(work, light):
    rep = export(LIGHT, light["weights"], work / "exported", openvino=True)
    xml = Path(rep.openvino_xml)
    ir = read_ir(xml)
    assert ir.version == 11
    out = work / "imported_v11.caffemodel"
    report = import_ir(xml, out)
    assert report.ok and report.reference == "OpenVINO" and report.convolutions == 114
    got, orig = folded_values(LIGHT, out), folded_values(LIGHT, light["weights"])
    for name, (w, b) in orig.items():
        np.testing.assert_allclose(got[name][0], w, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(got[name][1], b, rtol=1e-6, atol=1e-6, err_msg=name)
    # the BatchNorm layers are the identity, the calibration too
    from rmnet.caffe.caffemodel import read_caffemodel

    blobs = read_caffemodel(out)
    assert np.all(blobs["stem/bn"][0] == 0) and np.all(blobs["stem/bn"][2] == 1)
    assert np.all(blobs["calibration"][0] == 1) and np.all(blobs["calibration"][1] == 0)
    blob, _ = decoded_images(None, 160, 64, 4, seed=3)
    a, b = descriptors(LIGHT, out, blob), descriptors(LIGHT, light["weights"], blob)
    assert np.abs(l2n(a) - l2n(b)).max() < 1e-5
    # the numpy forward (the reference for old IRs) agrees with OpenVINO on the same IR
    from rmnet.deploy.ir_import import ir_reference

    ov_out, _ = ir_reference(ir, blob)
    assert np.abs(l2n(forward(ir, blob)) - l2n(ov_out)).max() < 1e-5
    # FP16 v11 (Constant f16 -> Convert): the weights come back float16-rounded
    import openvino as ov

    xml16 = work / "fp16" / "light16.xml"
    ov.save_model(ov.Core().read_model(str(xml)), str(xml16), compress_to_fp16=True)
    ir16 = read_ir(xml16)
    assert ir16.precision == "FP16" and ir16.parameter_count == 819_766
    report = import_ir(xml16, work / "imported_v11_fp16.caffemodel")
    assert report.ok
    got16 = folded_values(LIGHT, work / "imported_v11_fp16.caffemodel")
    w = orig["stem/conv"][0]
    np.testing.assert_allclose(got16["stem/conv"][0], w.astype(np.float16), rtol=1e-6, atol=1e-7)


def test_strong_size_picks_the_strong_net(work, caffe):
    weights = random_caffemodel(STRONG, work / "strong.caffemodel", seed=4)
    xml = write_old_ir(load_graph(STRONG, weights), work / "strong_v7.xml")
    report = import_ir(xml, work / "strong_imported.caffemodel", n_images=2)
    assert report.variant == "strong" and report.ok
    with pytest.raises(IRImportError, match=r"input .*is 384x128, the net's 'data' is 160x64"):
        import_ir(xml, work / "wrong.caffemodel", prototxt=LIGHT, n_images=2)
    assert not (work / "wrong.caffemodel").exists()


def test_mismatched_graphs_are_refused_naming_the_layer(work, light, caffe):
    g = light["graph"]
    # a depthwise convolution with the wrong stride
    xml = write_old_ir(g, work / "bad_stride.xml",
                       alter={"bottleneck2_0/dw/conv": {"strides": "1,1"}})
    with pytest.raises(IRImportError, match=r"IR layer 'bottleneck2_0/dw/conv' .* Caffe layer "
                                            r"'bottleneck2_0/dw/conv': stride \(1, 1\) in the IR, "
                                            r"\(2, 2\) in the net"):
        import_ir(xml, work / "x.caffemodel")
    # one block fewer in stage 1: the graph runs out where the net has bottleneck1_3
    from generator import render

    stages = [{"channels": 32, "downsample": False, "blocks": 3},
              {"channels": 64, "downsample": True, "blocks": 8},
              {"channels": 128, "downsample": True, "blocks": 10},
              {"channels": 256, "downsample": True, "blocks": 11}]
    short = work / "short.prototxt"
    short.write_text(render("light", "deploy", overrides={"backbone": {"stages": stages}}).text)
    w = random_caffemodel(short, work / "short.caffemodel")
    xml = write_old_ir(load_graph(short, w), work / "short.xml")
    with pytest.raises(IRImportError, match=r"Caffe layer 'bottleneck1_3/dim_red/conv'"):
        import_ir(xml, work / "x.caffemodel")
    # ReLU where the net has ELU
    xml = write_old_ir(g, work / "relu.xml", alter={"bottleneck3_2/dw/act": {"type": "relu"}})
    with pytest.raises(IRImportError, match=r"'bottleneck3_2/dw/act' \(elu\) has no counterpart"):
        import_ir(xml, work / "x.caffemodel")
    assert not (work / "x.caffemodel").exists()


def test_reader_errors_name_the_file_and_layer(work, light):
    xml = write_old_ir(light["graph"], work / "broken.xml")
    bin_path = xml.with_suffix(".bin")
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IRError, match=r"broken.xml: layer '[^']+' \(type \w+\): weights bytes "
                                      r"\d+\.\.\d+ do not fit the .bin file"):
        read_ir(xml)
    tree = ET.parse(write_old_ir(light["graph"], work / "unknown.xml"))
    for lay in tree.getroot().iter("layer"):
        if lay.attrib["name"] == "head/pool":
            lay.attrib["type"] = "ROIPooling"
    tree.write(work / "unknown.xml")
    with pytest.raises(IRError, match=r"layer 'head/pool' \(type ROIPooling\): layer type "
                                      r"'ROIPooling' is not supported"):
        read_ir(work / "unknown.xml")
    (work / "v3.xml").write_text('<net name="x" version="3"><layers/></net>')
    with pytest.raises(IRError, match="IR version 3 is not supported"):
        read_ir(work / "v3.xml")


def test_cli_exit_status_and_messages(work, light, capsys):
    from commands.import_openvino import main

    xml = write_old_ir(light["graph"], work / "cli.xml")
    out = work / "cli.caffemodel"
    assert main([str(xml), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "OK" in printed and out.is_file()
    bad = write_old_ir(light["graph"], work / "cli_bad.xml",
                       alter={"stem/conv": {"group": "2"}})
    assert main([str(bad), "-o", str(work / "cli_bad.caffemodel")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stem/conv" in err
    assert not (work / "cli_bad.caffemodel").exists()
    assert main([str(work / "missing.xml"), "-o", str(out)]) == 2
    assert "missing.xml: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(xml), "-o", str(out), "--train"])       # --train needs --data


def test_unfold_affine_by_hand():
    from training.unfold import unfold_affine

    # stored: mean 1, var 3 (factor 2 -> 0.5, 1.5), eps 0.5: y = 2 (x - 0.5) / sqrt(2) + 1
    s, b = unfold_affine(np.array([2.0]), np.array([1.0]), np.array([1.0]), np.array([3.0]),
                         2.0, np.array([4.0]), np.array([3.5]), 0.5)
    # new: y = s (x - 4) / sqrt(4) + b must equal the old for every x
    np.testing.assert_allclose(s, [2.0 * 2.0 / np.sqrt(2.0)])
    np.testing.assert_allclose(b, [1.0 + 2.0 * (4.0 - 0.5) / np.sqrt(2.0)])
    for x in (-3.0, 0.0, 7.5):
        old = 2 * (x - 0.5) / np.sqrt(2.0) + 1
        new = s[0] * (x - 4.0) / np.sqrt(3.5 + 0.5) + b[0]
        assert abs(old - new) < 1e-12


def test_unfold_keeps_descriptors_on_decoded_images(work, light, synthetic_data):
    """Before the un-fold, Caffe's TRAIN phase (batch statistics) destroys the imported
    descriptors; after it, they stay (cosine >= 0.99), and the TEST phase is unchanged."""
    from commands.import_openvino import main
    from training.unfold import has_identity_batchnorm

    xml = write_old_ir(light["graph"], work / "ft.xml")
    out = work / "ft.caffemodel"
    assert main([str(xml), "-o", str(out), "--train", "--data", str(synthetic_data),
                 "--batches", "4", "--batch-size", "24"]) == 0
    imported = work / "ft_plain.caffemodel"
    import_ir(xml, imported)
    assert has_identity_batchnorm(imported, LIGHT) and not has_identity_batchnorm(out, LIGHT)
    from training.unfold import train_phase_cosine
    from rmnet.data.images import load_blob

    files = sorted(glob.glob(str(synthetic_data / "query" / "*.jpg")))[:24]
    blob = load_blob(files, 160, 64)
    ref = descriptors(LIGHT, imported, blob)
    before = train_phase_cosine(LIGHT, imported, blob, ref)
    after = train_phase_cosine(LIGHT, out, blob, ref)
    assert before.mean() < 0.5
    assert after.mean() >= 0.99 and after.min() >= 0.98
    test_after = descriptors(LIGHT, out, blob)
    assert np.abs(l2n(test_after) - l2n(ref)).max() < 1e-5


@needs("openvino")   # tools/eval_market.py --runtime openvino reports its absence itself
def test_eval_market_on_an_imported_model(work, light, synthetic_data):
    """tools/eval_market.py scores an imported model; pycaffe and OpenVINO agree."""
    import json

    from commands.eval_market import main as eval_main

    xml = write_old_ir(light["graph"], work / "eval.xml")
    model = work / "eval.caffemodel"
    import_ir(xml, model)
    results = {}
    for runtime in ("pycaffe", "openvino"):
        out = work / f"eval_{runtime}.json"
        assert eval_main(["--prototxt", str(LIGHT), "--weights", str(model), "--data",
                          str(synthetic_data), "--runtime", runtime, "--no-progress",
                          "--json", str(out)]) == 0
        results[runtime] = json.loads(out.read_text())
    a, b = results["pycaffe"], results["openvino"]
    assert a["num_valid_queries"] == b["num_valid_queries"] > 0
    assert abs(a["mAP"] - b["mAP"]) < 1e-3
    assert a["cmc"]["1"] == pytest.approx(b["cmc"]["1"], abs=1e-9)


def test_cli_refuses_an_output_folder_before_work(work, tmp_path, capsys):
    from commands.import_openvino import main

    (tmp_path / "dir.caffemodel").mkdir()
    assert main([str(work / "whatever.xml"), "-o", str(tmp_path / "dir.caffemodel")]) == 2
    assert "is a folder, a file is wanted here" in capsys.readouterr().err
