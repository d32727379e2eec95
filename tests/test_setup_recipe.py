"""The install recipe's own checks: source verification, failure reporting, the Dockerfile replay.

These run the real scripts (scripts/setup.sh, scripts/docker_check.py) on small inputs; the full
recipe itself is exercised by `make setup` before the suite and by `make docker-check`.
"""
from __future__ import annotations

import importlib.util
import os
import re
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


@pytest.fixture(scope="module")
def unreachable_mirror(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """setup.sh run with an unreachable Debian mirror and an empty cache: (its folder, the run)."""
    tmp = tmp_path_factory.mktemp("setup_offline")
    env = {**os.environ, "RMNET_CACHE": str(tmp / "cache"),
           "RMNET_SETUP_LOGS": str(tmp / "logs"),
           "RMNET_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
           "RMNET_VENV": sys.prefix}     # the venv running the suite (.venv or .venv-gpu)
    return tmp, subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env,
                               timeout=600)


def failed_step(tmp: Path, out: subprocess.CompletedProcess) -> tuple[str, Path, str]:
    """The step setup.sh says failed, its log and the line quoted, checked: one line on stderr, naming the step
    and its log (which exists, in the logs folder), quoting the log's last line."""
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    m = re.fullmatch(r"setup: step '([a-z ]+)' failed \(exit (\d+)\): read (\S+)"
                     r"(?: \(last line: (.*)\))?", lines[0])
    assert m, lines[0]
    step, code, log, last = m[1], int(m[2]), Path(m[3]), m[4]
    assert code == out.returncode
    assert log.parent == tmp / "logs" and log.is_file()
    assert log.name.endswith(f"-{step.replace(' ', '-')}.log"), (step, log)
    text = log.read_text()
    assert last and last in text.strip().splitlines()[-1], (last, text[-500:])
    return step, log, last


def test_failed_step_prints_one_line_with_step_and_log(unreachable_mirror):
    """Whichever step fails first (here the source download from the unreachable mirror; on a
    machine whose earlier steps cannot run, such as a root with no network and no apt lists,
    that step), setup stops with one line naming the step and its log."""
    failed_step(*unreachable_mirror)


def test_a_failed_download_leaves_nothing_half_fetched(unreachable_mirror):
    """The download that fails names the mirror in its log and leaves nothing in the cache that a
    re-run would trust."""
    tmp, out = unreachable_mirror
    step, log, last = failed_step(tmp, out)
    if step in ("system packages", "python venv"):    # setup.sh's preconditions, not the fetch
        pytest.skip(f"setup.sh stops before its source download on this machine: step '{step}' "
                    f"failed ({last})")
    assert step == "caffe source" and log.name == "03-caffe-source.log"
    assert "127.0.0.1" in log.read_text()
    assert list((tmp / "cache" / "downloads").iterdir()) == []  # no half-fetched files


# --- the CUDA build's recipe (`make setup GPU=1`) ---------------------------------------------

def setup_out(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def print_cuda(env: dict | None = None) -> dict[str, str]:
    """The toolkit choice `setup.sh --gpu --print-cuda` reports (no download, no build)."""
    out = setup_out("--gpu", "--print-cuda", env=env)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def no_cuda_env(**extra) -> dict[str, str]:
    """The environment of a machine with no toolkit preference and no NVIDIA driver."""
    env = {"RMNET_CUDA": "", "CUDA_HOME": "", "RMNET_CUDA_ARCH_BIN": "",
           "RMNET_CUDA_ARCH_PTX": "", "RMNET_CUDA_HOST_COMPILER": "",
           "PATH": "/usr/bin:/bin"}
    env.update(extra)
    return env


def fake_driver(tmp_path: Path, version: str) -> str:
    """A PATH whose nvidia-smi reports VERSION as the driver."""
    d = tmp_path / "driver-bin"
    d.mkdir()
    smi = d / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {version}\n")
    smi.chmod(0o755)
    return f"{d}:/usr/bin:/bin"


def fake_toolkit(root: Path, release: str, nccl: bool = False) -> Path:
    """A folder shaped like a CUDA toolkit whose nvcc says RELEASE."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    f"echo 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(0o755)
    (root / "include").mkdir()
    (root / "lib64").mkdir()
    for h in ("cuda_runtime.h", "cublas_v2.h", "curand.h"):
        (root / "include" / h).write_text("")
    for lib in ("libcudart.so.12", "libcublas.so.12", "libcurand.so.10"):
        (root / "lib64" / lib).write_text("")
    if nccl:
        (root / "include" / "nccl.h").write_text("")
        (root / "lib64" / "libnccl.so.2").write_text("")
    return root


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
    out = setup_out("--gpu", "--print-cmake-flags", env=no_cuda_env(RMNET_CUDA="debian"))
    assert out.returncode == 0, out.stderr
    flags = out.stdout.splitlines()
    cpu = setup_out("--print-cmake-flags").stdout.splitlines()
    assert flags[:len(cpu) - 1] == cpu[:-1]         # the CPU flags (and their changes) come first
    assert cmake_value(flags, "BUILD_only_tests") == cmake_value(cpu, "BUILD_only_tests") + ",platform"
    assert cmake_value(flags, "CPU_ONLY") == "OFF"
    assert cmake_value(flags, "USE_NCCL") == "ON" and cmake_value(flags, "USE_CUDNN") == "OFF"
    assert cmake_value(flags, "CUDA_ARCH_NAME") == "Manual"
    assert cmake_value(flags, "CUDA_ARCH_BIN") == "70 75 80 86 89 90"
    assert cmake_value(flags, "CUDA_ARCH_PTX") == "90"
    assert cmake_value(flags, "CUDA_TOOLKIT_ROOT_DIR") == "/usr"
    assert cmake_value(flags, "CUDA_NVCC_EXECUTABLE") == "/usr/bin/nvcc"
    assert cmake_value(flags, "CUDA_HOST_COMPILER") == "/usr/bin/g++-11"
    assert cmake_value(flags, "NCCL_LIBRARIES").endswith(
        "/downloads/nvidia-nccl-cu11-2.21.5/nvidia/nccl/lib/libnccl.so.2")


def test_wheels_toolkit_is_cuda_13_for_turing_to_blackwell():
    cfg = print_cuda(no_cuda_env(RMNET_CUDA="wheels"))
    assert cfg["route"] == "wheels" and cfg["version"] == "13.0"
    assert cfg["arch_bin"] == "75 80 86 89 90 100 120" and cfg["arch_ptx"] == "120"
    assert cfg["host_compiler"] == "/usr/bin/g++"
    assert cfg["root"].endswith("/root") and "/cuda/wheels-13.0-" in cfg["root"]
    flags = setup_out("--gpu", "--print-cmake-flags",
                      env=no_cuda_env(RMNET_CUDA="wheels")).stdout.splitlines()
    assert cmake_value(flags, "CUDA_NVCC_EXECUTABLE") == cfg["root"] + "/bin/nvcc"
    assert cmake_value(flags, "NCCL_LIBRARIES") == cfg["root"] + "/lib/libnccl.so.2"


def test_wheel_pins_are_checksummed_and_match_one_cuda_release():
    text = (REPO / "scripts" / "caffe" / "cuda.env").read_text()
    block = text.split('WHEELS_CUDA="', 1)[1].split('"', 1)[0]
    pins = [line.split() for line in block.splitlines() if line.strip()]
    names = [p[0].split("==")[0] for p in pins]
    assert len(set(names)) == len(names) and len(pins) >= 8
    for spec, sha in pins:
        assert len(sha) == 64 and all(c in "0123456789abcdef" for c in sha), spec
    versions = {p[0].split("==")[1] for p in pins if p[0].split("==")[0] in
                ("nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm")}
    assert versions == {"13.0.88"}                  # compiler pieces from one release
    for name in ("nvidia-cublas", "nvidia-curand", "nvidia-nccl-cu13", "nvidia-cuda-runtime"):
        assert name in names


@pytest.mark.parametrize("driver, route, version", [
    ("580.159.03", "wheels", "13.0"),
    ("595.12", "wheels", "13.0"),
    ("535.183.01", "debian", "11.8"),
    ("520.61.05", "debian", "11.8"),
])
def test_the_driver_picks_the_toolkit(tmp_path, driver, route, version):
    cfg = print_cuda(no_cuda_env(PATH=fake_driver(tmp_path, driver)))
    assert (cfg["route"], cfg["version"]) == (route, version)
    assert f"driver {driver}" in cfg["why"]


def test_a_driver_too_old_for_any_toolkit_is_refused(tmp_path):
    out = setup_out("--gpu", "--print-cuda",
                    env=no_cuda_env(PATH=fake_driver(tmp_path, "470.256.02")))
    assert out.returncode == 2
    assert "470.256.02" in out.stderr and "update the driver" in out.stderr


def test_no_driver_visible_builds_the_wheels_and_says_why():
    cfg = print_cuda(no_cuda_env())
    assert cfg["route"] == "wheels"
    assert "no NVIDIA driver visible" in cfg["why"] and "CUDA=debian" in cfg["why"]


@pytest.mark.parametrize("release, bins, ptx, host, nccl", [
    ("11.8", "70 75 80 86 89 90", "90", "/usr/bin/g++-11", "nvidia-nccl-cu11==2.21.5"),
    ("12.4", "70 75 80 86 89 90", "90", "/usr/bin/g++", "nvidia-nccl-cu12==2.21.5"),
    ("12.8", "70 75 80 86 89 90 100 120", "120", "/usr/bin/g++", "nvidia-nccl-cu12==2.21.5"),
    ("13.1", "75 80 86 89 90 100 120", "120", "/usr/bin/g++", "nvidia-nccl-cu13==2.27.7"),
])
def test_a_toolkit_folder_sets_architectures_compiler_and_nccl_by_its_release(
        tmp_path, release, bins, ptx, host, nccl):
    home = fake_toolkit(tmp_path / "cuda", release)
    cfg = print_cuda(no_cuda_env(CUDA_HOME=str(home)))
    assert cfg["route"] == "home" and cfg["version"] == release
    assert (cfg["arch_bin"], cfg["arch_ptx"], cfg["host_compiler"]) == (bins, ptx, host)
    assert cfg["nccl"] == nccl and cfg["why"] == f"CUDA_HOME={home}"


def test_a_toolkit_folder_with_nccl_needs_no_wheel_and_rmnet_cuda_wins(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", "12.6", nccl=True)
    cfg = print_cuda(no_cuda_env(CUDA_HOME="/nowhere", RMNET_CUDA=str(home)))
    assert cfg["route"] == "home" and cfg["nccl"] == ""


@pytest.mark.parametrize("choice, message", [
    ("bogus", "expected wheels, debian or a toolkit folder"),
    ("/no/such/cuda", "does not exist"),
])
def test_a_bad_toolkit_choice_is_refused(choice, message):
    out = setup_out("--gpu", "--print-cuda", env=no_cuda_env(RMNET_CUDA=choice))
    assert out.returncode == 2 and message in out.stderr


def test_a_toolkit_too_old_is_refused(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", "10.2")
    out = setup_out("--gpu", "--print-cuda", env=no_cuda_env(RMNET_CUDA=str(home)))
    assert out.returncode == 2 and "CUDA '10.2'" in out.stderr and "11.8 to 13.x" in out.stderr


def test_gpu_architectures_can_be_narrowed_for_a_test_build():
    flags = setup_out("--gpu", "--print-cmake-flags", env={"RMNET_CUDA_ARCH_BIN": "80"}).stdout
    assert cmake_value(flags.splitlines(), "CUDA_ARCH_BIN") == "80"


# --- scripts/caffe/cuda_root.sh: one toolkit folder from a toolkit and NVIDIA's wheels ---------

CUDA_ROOT_SH = REPO / "scripts" / "caffe" / "cuda_root.sh"


def cuda_root(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CUDA_ROOT_SH), *map(str, args)], capture_output=True,
                          text=True, timeout=60)


def wheel_tree(root: Path) -> Path:
    """A site-packages-like folder with unpacked CUDA 13 wheels (no nvcc) and NCCL."""
    cu = root / "nvidia" / "cu13"
    for sub in ("include", "lib"):
        (cu / sub).mkdir(parents=True)
    for h in ("cublas_v2.h", "curand.h", "cuda_runtime.h"):
        (cu / "include" / h).write_text("wheel")
    for lib in ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudart.so.13"):
        (cu / "lib" / lib).write_text("wheel")
    nccl = root / "nvidia" / "nccl"
    (nccl / "include").mkdir(parents=True)
    (nccl / "lib").mkdir()
    (nccl / "include" / "nccl.h").write_text("wheel")
    (nccl / "lib" / "libnccl.so.2").write_text("wheel")
    return root


def test_cuda_root_merges_a_toolkit_with_wheel_libraries(tmp_path):
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\necho 'Build x'\n")
    nvcc.chmod(0o644)                       # as unpacked from a wheel: not executable
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("toolkit")
    (home / "lib64").mkdir()
    (home / "lib64" / "libcudart.so.13").write_text("toolkit")
    wheels = wheel_tree(tmp_path / "site-packages")
    dest = tmp_path / "root"
    out = cuda_root(dest, home, wheels)
    assert out.returncode == 0, out.stderr
    assert "release 13.0" in out.stdout
    assert os.access(dest / "bin" / "nvcc", os.X_OK)
    # The first source that has a name wins; the rest come from the wheels.
    assert (dest / "include" / "cuda_runtime.h").read_text() == "toolkit"
    assert (dest / "lib" / "libcudart.so.13").read_text() == "toolkit"
    assert (dest / "include" / "cublas_v2.h").read_text() == "wheel"
    assert (dest / "include" / "nccl.h").read_text() == "wheel"
    # Unversioned names for the linker, lib64 the same folder.
    for plain, versioned in (("libcublas.so", "libcublas.so.13"), ("libnccl.so", "libnccl.so.2"),
                             ("libcurand.so", "libcurand.so.10")):
        assert os.readlink(dest / "lib" / plain) == versioned
    assert (dest / "lib64" / "libnccl.so.2").read_text() == "wheel"
    # Re-running replaces the folder whole.
    assert cuda_root(dest, home, wheels).returncode == 0


def test_cuda_root_needs_an_nvcc_and_the_libraries(tmp_path):
    wheels = wheel_tree(tmp_path / "site-packages")
    out = cuda_root(tmp_path / "root", wheels)
    assert out.returncode == 1 and "no bin/nvcc" in out.stderr
    assert not (tmp_path / "root").exists()
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\necho 'release 13.0, V13.0.88'\n")
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("")
    out = cuda_root(tmp_path / "root", home)
    assert out.returncode == 1 and "no lib/libcudart.so" in out.stderr
    assert not (tmp_path / "root").exists()
    assert cuda_root(tmp_path / "root").returncode == 2


def test_cuda_toolkit_comes_from_a_private_sources_list_with_non_free():
    out = setup_out("--print-cuda-apt-sources")
    lines = out.stdout.splitlines()
    assert lines, out.stderr
    for line in lines:
        assert line.startswith("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ")
        assert line.endswith(" main non-free") and " bookworm" in line
    text = (REPO / "scripts" / "setup.sh").read_text()
    assert "--no-install-recommends $DEBIAN_CUDA_PACKAGES" in text
    assert '"Dir::Etc::SourceParts=$dir/sources.list.d"' in text
    assert '"Dir::State::Lists=$dir/lists"' in text


def test_setup_usage_error():
    out = setup_out("--bogus")
    assert out.returncode == 2 and "usage: scripts/setup.sh [--gpu]" in out.stderr


def test_make_selects_the_gpu_recipe_and_venv_only_with_gpu_1():
    if not shutil.which("make"):
        pytest.skip("no make")
    # Under `make test GPU=1 OFFLINE=...`, make passes its command-line variables down (through
    # MAKEFLAGS and the environment): start from a clean slate, without any the Makefile reads.
    settable = set(re.findall(r"^([A-Z_]+) \?=", (REPO / "Makefile").read_text(), re.M))
    assert {"GPU", "CUDA", "OFFLINE"} <= settable
    env = {k: v for k, v in os.environ.items()
           if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"} | settable}

    def dry(*args):
        return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True,
                              text=True, env=env).stdout
    assert "scripts/setup.sh --gpu" in dry("setup", "GPU=1")
    assert "--gpu" not in dry("setup") and "--gpu" not in dry("test")
    assert ".venv/bin/python -m pytest" in dry("test")
    assert ".venv-gpu/bin/python -m pytest" in dry("test", "GPU=1")
    offline = dry("setup", "GPU=1", "OFFLINE=b.tar.xz")
    assert 'scripts/offline_setup.sh "b.tar.xz"' in offline and "setup.sh --gpu" not in offline


def test_fatbin_check_refuses_a_library_without_device_code():
    cfg = print_cuda()
    if not Path(cfg["root"], "bin", "cuobjdump").exists():
        pytest.skip(f"no CUDA toolkit ({cfg['route']}) set up here (make setup GPU=1 installs it)")
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
        assert re.search(r"PTX ISA [0-9.]+ \(CUDA [0-9.]+\)", record), record
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
