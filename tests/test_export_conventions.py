"""Export for trackers' input conventions (rmnet/deploy/conventions.py, tools/export.py --input):
both conventions, ONNX Runtime and OpenVINO, batches 1, 7 and 64, against pycaffe on the same
generated crops; the adapter adds no operation; names and metadata a tracker reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmnet.deploy.conventions import CONVENTIONS, to_convention
from rmnet.deploy.export import export, random_caffemodel, synthetic_crops
from rmnet.deploy.graph import ExportError
from rmnet.data.images import resize_to, to_blob
from rmnet.eval.metrics import l2_normalize

REPO = Path(__file__).resolve().parent.parent
LIGHT = REPO / "prototxt" / "light" / "deploy.prototxt"
TOL = 1e-4
BATCHES = (1, 7, 64)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conventions")


@pytest.fixture(scope="module")
def weights(work, caffe) -> Path:
    return random_caffemodel(LIGHT, work / "light.caffemodel", seed=5)


@pytest.fixture(scope="module")
def exports(work, weights) -> dict:
    """Both conventions, normalised output, ONNX + IR."""
    return {name: export(LIGHT, weights, work / name, name="rmnet", openvino=True, input=name,
                         normalize=True)
            for name in CONVENTIONS}


@pytest.fixture(scope="module")
def reference(weights, caffe) -> tuple[np.ndarray, np.ndarray]:
    """64 generated crops as a raw BGR blob, and pycaffe's L2-normalised descriptors."""
    crops = synthetic_crops(64, seed=11)
    blob = to_blob([resize_to(c, 160, 64) for c in crops])
    net = caffe.Net(str(LIGHT), caffe.TEST, weights=str(weights))
    net.blobs["data"].reshape(*blob.shape)
    net.reshape()
    net.blobs["data"].data[...] = blob
    ref = net.forward()[net.outputs[0]].reshape(len(blob), -1).copy()
    assert np.abs(ref).max() > 1.0            # a real signal before normalising
    return blob, l2_normalize(ref)


def _sessions(report):
    import onnxruntime as ort
    import openvino as ov

    sess = ort.InferenceSession(report.onnx, providers=["CPUExecutionProvider"])
    core = ov.Core()
    model = core.read_model(report.openvino_xml)
    # the IR's own dynamic batch, compiled once, no reshape
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return sess, model, compiled


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_both_runtimes_match_pycaffe_at_every_batch(exports, reference, name):
    report = exports[name]
    assert report.ok and report.output == "descriptor" and report.normalized
    blob, ref = reference
    x = to_convention(blob, name)
    if name == "rgb-imagenet":   # really another input: RGB and about zero-mean, unit-scale
        assert np.allclose(x[:, 0], (blob[:, 2] / 255 - 0.485) / 0.229, atol=1e-5)
        assert abs(float(x.mean())) < 2 and float(x.std()) < 3
    sess, model, compiled = _sessions(report)
    inp = sess.get_inputs()[0].name
    for n in BATCHES:
        got_ort = sess.run(None, {inp: x[:n]})[0]
        got_ov = np.asarray(compiled(x[:n])[0])
        for rt, got in (("onnxruntime", got_ort), ("openvino", got_ov)):
            assert got.shape == (n, 256), (rt, n)
            assert np.abs(got - ref[:n]).max() <= TOL, (name, rt, n)
            assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5), (rt, n)


def test_the_wrong_convention_does_not_match(exports, reference):
    """Feeding raw BGR to the rgb-imagenet model (or the reverse) is far off: the check above
    measures the convention, not a model that ignores its input."""
    blob, ref = reference
    sess, _, _ = _sessions(exports["rgb-imagenet"])
    got = sess.run(None, {sess.get_inputs()[0].name: blob[:7]})[0]
    assert np.abs(got - ref[:7]).max() > 0.05


def test_adapter_is_folded_and_costs_nothing(exports):
    import onnx

    ops = {n: [x.op_type for x in onnx.load(r.onnx).graph.node] for n, r in exports.items()}
    assert ops["rgb-imagenet"] == ops["bgr255"]            # the same operations, one for one
    assert ops["bgr255"][:3] == ["Mul", "Add", "Conv"]
    assert ops["bgr255"][-4:] == ["Flatten", "ReduceL2", "Max", "Div"]
    a, b = (onnx.load(exports[n].onnx) for n in ("bgr255", "rgb-imagenet"))
    size = lambda m: sum(int(np.prod(t.dims)) for t in m.graph.initializer)  # noqa: E731
    assert size(a) == size(b)


def test_dynamic_batch_names_and_metadata(exports):
    import onnx
    import openvino as ov

    for name, report in exports.items():
        model = onnx.load(report.onnx)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 160, 64]
        out = model.graph.output[0]
        assert out.name == "descriptor"
        assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == \
            ["batch", 256]
        props = {p.key: p.value for p in model.metadata_props}
        assert props["rmnet.input_convention"] == name
        assert props["rmnet.channel_order"] == ("RGB" if name == "rgb-imagenet" else "BGR")
        assert (props["rmnet.input_height"], props["rmnet.input_width"]) == ("160", "64")
        assert props["rmnet.output_l2_normalized"] == "true"
        mean = [float(v) for v in props["rmnet.mean"].split(",")]
        assert mean == ([0.485, 0.456, 0.406] if name == "rgb-imagenet" else [0.0, 0.0, 0.0])
        ir = ov.Core().read_model(report.openvino_xml)
        assert ir.inputs[0].get_partial_shape()[0].is_dynamic
        assert str(ir.outputs[0].get_partial_shape()) == "[?,256]"
        assert ir.get_rt_info(["rmnet", "input_convention"]).astype(str) == name
        assert ir.get_rt_info(["rmnet", "std"]).astype(str) == props["rmnet.std"]


def test_default_is_todays_export(work, weights):
    """No --input: raw BGR in, the Caffe output blob out, unnormalised, as before."""
    import onnx

    report = export(LIGHT, weights, work / "default", openvino=False)
    model = onnx.load(report.onnx)
    assert [o.name for o in model.graph.output] == ["embedding_calibrated"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rmnet.input_convention"] == "bgr255" and props["rmnet.std"] == "1.0,1.0,1.0"
    assert report.max_abs_ref > 1.0 and not report.normalized


def test_command_line_conventions(work, weights, capsys):
    from commands.export import main

    out = work / "cli"
    assert main(["--prototxt", str(LIGHT), "--weights", str(weights), "--out", str(out),
                 "--input", "rgb-imagenet", "--name", "m"]) == 0
    text = capsys.readouterr().out
    assert "RGB, (x / 255 - mean) / std" in text and "rows L2-normalised" in text
    assert (out / "m.onnx").is_file()
    with pytest.raises(SystemExit):
        main(["--prototxt", str(LIGHT), "--weights", str(weights), "--out", str(out),
              "--input", "rgb"])
    assert "invalid choice" in capsys.readouterr().err


def _small_net(work: Path, name: str, h: int, w: int, layers: str) -> tuple[Path, Path]:
    """A deploy prototxt of ``layers`` after an N x 3 x h x w input, with random weights."""
    proto = work / f"{name}.prototxt"
    proto.write_text(f'name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data" '
                     f'input_param {{ shape {{ dim: 1 dim: 3 dim: {h} dim: {w} }} }} }}'
                     + layers + "\n")
    return proto, random_caffemodel(proto, work / f"{name}.caffemodel", seed=0)


def test_channel_swap_refused_where_it_cannot_fold(work, caffe):
    """A grouped convolution reading the input cannot take the RGB/BGR swap: refused, named."""
    proto, w = _small_net(work, "grouped", 16, 8, """
layer { name: "dw" type: "Convolution" bottom: "data" top: "dw"
        convolution_param { num_output: 3 group: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }""")
    with pytest.raises(ExportError, match=r"'dw' \(convolution with group 3\)"):
        export(proto, w, work / "grouped_out", openvino=False, input="rgb-imagenet")
    assert not (work / "grouped_out").exists()


def test_net_without_input_normalisation_gets_one(work, caffe):
    """A net whose first layer is a padded convolution: the adapter becomes one Mul + Add in
    front (folding it into the convolution would change its zero-padded borders), the swap
    still folds into the convolution, and the export matches pycaffe."""
    import onnx

    proto, w = _small_net(work, "plain", 24, 12, """
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 stride: 2
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "pool" type: "Pooling" bottom: "c1" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }""")
    report = export(proto, w, work / "plain_out", openvino=True, input="rgb-imagenet")
    assert report.ok and all(d <= TOL for d in report.max_abs_diff.values()), report.lines()
    ops = [n.op_type for n in onnx.load(report.onnx).graph.node]
    assert ops[:3] == ["Mul", "Add", "Conv"] and ops.count("Mul") == 1


def test_embedder_reads_the_convention_from_the_file(exports, reference):
    """Backends read the convention from the file's metadata and convert the raw BGR they are
    given: the Embedder gives the same descriptors from either export."""
    from rmnet.deploy.embedder import Embedder

    blob, ref = reference
    for name, report in exports.items():
        for path, runtime in ((report.onnx, "onnxruntime"), (report.onnx, "opencv"),
                              (report.openvino_xml, "openvino")):
            emb = Embedder.load(path, runtime=runtime)
            assert emb.backend.convention == name, (path, runtime)
            assert np.abs(emb.embed_blob(blob[:7]) - ref[:7]).max() <= TOL, (name, runtime)
