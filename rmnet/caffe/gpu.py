"""Which CUDA devices this process's Caffe can use, found out without letting Caffe abort.

Caffe's GPU code stops the whole process with SIGABRT when there is no device (`set_device`,
the first GPU blob allocation, `caffe device_query`: "Check failed: error == cudaSuccess (100
vs. 0) no CUDA-capable device is detected"). The project's GPU entry points (tools/train.py
--gpu/--gpus, tools/gpu_check.py) ask the CUDA runtime first, through ctypes on the very
libcudart the imported pycaffe was linked against, and stop with one clear "no GPU" line and
exit status NO_GPU_EXIT instead.

A CPU-only Caffe (the default `make setup`) loads no libcudart at all: that is reported as its
own reason ("built without CUDA"), not as a missing device.
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass

NO_GPU_EXIT = 3   # exit status of a command line asked for a GPU it cannot have (bad usage: 2)


class NoGPUError(RuntimeError):
    """The requested GPUs are not there; the message says why (one line)."""


@dataclass(frozen=True)
class GPUStatus:
    count: int             # usable CUDA devices (0 when none, or a CPU-only Caffe)
    reason: str            # why count is 0 ("" otherwise)
    cudart: str | None     # the libcudart Caffe uses (None: Caffe built without CUDA)


def loaded_library(stem: str, maps: str = "/proc/self/maps") -> str | None:
    """Path of the shared library ``stem`` (e.g. "libcudart") mapped into this process."""
    try:
        with open(maps) as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if f"/{stem}.so" in path:
                    return path
    except OSError:
        return None
    return None


def loaded_cudart(maps: str = "/proc/self/maps") -> str | None:
    """Path of the libcudart mapped into this process (pycaffe's, once caffe is imported)."""
    return loaded_library("libcudart", maps)


def device_count(cudart: str) -> tuple[int, str]:
    """(number of CUDA devices, "" or why none) from ``cudaGetDeviceCount`` of ``cudart``.
    No driver (error 35) and no device (error 100) both come back as 0 with the runtime's own
    message; this never aborts."""
    lib = ctypes.CDLL(cudart)
    n = ctypes.c_int(0)
    rc = lib.cudaGetDeviceCount(ctypes.byref(n))
    if rc != 0:
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        msg = lib.cudaGetErrorString(rc)
        text = msg.decode(errors="replace") if msg else "unknown error"
        what = {35: "no NVIDIA driver loaded", 100: "no CUDA-capable device"}.get(rc, "CUDA unusable")
        return 0, f"{what} (cudaGetDeviceCount: {text}, CUDA error {rc})"
    if n.value == 0:
        return 0, "cudaGetDeviceCount found no device"
    return int(n.value), ""


def device_name(cudart: str, device: int) -> str:
    """The device's name from cudaGetDeviceProperties (its first field, char[256])."""
    lib = ctypes.CDLL(cudart)
    buf = ctypes.create_string_buffer(8192)      # larger than cudaDeviceProp in any CUDA 11/12
    if lib.cudaGetDeviceProperties(buf, int(device)) != 0:
        return f"device {device}"
    return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace")


def gpu_status() -> GPUStatus:
    """The CUDA devices the imported pycaffe can use."""
    try:
        import caffe  # noqa: F401  (maps libcaffe.so and, in a CUDA build, its libcudart)
    except ImportError as e:
        return GPUStatus(0, f"pycaffe does not import ({e}): run make setup GPU=1", None)
    cudart = loaded_cudart()
    if cudart is None:
        return GPUStatus(0, "this Caffe is built without CUDA (make setup GPU=1 builds the CUDA "
                            "one into .venv-gpu)", None)
    try:
        count, reason = device_count(cudart)
    except (OSError, AttributeError) as e:
        return GPUStatus(0, f"cannot ask {cudart} for devices: {e}", cudart)
    return GPUStatus(count, reason, cudart)


def cuda_device_count() -> int:
    """Usable CUDA devices for this process's Caffe; 0 without a driver, a device, or CUDA."""
    return gpu_status().count


def parse_gpu_ids(text: str) -> list[int]:
    """"0,1,3" -> [0, 1, 3]. ValueError (a usage error) for anything else, and for repeats:
    each rank needs its own device (NCCL 2.x refuses two ranks of one communicator on a GPU)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise ValueError(f"GPU ids must be comma-separated device numbers like 0 or 0,1, "
                         f"got {text!r}")
    ids = [int(p) for p in parts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"GPU ids repeat in {text!r}: each training process needs its own "
                         f"device")
    return ids


def check_gpu_ids(ids: list[int], status: GPUStatus) -> None:
    """NoGPUError unless every id in ``ids`` is a device of ``status``."""
    if status.count == 0:
        raise NoGPUError(f"no GPU: {status.reason}")
    missing = [i for i in ids if i >= status.count]
    if missing:
        raise NoGPUError(f"no GPU {', '.join(map(str, missing))}: only {status.count} CUDA "
                         f"device(s) visible (0..{status.count - 1}"
                         f"{'; CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'] if 'CUDA_VISIBLE_DEVICES' in os.environ else ''})")


def require_gpus(ids: list[int]) -> GPUStatus:
    """Check that Caffe can use every device in ``ids`` before anything calls into it;
    NoGPUError (one line, starting "no GPU") otherwise."""
    status = gpu_status()
    check_gpu_ids(ids, status)
    return status


def _version(code: int) -> str:
    """CUDA's integer versions (11080, 13000) as "11.8", "13.0"."""
    return f"{code // 1000}.{code % 1000 // 10}"


def nvidia_driver_version(path: str = "/proc/driver/nvidia/version") -> str | None:
    """The kernel driver's version ("580.159"), from the file the NVIDIA module provides."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", text)
    return m.group(1) if m else None


def _call(lib, fn: str, *args) -> bool:
    """Whether the runtime function ``fn`` exists and returns cudaSuccess."""
    try:
        return getattr(lib, fn)(*args) == 0
    except AttributeError:
        return False


def cuda_versions(cudart: str) -> dict:
    """The CUDA version of the runtime ``cudart`` and the one the driver supports ("11.8",
    "13.0"; None where it cannot say, e.g. no driver), and the NVIDIA driver's own version."""
    lib = ctypes.CDLL(cudart)
    runtime, driver = ctypes.c_int(0), ctypes.c_int(0)
    has_runtime = _call(lib, "cudaRuntimeGetVersion", ctypes.byref(runtime))
    has_driver = _call(lib, "cudaDriverGetVersion", ctypes.byref(driver)) and driver.value > 0
    return {"cudart": cudart,
            "cuda_runtime_version": _version(runtime.value) if has_runtime else None,
            "cuda_driver_version": _version(driver.value) if has_driver else None,
            "nvidia_driver_version": nvidia_driver_version()}


def device_info(cudart: str, device: int) -> dict:
    """Name, compute capability, multiprocessors and memory of CUDA device ``device``, asked
    through ``cudart`` (the runtime pycaffe loaded); a value the runtime refuses is None.
    Asking for the memory creates the device's context (as Caffe's first call would)."""
    lib = ctypes.CDLL(cudart)

    def attribute(attr: int) -> int | None:
        v = ctypes.c_int(0)
        ok = _call(lib, "cudaDeviceGetAttribute", ctypes.byref(v), attr, int(device))
        return v.value if ok else None

    major, minor = attribute(75), attribute(76)   # cudaDevAttrComputeCapabilityMajor/Minor
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    memory = (_call(lib, "cudaSetDevice", int(device))
              and _call(lib, "cudaMemGetInfo", ctypes.byref(free), ctypes.byref(total)))
    return {"index": int(device),
            "name": device_name(cudart, device),
            "compute_capability": None if major is None or minor is None else f"{major}.{minor}",
            "multiprocessors": attribute(16),      # cudaDevAttrMultiProcessorCount
            "memory_total_bytes": int(total.value) if memory else None}
