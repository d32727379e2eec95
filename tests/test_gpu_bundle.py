"""The offline GPU build's own checks: the bundle's integrity, the clear errors, the GPU choice.

These run the real scripts/offline_setup.sh on small generated bundles (the real archive that
`make gpu-bundle` writes is checked too when one lies at dist/rmnet-gpu-bundle.tar.xz or
RMNET_TEST_BUNDLE names it); the full offline CUDA build is exercised by the simulated target
(docs/gpu-offline.md), not here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO

OFFLINE = REPO / "scripts" / "offline_setup.sh"


def run(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(OFFLINE), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def fake_bin(tmp_path: Path, name: str, script: str) -> Path:
    """A folder holding one executable NAME (a shell script) to put first on PATH."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    f = d / name
    f.write_text("#!/bin/sh\n" + script)
    f.chmod(0o755)
    return d


# --- compute capability -------------------------------------------------------------------

def test_arch_from_variable_wins(tmp_path):
    path = fake_bin(tmp_path, "nvidia-smi", "echo 8.0\n")
    out = run(["--print-arch"], {"RMNET_CUDA_ARCH_BIN": "86", "PATH": f"{path}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "86"


def test_arch_from_nvidia_smi_each_gpu_once(tmp_path):
    path = fake_bin(tmp_path, "nvidia-smi", 'echo "9.0"; echo "8.0"; echo "9.0"\n')
    env = {"PATH": f"{path}:{os.environ['PATH']}"}
    env.pop("RMNET_CUDA_ARCH_BIN", None)
    out = run(["--print-arch"], {**env, "RMNET_CUDA_ARCH_BIN": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "80 90"


def test_arch_default_when_nvidia_smi_fails(tmp_path):
    path = fake_bin(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    out = run(["--print-arch"], {"RMNET_CUDA_ARCH_BIN": "", "PATH": f"{path}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "90"


def test_arch_malformed_is_refused():
    out = run(["--print-arch"], {"RMNET_CUDA_ARCH_BIN": "sm_90"})
    assert out.returncode == 1
    assert "'sm_90' is not a list like '90'" in out.stderr


# --- the bundle ---------------------------------------------------------------------------

def make_bundle(tmp_path: Path, files: dict[str, bytes], tamper: str | None = None) -> Path:
    """A small archive laid out as gpu_bundle.sh writes it: FILES, SHA256SUMS, MANIFEST.json."""
    top = tmp_path / "src" / "rmnet-gpu-bundle"
    sums, manifest = [], {"format": "rmnet-gpu-bundle 1", "files": {}}
    for name, data in sorted(files.items()):
        f = top / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        sums.append(f"{digest}  {name}\n")
        manifest["files"][name] = {"sha256": digest, "size": len(data)}
    (top / "SHA256SUMS").write_text("".join(sums))
    (top / "MANIFEST.json").write_text(json.dumps(manifest))
    if tamper:
        (top / tamper).write_bytes(b"changed after the manifest was written\n")
    out = tmp_path / "bundle.tar.xz"
    with tarfile.open(out, "w:xz") as tar:
        tar.add(top, arcname="rmnet-gpu-bundle")
    return out


FILES = {"caffe-src/CMakeLists.txt": b"project(Caffe)\n", "deps/lib/libx.so.1": bytes(range(256)) * 64,
         "python/3.12/include/python3.12/Python.h": b"/* header */\n"}


def test_bundle_round_trip(tmp_path):
    bundle = make_bundle(tmp_path, FILES)
    out = run(["--verify", str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    assert "bundle OK" in out.stdout and "(3 files checked)" in out.stdout
    unpacked = Path(out.stdout.split("bundle OK: ")[1].split(" (")[0])
    assert (unpacked / "deps/lib/libx.so.1").read_bytes() == FILES["deps/lib/libx.so.1"]
    again = run(["--verify", str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache")})
    assert again.returncode == 0 and again.stdout == out.stdout   # reused, not unpacked again


def test_missing_bundle_names_the_file(tmp_path):
    out = run(["--verify", str(tmp_path / "nowhere.tar.xz")], {"RMNET_CACHE": str(tmp_path / "c")})
    assert out.returncode == 1
    assert f"bundle {tmp_path / 'nowhere.tar.xz'}: no such file" in out.stderr


def test_truncated_bundle_is_refused(tmp_path):
    bundle = make_bundle(tmp_path, FILES)
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    out = run(["--verify", str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert f"bundle {bundle}: not a complete xz tar archive" in out.stderr
    assert not list((tmp_path / "cache" / "offline").glob("bundle-*")), "a broken bundle was kept"


def test_tampered_file_is_named(tmp_path):
    bundle = make_bundle(tmp_path, FILES, tamper="deps/lib/libx.so.1")
    out = run(["--verify", str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert "do not match its SHA256SUMS" in out.stderr and "deps/lib/libx.so.1: FAILED" in out.stderr


def test_archive_without_manifest_is_refused(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "README").write_text("not a bundle\n")
    bundle = tmp_path / "other.tar.xz"
    with tarfile.open(bundle, "w:xz") as tar:
        tar.add(d, arcname="other")
    out = run(["--verify", str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert "no rmnet-gpu-bundle/SHA256SUMS or MANIFEST.json" in out.stderr


# --- the target's Python and toolkit ------------------------------------------------------

def python_without_headers(tmp_path: Path) -> Path:
    """This Python, told by a sitecustomize that its include folder is an empty one."""
    site = tmp_path / "site"
    site.mkdir()
    empty = tmp_path / "no-include"
    empty.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sysconfig\n_get = sysconfig.get_paths\n"
        f"def get_paths(*a, **k):\n    p = dict(_get(*a, **k)); p['include'] = {str(empty)!r}; return p\n"
        "sysconfig.get_paths = get_paths\n")
    py = tmp_path / "python3"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    return py


def test_no_python_headers_is_a_clear_error(tmp_path):
    pytest.importorskip("numpy")
    bundle = make_bundle(tmp_path, FILES)
    py = python_without_headers(tmp_path)
    ver = "%d.%d" % sys.version_info[:2]
    if ver == "3.12":
        pytest.skip("the generated bundle carries 3.12 headers")
    out = run([str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache"), "RMNET_PYTHON": str(py)})
    assert out.returncode == 1
    assert f"(Python {ver}) has no Python.h in {tmp_path / 'no-include'}" in out.stderr
    assert "the bundle carries headers only for 3.12" in out.stderr


def test_python_without_numpy_is_refused(tmp_path):
    bundle = make_bundle(tmp_path, FILES)
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = run([str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache"),
                              "RMNET_PYTHON": str(venv / "bin" / "python3")})
    assert out.returncode == 1
    assert "has no numpy" in out.stderr and "pycaffe needs it" in out.stderr


def test_no_cuda_toolkit_is_a_clear_error(tmp_path):
    import sysconfig
    pytest.importorskip("numpy")
    if list(Path("/usr/local").glob("cuda*")):
        pytest.skip("this machine has a CUDA toolkit in /usr/local")
    if any((Path(p) / "nvidia").is_dir() for p in sys.path if p):
        pytest.skip("this Python has NVIDIA wheels")
    inc = Path(sysconfig.get_paths()["include"]) / "Python.h"
    lib = Path(sysconfig.get_config_var("LIBDIR") or "/") / (sysconfig.get_config_var("INSTSONAME") or "-")
    if not inc.is_file() or not lib.is_file():
        pytest.skip(f"this Python lacks {inc} or {lib} (the error would be about those)")
    # PATH: every program of /usr/bin and /bin but nvcc (Debian's toolkit puts one in /usr/bin).
    path = tmp_path / "path"
    path.mkdir()
    for d in ("/usr/bin", "/bin"):
        for f in Path(d).iterdir():
            if f.name != "nvcc" and not (path / f.name).exists():
                (path / f.name).symlink_to(f)
    bundle = make_bundle(tmp_path, FILES)
    out = run([str(bundle)], {"RMNET_CACHE": str(tmp_path / "cache"), "RMNET_PYTHON": sys.executable,
                              "CUDA_HOME": "", "CUDA_PATH": "", "PATH": str(path)})
    assert out.returncode == 1
    assert "no CUDA toolkit (nvcc via CUDA_HOME, PATH or /usr/local/cuda*)" in out.stderr


# --- the real archive, when one was made --------------------------------------------------

def real_bundle() -> Path:
    p = Path(os.environ.get("RMNET_TEST_BUNDLE") or REPO / "dist" / "rmnet-gpu-bundle.tar.xz")
    if not p.is_file():
        pytest.skip(f"no bundle at {p} (make gpu-bundle writes one)")
    return p


def test_real_bundle_manifest_matches_its_files_and_this_checkout():
    with tarfile.open(real_bundle()) as tar:
        names = {m.name for m in tar.getmembers() if m.isfile()}
        manifest = json.load(tar.extractfile("rmnet-gpu-bundle/MANIFEST.json"))
        sums = tar.extractfile("rmnet-gpu-bundle/SHA256SUMS").read().decode()
    listed = {line.split(None, 1)[1] for line in sums.splitlines()}
    assert set(manifest["files"]) == listed
    assert {f"rmnet-gpu-bundle/{n}" for n in listed} | {
        "rmnet-gpu-bundle/SHA256SUMS", "rmnet-gpu-bundle/MANIFEST.json"} == names
    patches = sorted(p.name for p in (REPO / "scripts" / "caffe" / "patches").glob("*.patch"))
    assert [p["name"] for p in manifest["caffe_source"]["patches_applied"]] == patches
    for part in ("deps/bin/protoc.real", "deps/lib/libcaffe_never.so"):
        assert (part in listed) == (part == "deps/bin/protoc.real")
    assert any(n.startswith("boost-python-src/src/") for n in listed)


# --- the plugin `make test-offline` loads --------------------------------------------------

def test_absent_optional_package_skips_and_nothing_else(tmp_path):
    import importlib.util
    (tmp_path / "test_generated.py").write_text(
        "def test_optional():\n"
        "    raise ModuleNotFoundError(\"No module named 'onnx'\", name='onnx')\n"
        "def test_other_module():\n"
        "    raise ModuleNotFoundError(\"No module named 'not_a_package_here'\", name='not_a_package_here')\n"
        "def test_assertion():\n"
        "    assert 1 == 2\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.absent_packages",
                          "-p", "no:cacheprovider", str(tmp_path / "test_generated.py")],
                         capture_output=True, text=True, cwd=REPO)
    onnx_absent = importlib.util.find_spec("onnx") is None
    summary = out.stdout.strip().splitlines()[-1]
    if onnx_absent:
        assert "2 failed, 1 skipped" in summary, out.stdout
        assert "needs onnx, which this machine's Python lacks" in out.stdout
    else:   # installed here: its failure is a real failure
        assert "3 failed" in summary, out.stdout


def test_the_needs_mark_skips_only_where_a_package_is_absent():
    """The mark a test declares its optional packages with: a skip exactly where one is absent
    (find_spec, as the plugin), naming only the absent ones; a name that is not one of the
    optional packages is an error, not a test that is always skipped."""
    import importlib.util

    from tests.absent_packages import OPTIONAL, needs
    have = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL}
    for name in OPTIONAL:
        mark = needs(name).mark
        assert mark.name == "skipif" and mark.args == (not have[name],)
        if not have[name]:
            assert mark.kwargs["reason"] == f"needs {name}, which this machine's Python lacks"
    mark = needs("onnx", "faiss").mark
    assert mark.args == (not (have["onnx"] and have["faiss"]),)
    absent = [name for name in ("onnx", "faiss") if not have[name]]
    if absent:
        want = f"needs {' and '.join(absent)}, which this machine's Python lacks"
        assert mark.kwargs["reason"] == want
    with pytest.raises(ValueError, match="faiss-cpu"):
        needs("faiss-cpu")
