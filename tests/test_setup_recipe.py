"""The install recipe's own checks: source verification, failure reporting, the Dockerfile replay.

These run the real scripts (scripts/setup.sh, scripts/docker_check.py) on small inputs; the full
recipe itself is exercised by `make setup` before the suite and by `make docker-check`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SETUP = REPO / "scripts" / "setup.sh"


def source_env() -> dict[str, str]:
    out = {}
    for line in (REPO / "scripts" / "caffe" / "source.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def cached_source_dir() -> Path:
    env = source_env()
    cache = Path(os.environ.get("RMNET_CACHE") or
                 Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rmnet")
    d = cache / "downloads" / f"{env['CAFFE_SOURCE_PACKAGE']}-{env['CAFFE_DEBIAN_VERSION']}"
    if not d.is_dir():
        pytest.skip(f"no downloaded source in {d} (RMNET_CACHE differs from make setup's)")
    return d


def verify(d: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), "--verify-source", str(d)], capture_output=True,
                          text=True)


def test_downloaded_source_verifies():
    out = verify(cached_source_dir())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verified" in out.stdout and "and 2 files" in out.stdout


def test_tampered_tarball_is_refused(tmp_path):
    src = cached_source_dir()
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    tarball = next(tmp_path.glob("*.orig.tar.gz"))
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0x01
    tarball.write_bytes(bytes(data))
    out = verify(tmp_path)
    assert out.returncode != 0
    assert "checksum mismatch" in out.stdout and tarball.name in out.stdout


def test_dsc_not_matching_the_pin_is_refused(tmp_path):
    src = cached_source_dir()
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    dsc = next(tmp_path.glob("*.dsc"))
    dsc.write_text(dsc.read_text() + "\n")
    out = verify(tmp_path)
    assert out.returncode != 0
    assert "scripts/caffe/source.env pins" in out.stdout


def test_failed_step_prints_one_line_with_step_and_log(tmp_path):
    """A download that fails (an unreachable mirror, in an empty cache) stops setup with one line
    naming the step and its log; the half-done fetch leaves nothing that a re-run would trust."""
    env = {**os.environ, "RMNET_CACHE": str(tmp_path / "cache"),
           "RMNET_SETUP_LOGS": str(tmp_path / "logs"),
           "RMNET_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
           "RMNET_VENV": sys.prefix}     # the venv running the suite (.venv or .venv-gpu)
    out = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "step 'caffe source' failed" in lines[0]
    log = tmp_path / "logs" / "03-caffe-source.log"
    assert str(log) in lines[0] and log.exists()
    assert "127.0.0.1" in log.read_text()
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []  # no half-fetched files


# --- the CUDA build's recipe (`make setup GPU=1`) ---------------------------------------------

def setup_out(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def cuda_env() -> dict[str, str]:
    out = {}
    for line in (REPO / "scripts" / "caffe" / "cuda.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v.strip('"')
    return out


def cmake_value(flags: list[str], name: str) -> str:
    """The value CMake keeps: the last -D of that name."""
    values = [f.split("=", 1)[1] for f in flags if f.startswith(f"-D{name}=")]
    assert values, f"no -D{name}"
    return values[-1]


def test_cpu_build_flags_have_no_cuda():
    flags = setup_out("--print-cmake-flags").stdout.splitlines()
    assert cmake_value(flags, "CPU_ONLY") == "ON" and cmake_value(flags, "USE_NCCL") == "OFF"
    assert not any("CUDA" in f for f in flags)


def test_gpu_build_flags_override_the_cpu_ones():
    cfg = cuda_env()
    out = setup_out("--gpu", "--print-cmake-flags",
                    env={"RMNET_CUDA_ARCH_BIN": "", "RMNET_CUDA_ARCH_PTX": ""})
    assert out.returncode == 0, out.stderr
    flags = out.stdout.splitlines()
    cpu = setup_out("--print-cmake-flags").stdout.splitlines()
    assert flags[:len(cpu)] == cpu                  # the CPU flags (and their changes) come first
    assert cmake_value(flags, "CPU_ONLY") == "OFF"
    assert cmake_value(flags, "USE_NCCL") == "ON" and cmake_value(flags, "USE_CUDNN") == "OFF"
    assert cmake_value(flags, "CUDA_ARCH_NAME") == "Manual"
    assert cmake_value(flags, "CUDA_ARCH_BIN") == cfg["CUDA_ARCH_BIN"] == "70 75 80 86 89 90"
    assert cmake_value(flags, "CUDA_ARCH_PTX") == "90"
    assert cmake_value(flags, "CUDA_NVCC_EXECUTABLE") == "/usr/bin/nvcc"
    assert cmake_value(flags, "CUDA_HOST_COMPILER") == "/usr/bin/g++-11"
    nccl = cmake_value(flags, "NCCL_LIBRARIES")
    assert nccl.endswith(f"{cfg['NCCL_WHEEL']}-{cfg['NCCL_VERSION']}/nvidia/nccl/lib/libnccl.so.2")
    assert len(cfg["NCCL_WHEEL_SHA256"]) == 64


def test_gpu_architectures_can_be_narrowed_for_a_test_build():
    flags = setup_out("--gpu", "--print-cmake-flags", env={"RMNET_CUDA_ARCH_BIN": "80"}).stdout
    assert cmake_value(flags.splitlines(), "CUDA_ARCH_BIN") == "80"


def test_cuda_toolkit_comes_from_a_private_sources_list_with_non_free():
    out = setup_out("--print-cuda-apt-sources")
    lines = out.stdout.splitlines()
    assert lines, out.stderr
    for line in lines:
        assert line.startswith("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ")
        assert line.endswith(" main non-free") and " bookworm" in line
    text = (REPO / "scripts" / "setup.sh").read_text()
    assert "--no-install-recommends $CUDA_TOOLKIT_PACKAGES" in text
    assert '"Dir::Etc::SourceParts=$dir/sources.list.d"' in text
    assert '"Dir::State::Lists=$dir/lists"' in text


def test_setup_usage_error():
    out = setup_out("--bogus")
    assert out.returncode == 2 and "usage: scripts/setup.sh [--gpu]" in out.stderr


def test_make_selects_the_gpu_recipe_and_venv_only_with_gpu_1():
    if not shutil.which("make"):
        pytest.skip("no make")
    # Under `make test GPU=1`, make passes GPU=1 down through MAKEFLAGS: start from a clean slate.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GPU")}

    def dry(*args):
        return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True,
                              text=True, env=env).stdout
    assert "scripts/setup.sh --gpu" in dry("setup", "GPU=1")
    assert "--gpu" not in dry("setup") and "--gpu" not in dry("test")
    assert ".venv/bin/python -m pytest" in dry("test")
    assert ".venv-gpu/bin/python -m pytest" in dry("test", "GPU=1")


def test_fatbin_check_refuses_a_library_without_device_code():
    if not Path("/usr/bin/cuobjdump").exists():
        pytest.skip("no CUDA toolkit here (make setup GPU=1 installs it)")
    import caffe

    cpu_lib = Path(caffe.__file__).resolve().parents[3] / "libcaffe.so"
    out = setup_out("--verify-fatbin", str(cpu_lib))
    from rmnet.caffe.gpu import loaded_cudart
    if loaded_cudart() is None:                    # the suite runs against the CPU build
        assert out.returncode != 0 and "cannot read the device code" in out.stdout
    else:
        # Against the CUDA build: setup checked it and recorded what it found; the same check
        # for the architectures it was built for passes again.
        import re
        record = (cpu_lib.parent.parent / "cuobjdump.txt").read_text()
        assert "PTX ISA 7.8 (CUDA 11.8)" in record
        def archs(kind: str) -> str:
            listed = re.search(kind + r" \(([^)]*)\)", record).group(1)
            return " ".join(a.removeprefix("sm_") for a in listed.split())
        built_for = {"RMNET_CUDA_ARCH_BIN": archs("cubins"), "RMNET_CUDA_ARCH_PTX": archs("PTX")}
        out = setup_out("--verify-fatbin", str(cpu_lib), env=built_for)
        assert out.returncode == 0, out.stdout
        assert out.stdout.strip() == record.strip()
        bad = setup_out("--verify-fatbin", str(cpu_lib),
                        env={**built_for, "RMNET_CUDA_ARCH_BIN": "52"})
        assert bad.returncode != 0 and "lacks: sm_52 cubin" in bad.stdout


# --- docker/Dockerfile replay ---------------------------------------------------------------

def load_docker_check():
    spec = importlib.util.spec_from_file_location("docker_check", REPO / "scripts" / "docker_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["docker_check"] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def test_dockerfile_uses_only_replayable_steps_and_the_setup_recipe():
    dc = load_docker_check()
    steps = dc.parse_dockerfile(REPO / "docker" / "Dockerfile")
    ops = [s.op for s in steps]
    assert ops[0] == "FROM" and steps[0].args == "debian:bookworm-slim"
    assert set(ops) <= {"FROM", "ENV", "ARG", "WORKDIR", "COPY", "RUN", "CMD"}
    runs = " ".join(s.args for s in steps if s.op == "RUN")
    assert "make setup" in runs
    assert dc.debian_suite(steps[0].args, "x") == "bookworm"


def test_dockerfile_parser_joins_lines_and_rejects_the_unknown(tmp_path):
    dc = load_docker_check()
    f = tmp_path / "Dockerfile"
    f.write_text("FROM debian:bookworm\n# c\nRUN echo a \\\n    && echo b\nENV A=1 B=\"x y\"\n")
    steps = dc.parse_dockerfile(f)
    assert [(s.op, s.line) for s in steps] == [("FROM", 1), ("RUN", 3), ("ENV", 5)]
    assert steps[1].args == "echo a && echo b"
    assert dc.parse_env_args(steps[2].args, {}, "x") == {"A": "1", "B": "x y"}
    assert dc.expand("$A/${B}", {"A": "1", "B": "2"}) == "1/2"
    with pytest.raises(dc.DockerfileError, match="only FROM debian"):
        dc.debian_suite("ubuntu:22.04", "Dockerfile:1")
    f.write_text("FROM debian:bookworm\nHEALTHCHECK CMD true\n")
    rep = dc.Replayer(tmp_path, tmp_path, {})
    with pytest.raises(dc.DockerfileError, match=r"Dockerfile:2: instruction HEALTHCHECK"):
        rep.replay(dc.parse_dockerfile(f), f)


def test_gpu_dockerfile_runs_the_gpu_recipe_and_its_checks_say_no_gpu():
    dc = load_docker_check()
    steps = dc.parse_dockerfile(REPO / "docker" / "Dockerfile.gpu")
    assert steps[0].op == "FROM" and steps[0].args == "debian:bookworm-slim"
    assert set(s.op for s in steps) <= {"FROM", "ENV", "ARG", "WORKDIR", "COPY", "RUN", "CMD"}
    assert "make setup GPU=1" in " ".join(s.args for s in steps if s.op == "RUN")
    env = {}
    for s in steps:
        if s.op == "ENV":
            env.update(dc.parse_env_args(s.args, env, "x"))
    assert env["PATH"].startswith("/opt/rmnet/.venv-gpu/bin:")
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    checks = " ".join(dc.GPU_CHECKS)
    assert "tools/gpu_check.py" in checks and "--gpu 0" in checks and "make test GPU=1" in checks
    assert f"test $rc -eq {dc.NO_GPU_EXIT}" in checks
    from rmnet.caffe.gpu import NO_GPU_EXIT
    assert dc.NO_GPU_EXIT == NO_GPU_EXIT


def test_context_respects_dockerignore():
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("needs a git checkout and git (the Docker image has neither)")
    dc = load_docker_check()
    files = {str(p) for p in dc.context_files(REPO)}
    assert "scripts/setup.sh" in files and "docker/Dockerfile" in files
    assert not any(f.startswith((".venv/", ".venv-gpu/", ".setup-logs/", ".git/")) for f in files)
    assert not any("__pycache__" in f for f in files)
