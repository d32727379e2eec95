"""The foundation: a real Caffe, built from source by `make setup`, that the venv can use.

Each test can fail: if Caffe is not wired into the venv, if the Python-layer bridge drops the
upstream gradient, if the build linked the reference BLAS, or if the protobuf patch is missing
(large caffemodels would not load).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

# the venv the suite runs in: .venv, or .venv-gpu with `make test GPU=1`
VENV = REPO / (".venv-gpu" if Path(sys.prefix).name == ".venv-gpu" else ".venv")


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def tiny_fc_net(folder: Path, inputs: int, outputs: int) -> Path:
    """``folder/tiny.prototxt``: an Input of ``inputs`` values and one InnerProduct "fc"."""
    return write(folder / "tiny.prototxt", f"""\
        name: "tiny"
        layer {{ name: "data" type: "Input" top: "data"
                input_param {{ shape {{ dim: 1 dim: {inputs} }} }} }}
        layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
                inner_product_param {{ num_output: {outputs} }} }}
    """)


def test_caffe_imports_from_the_venv(caffe):
    assert Path(sys.prefix).resolve() == VENV.resolve(), "tests must run with .venv/bin/python (or .venv-gpu/bin/python)"
    # pycaffe comes from the build cache (outside the clone), wired in by a .pth file.
    caffe_dir = Path(caffe.__file__).resolve().parent
    assert not caffe_dir.is_relative_to(REPO), caffe_dir
    assert (caffe_dir / "_caffe.so").exists()
    # Debian's interpreter: pycaffe links Debian's libpython3.11 through boost-python.
    assert (VENV / "pyvenv.cfg").read_text().count("home = /usr/bin") == 1
    from caffe.proto import caffe_pb2
    assert caffe_pb2.LayerParameter(name="x", type="ReLU").type == "ReLU"


def test_caffe_tool_runs_with_no_environment(tmp_path):
    out = subprocess.run([str(VENV / "bin" / "caffe"), "--version"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, check=True)
    assert "caffe version 1.0.0" in (out.stdout + out.stderr).lower()


TINY_NET = """\
    name: "tiny"
    force_backward: true
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1
                                weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "scale" type: "Python" bottom: "conv" top: "scaled"
            python_param { module: "tests.caffe_test_layers" layer: "ScaleByLayer"
                           param_str: '{"factor": 3.0}' } }
"""


def test_python_layer_forward_backward_reshape(caffe, tmp_path):
    proto = write(tmp_path / "tiny.prototxt", TINY_NET)
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(net.blobs["data"].data.shape).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["scaled"].data, 3.0 * net.blobs["conv"].data, rtol=1e-6)
    assert net.layers[list(net._layer_names).index("scale")].seen_phase == caffe.TEST

    # Backward with an upstream gradient that is not 1: the layer must scale it, and it must
    # arrive at the convolution's input as W^T (3 * g).
    g = rng.standard_normal(net.blobs["scaled"].diff.shape).astype(np.float32)
    net.blobs["scaled"].diff[...] = g
    net.backward(start="scale")
    np.testing.assert_allclose(net.blobs["conv"].diff, 3.0 * g, rtol=1e-6)
    w = net.params["conv"][0].data.reshape(2, 3)
    expected = np.einsum("oc,nohw->nchw", w, 3.0 * g)
    np.testing.assert_allclose(net.blobs["data"].diff, expected, rtol=1e-4, atol=1e-6)
    # The weight gradient arrives too.
    assert np.abs(net.params["conv"][0].diff).sum() > 0

    # Reshape propagates through the Python layer.
    net.blobs["data"].reshape(5, 3, 2, 2)
    net.reshape()
    net.forward()
    assert net.blobs["scaled"].data.shape == (5, 2, 2, 2)


def test_python_layer_errors_reach_the_caller(caffe, tmp_path):
    bad = TINY_NET.replace('{"factor": 3.0}', '{"factr": 3.0}')
    proto = write(tmp_path / "bad.prototxt", bad)
    with pytest.raises(ValueError, match="unknown param_str keys"):
        caffe.Net(str(proto), caffe.TEST)


def test_caffe_tool_runs_a_python_layer_from_the_repo(tmp_path):
    """`caffe time` (the CLI, Debian's embedded Python) finds the repo's Python modules."""
    proto = write(tmp_path / "tiny.prototxt", TINY_NET)
    out = subprocess.run([str(VENV / "bin" / "caffe"), "time", "-model", str(proto),
                          "-iterations", "2"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Average Forward-Backward" in out.stderr


def test_linked_blas_is_openblas(caffe):
    """The reference BLAS is ~4x slower; the build must link OpenBLAS."""
    lib = Path(caffe.__file__).resolve().parents[3] / "libcaffe.so"
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "libopenblas" in ldd, ldd
    assert "libblas.so" not in ldd, ldd
    maps = Path("/proc/self/maps").read_text()
    assert "libopenblas" in maps


def test_large_caffemodel_round_trips_bit_exactly(caffe, tmp_path):
    """A caffemodel over protobuf's old 64 MB default limit saves and loads bit-exactly: this
    goes through ReadProtoFromBinaryFile, where the SetTotalBytesLimit patch lives."""
    proto = write(tmp_path / "big.prototxt", """\
        name: "big"
        layer { name: "data" type: "Input" top: "data"
                input_param { shape { dim: 1 dim: 4200 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
                inner_product_param { num_output: 4200 } }
        layer { name: "fc2" type: "InnerProduct" bottom: "fc" top: "fc2"
                inner_product_param { num_output: 3 } }
    """)
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape).astype(np.float32)
    # Special values must survive as bits too.
    net.params["fc2"][1].data[...] = [np.float32(-0.0), np.float32(1e-45), np.float32(3.4e38)]
    model = tmp_path / "big.caffemodel"
    net.save(str(model))
    assert model.stat().st_size > 64 * 2**20

    loaded = caffe.Net(str(proto), caffe.TEST, weights=str(model))
    for name, blobs in net.params.items():
        for a, b in zip(blobs, loaded.params[name]):
            assert a.data.tobytes() == b.data.tobytes(), name


def test_protos_are_written_atomically(caffe, tmp_path):
    """Snapshots and saved caffemodels replace the old file by rename (patch
    0002-atomic-proto-writes): a reader holding the previous file still sees it whole, the new
    file is complete, and no temporary is left. In-place writing (Caffe's original
    truncate-and-write) would leave the open old file empty."""
    proto = tiny_fc_net(tmp_path, 8, 300)
    net = caffe.Net(str(proto), caffe.TEST)
    model = tmp_path / "tiny.caffemodel"
    net.params["fc"][0].data[...] = 1.0
    net.save(str(model))
    old_bytes = model.read_bytes()
    with open(model, "rb") as old:
        net.params["fc"][0].data[...] = 2.0
        net.save(str(model))
        assert old.read() == old_bytes        # the old inode is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.caffemodel", "tiny.prototxt"]
    loaded = caffe.Net(str(proto), caffe.TEST, weights=str(model))
    assert np.all(loaded.params["fc"][0].data == 2.0)


def test_unwritable_snapshot_names_the_file(tmp_path):
    """A proto that cannot be written stops Caffe with the file and the reason, not with a bare
    failed check (the original code ignored open errors until serialisation)."""
    proto = tiny_fc_net(tmp_path, 2, 2)
    target = tmp_path / "missing_dir" / "x.caffemodel"
    code = f"import caffe; caffe.Net({str(proto)!r}, caffe.TEST).save({str(target)!r})"
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", code], capture_output=True,
                       text=True, env={"GLOG_minloglevel": "0", "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0
    assert f"Cannot write {target}.tmp: No such file or directory" in r.stderr, r.stderr[-2000:]
    assert not target.parent.exists()
