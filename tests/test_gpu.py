"""The GPU entry points. Everywhere: without a usable GPU they say "no GPU" in one line with exit
status 3 (never Caffe's SIGABRT), GPU ids are checked, and the checks' machinery (mode
comparison, finite differences, log parsing) works, run on the CPU. On a machine with a GPU
(after `make setup GPU=1`, tests run by .venv-gpu/bin/python): the GPU against the CPU."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from training import gpucheck
from rmnet.caffe.gpu import (GPUStatus, NoGPUError, check_gpu_ids, gpu_status, loaded_cudart,
                             parse_gpu_ids)
from tests.conftest import REPO

STATUS = gpu_status()
needs_gpu = pytest.mark.skipif(STATUS.count == 0, reason=f"needs a GPU: {STATUS.reason}")


def run_tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)


# --- no GPU: clean refusals -----------------------------------------------------------------

@pytest.mark.skipif(STATUS.count > 0, reason="this machine has a GPU")
def test_gpu_check_says_no_gpu_with_status_3():
    out = run_tool("tools/gpu_check.py")
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU: "), out.stderr
    assert STATUS.reason in lines[0]


@pytest.mark.skipif(STATUS.count > 0, reason="this machine has a GPU")
@pytest.mark.parametrize("flag", [["--gpu", "0"], ["--gpus", "0,1"]])
def test_train_says_no_gpu_before_anything_starts(flag, tmp_path):
    out = run_tool("tools/train.py", "--solver", "solvers/market.prototxt", *flag)
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip().splitlines() == [f"train: no GPU: {STATUS.reason}"]


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "0,0"], "repeat"),
    (["--gpus", "a,1"], "comma-separated device numbers"),
    (["--gpu", "-1"], "comma-separated device numbers"),
    (["--gpu", "0,1"], "--gpu takes one device"),
    (["--gpu", "0", "--gpus", "1,2"], "not allowed with"),
])
def test_train_refuses_bad_gpu_ids_as_usage_errors(flags, message):
    out = run_tool("tools/train.py", "--solver", "solvers/market.prototxt", *flags)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_gpu_check_usage_errors():
    out = run_tool("tools/gpu_check.py", "--iters", "3")
    assert out.returncode == 2 and "--iters must be >= 10" in out.stderr


def test_gpu_id_parsing_and_checks():
    assert parse_gpu_ids("0") == [0] and parse_gpu_ids(" 1, 3 ") == [1, 3]
    for bad in ("", "0,", "x", "-1", "1.5"):
        with pytest.raises(ValueError):
            parse_gpu_ids(bad)
    two = GPUStatus(2, "", "/lib/libcudart.so.11.0")
    check_gpu_ids([0, 1], two)
    with pytest.raises(NoGPUError, match=r"no GPU 2, 5: only 2 CUDA device\(s\) visible"):
        check_gpu_ids([1, 2, 5], two)
    with pytest.raises(NoGPUError, match="^no GPU: no CUDA-capable device"):
        check_gpu_ids([0], GPUStatus(0, "no CUDA-capable device (x)", "/lib/libcudart.so"))


def test_the_cuda_runtime_is_found_in_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f0-7f1 r-xp 0 08:01 1 /usr/lib/libc.so.6\n"
                    "7f2-7f3 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libcudart.so.11.8.89\n")
    assert loaded_cudart(str(maps)) == "/usr/lib/x86_64-linux-gnu/libcudart.so.11.8.89"
    maps.write_text("7f0-7f1 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    assert loaded_cudart(str(maps)) is None
    assert loaded_cudart(str(tmp_path / "absent")) is None


def test_status_matches_the_build():
    """A CPU-only pycaffe maps no CUDA runtime; a CUDA one does, and without a device says why."""
    import caffe

    if STATUS.cudart is None:
        assert "built without CUDA" in STATUS.reason and STATUS.count == 0
    else:
        assert caffe.has_nccl()
        assert STATUS.count > 0 or STATUS.reason.startswith(("no NVIDIA driver", "no CUDA"))


def test_a_cuda_caffe_without_a_gpu_does_not_print_its_context_errors():
    """What a CUDA Caffe prints on stderr on a machine without a GPU when set_mode_cpu()
    creates its context and when it is seeded: those three errors go, glog's notice goes with
    them, and any other message stays (with the notice)."""
    from rmnet.caffe.pycaffe import drop_no_gpu_noise

    notice = "WARNING: Logging before InitGoogleLogging() is written to STDERR\n"
    noise = ("E20261201 15:55:26.783641 32069 common.cpp:114] Cannot create Cublas handle. "
             "Cublas won't be available.\n"
             "E20261201 15:55:26.783721 32069 common.cpp:121] Cannot create Curand generator. "
             "Curand won't be available.\n"
             "E20261201 15:56:37.701264 32069 common.cpp:141] Curand not available. Skipping "
             "setting the curand seed.\n")
    other = "E20261201 15:55:26.790000 32069 net.cpp:1] Something else went wrong\n"
    assert drop_no_gpu_noise(notice + noise) == ""
    assert drop_no_gpu_noise(notice + noise + other) == notice + other
    assert drop_no_gpu_noise(other) == other
    assert drop_no_gpu_noise("") == ""


def test_import_caffe_prints_nothing_on_this_machine():
    """Through rmnet's import, pycaffe (CPU or CUDA build, with or without a GPU) starts in
    CPU mode without a word on stderr."""
    code = ("from rmnet.caffe.pycaffe import import_caffe\n"
            "caffe = import_caffe()\n"
            "caffe.Net  # the module really loaded\n")
    env = {k: v for k, v in os.environ.items() if k != "GLOG_minloglevel"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# --- the checks' machinery, on the CPU --------------------------------------------------------

@pytest.mark.parametrize("case", gpucheck.NATIVE_CASES, ids=lambda c: c.name)
def test_native_layer_gradients_by_finite_differences_on_cpu(caffe, case):
    r = gpucheck.finite_difference(case, "cpu")
    assert r.checked >= 12 and r.ok, r


def test_finite_differences_catch_a_wrong_gradient(caffe, monkeypatch):
    """The check fails when the analytic gradient is off (here: a layer whose numeric and
    analytic gradients differ by construction: Dropout in TRAIN is random per forward)."""
    case = gpucheck.LayerCase("dropout", 'type: "Dropout" dropout_param { dropout_ratio: 0.5 }',
                              (2, 3, 4, 4))
    assert not gpucheck.finite_difference(case, "cpu").ok


def test_mode_comparison_of_the_light_train_net_cpu_against_cpu(caffe):
    diffs = gpucheck.compare_modes(REPO / "prototxt" / "light" / "train.prototxt",
                                   ("cpu", "cpu"), batch=4)
    kinds = {d.what for d in diffs}
    assert kinds == {"value", "gradient", "param gradient"}
    assert len([d for d in diffs if d.what == "param gradient"]) > 300
    assert all(d.ok and d.error == 0 for d in diffs), [d for d in diffs if d.error]


def test_rel_error():
    a = np.array([1.0, -2.0, 4.0])
    assert gpucheck.rel_error(a, a) == 0
    assert gpucheck.rel_error(a, a + [0, 0, 0.04]) == pytest.approx(0.04 / 4.04)
    assert gpucheck.rel_error(np.zeros(3), np.zeros(3)) == 0


LOG = """\
I20261201 10:00:00.000000 1 solver.cpp:239] Iteration 0 (0 iter/s, 0.5s/2 iters), loss = 9.0
I20261201 10:00:01.000000 1 solver.cpp:239] Iteration 2 (2 iter/s, 1s/2 iters), loss = 8.5
I20261201 10:00:02.000000 1 solver.cpp:258]     Train net output #0: loss = 8.4
I1201 10:00:03.000000 1 solver.cpp:239] Iteration 4 (1 iter/s, 2s/2 iters), loss = 8.0
I20261201 10:00:05.000000 1 solver.cpp:239] Iteration 6 (1 iter/s, 2s/2 iters), loss = 7.5
"""


def test_loss_curve_and_images_per_second(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG)
    assert gpucheck.loss_curve(log) == [(0, 9.0), (2, 8.5), (4, 8.0), (6, 7.5)]
    # from iteration 2 (skip 1) to 6: 4 iterations x 32 images in 4 s
    assert gpucheck.images_per_second(log, 32, skip=1) == pytest.approx(32.0)
    assert gpucheck.images_per_second(log, 32, skip=5) is None


def test_curves_match_rule():
    cpu = [(0, 9.0), (2, 8.0), (4, 7.0), (6, 6.0)]
    ok, detail = gpucheck.curves_match(cpu, [(0, 9.0), (2, 8.1), (4, 7.1), (6, 6.1)], tail=2)
    assert ok and "first loss 9.0000 vs 9.0000" in detail
    assert not gpucheck.curves_match(cpu, [(0, 9.5), (2, 8.0), (4, 7.0), (6, 6.0)])[0]
    assert not gpucheck.curves_match(cpu, [(0, 9.0), (2, 8.0), (4, 9.0), (6, 9.0)], tail=2)[0]
    assert not gpucheck.curves_match(cpu, [])[0]


# --- on a GPU -----------------------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("variant", ["light", "strong"])
def test_every_layer_of_the_train_net_matches_on_gpu(caffe, variant):
    diffs = gpucheck.compare_modes(REPO / "prototxt" / variant / "train.prototxt")
    bad = [d for d in diffs if not d.ok]
    assert not bad, bad[:5]


@needs_gpu
@pytest.mark.parametrize("case", gpucheck.NATIVE_CASES, ids=lambda c: c.name)
def test_native_layer_gradients_by_finite_differences_on_gpu(caffe, case):
    r = gpucheck.finite_difference(case, "gpu")
    caffe.set_mode_cpu()
    assert r.ok, r


@needs_gpu
def test_gpu_check_passes(tmp_path):
    """The whole check with no budget: every check runs (NCCL only with two GPUs), passes,
    and the report holds the device, the measurements and the summary line."""
    import json

    out = run_tool("tools/gpu_check.py", "--out", str(tmp_path / "work"), "--report",
                   str(tmp_path), "--budget-min", "0")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: PASS")
    (path,) = tmp_path.glob("gpu_check-*.json")
    assert last.endswith(f"; report {path}")
    data = json.loads(path.read_text())
    assert data["status"] == "pass" and data["exit_code"] == 0 and data["summary"] == last
    assert data["gpu"]["device"]["compute_capability"] and data["gpu"]["cuda_runtime_version"]
    checks = {c["name"]: c for c in data["checks"]}
    assert list(checks) == ["layers light", "fd", "training", "speed", "layers strong", "nccl"]
    assert all(c["status"] == "pass" for n, c in checks.items() if n != "nccl")
    assert checks["nccl"]["status"] == ("pass" if STATUS.count > 1 else "skip")
    speed = checks["speed"]["numbers"]
    assert speed["images_per_s_gpu"] > speed["images_per_s_cpu"] > 0
    assert len(checks["training"]["numbers"]["curve_gpu"]) >= 10


@needs_gpu
def test_scheduled_dropout_draws_the_cpu_masks_on_gpu(caffe, tmp_path):
    """The native scheduled Dropout's CUDA path against its CPU path: the same masks (a hash of
    seed, pass and element), the same outputs and gradients (upstream gradient not 1), the
    same counter, and the identity after the switch-off."""
    net_path = tmp_path / "drop.prototxt"
    net_path.write_text(
        'force_backward: true\n'
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 dim: 5 dim: 6 } } }\n'
        'layer { name: "drop" type: "Dropout" bottom: "x" top: "y" param { lr_mult: 0 decay_mult: 0 }\n'
        '  dropout_param { dropout_ratio: 0.3 switch_off_iter: 3 iter_size: 1 seed: 5 } }\n')
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    g = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)

    def passes(mode: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
        gpucheck.set_mode(mode)
        net = caffe.Net(str(net_path), caffe.TRAIN)
        out = []
        for _ in range(5):
            net.blobs["x"].data[...] = x
            net.forward()
            net.blobs["y"].diff[...] = g
            net.backward()
            out.append((net.blobs["y"].data.copy(), net.blobs["x"].diff.copy(),
                        float(net.params["drop"][0].data.flat[0])))
        return out

    gpu, cpu = passes("gpu"), passes("cpu")
    for i, ((yg, dg, cg), (yc, dc, cc)) in enumerate(zip(gpu, cpu)):
        np.testing.assert_array_equal(yg, yc, err_msg=f"forward pass {i}")
        np.testing.assert_array_equal(dg, dc, err_msg=f"backward pass {i}")
        assert cg == cc == i + 1
    assert (cpu[0][0] == 0).any() and not (cpu[4][0] == 0).any()      # masked, then identity
    np.testing.assert_array_equal(cpu[4][1], g)
