#!/usr/bin/env bash
# The project's one set-up recipe, used by `make setup` on a host and by docker/Dockerfile.
#
# Steps (each idempotent; a re-run skips what is already done and resumes after a failure):
#   1. system packages   Debian build dependencies of Caffe, installed with apt-get if missing.
#   2. python venv       .venv from Debian's /usr/bin/python3 (pycaffe links Debian's
#                        libpython3.11), with requirements.txt, the tracker's packages
#                        (requirements-track.txt, without dependency resolution: see that file)
#                        and the project (pip install -e .).
#   3. caffe source      Debian's caffe source package, fetched with a private apt state
#                        directory (the system's apt configuration is not touched) and checked
#                        against the pinned .dsc SHA-256 and the .dsc's own checksums.
#   4. caffe build       Debian's patches + ours (scripts/caffe/patches), CPU only, OpenBLAS,
#                        pycaffe with Python layers, on all cores; installed into a cache outside
#                        the clone keyed by everything that changes the binaries.
#   5. wire              .venv sees caffe: a .pth file for `import caffe`, and .venv/bin/caffe.
#
# With --gpu (`make setup GPU=1`) the same Caffe is built with CUDA into .venv-gpu (the CPU
# build and .venv stay as they are and stay the default). The toolkit is a choice, pinned in
# scripts/caffe/cuda.env (RMNET_CUDA, the Makefile's CUDA=): `wheels` (NVIDIA's CUDA 13.0 wheels
# from PyPI, checked against their SHA-256s and unpacked into the cache), `debian` (bookworm
# non-free's CUDA 11.8 and g++-11, installed with apt-get through a private sources list and
# lists directory; the system's apt configuration is not touched; NCCL from NVIDIA's
# nvidia-nccl-cu11 wheel) or a toolkit folder (CUDA_HOME; NCCL from it or from NVIDIA's wheel for
# its major version). Unset, it follows the driver nvidia-smi reports (580+: wheels; 520-579:
# debian; none visible: wheels). Extra steps: "cuda toolkit" and "nccl"; the build step adds the
# CUDA flags, is cached under its own key (toolkit, host compiler, architectures, NCCL) and
# checks the fat binary with cuobjdump before installing it.
#
# Environment (all optional):
#   RMNET_CACHE    build cache root      (default: ${XDG_CACHE_HOME:-$HOME/.cache}/rmnet)
#   RMNET_VENV     virtual environment   (default: <repo>/.venv)
#   RMNET_JOBS     parallel build jobs   (default: nproc)
#   RMNET_DEBIAN_MIRROR  Debian mirror for the source package (default: the one apt already uses)
#   RMNET_SETUP_LOGS     where step logs go (default: <repo>/.setup-logs)
#   RMNET_CUDA     with --gpu: the toolkit, wheels | debian | a toolkit folder (default: see above)
#   CUDA_HOME      with --gpu and RMNET_CUDA unset: the toolkit folder to use
#   RMNET_CUDA_ARCH_BIN  with --gpu: compute capabilities (default by toolkit in scripts/caffe/cuda.env)
#   RMNET_CUDA_ARCH_PTX  with --gpu: PTX kept for newer GPUs (default by toolkit, the same file)
#   RMNET_CUDA_HOST_COMPILER  with --gpu: nvcc's host compiler (default: g++-11 for CUDA 11, else g++)
#
# `scripts/setup.sh --verify-source DIR` only checks a downloaded source package in DIR;
# `scripts/setup.sh --stock-caffe` builds (or finds in the cache) Caffe with only the patches it
# needs to build (STOCK_PATCHES) and Debian's default OpenBLAS, for benchmarks against the
# project's build; it does not touch the venv's wiring and prints the build's prefix last;
# `scripts/setup.sh [--gpu] --print-cmake-flags` prints the CMake flags a build would use;
# `--gpu --print-cuda` the toolkit choice (route, version, folder, why, architectures);
# `--print-cuda-apt-sources` the private sources list of the debian route's install, and
# `--verify-fatbin LIB` checks a CUDA library's device code as the build does.
#
# On failure it prints one line naming the step and the log file to read, and exits non-zero.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=caffe/source.env
. "$ROOT/scripts/caffe/source.env"
# shellcheck source=caffe/cuda.env
. "$ROOT/scripts/caffe/cuda.env"

GPU=0
ARGS=()
for a in "$@"; do
  if [ "$a" = --gpu ]; then GPU=1; else ARGS+=("$a"); fi
done
set -- ${ARGS[@]+"${ARGS[@]}"}

if [ "$GPU" = 1 ]; then
  VENV=${RMNET_VENV:-$ROOT/.venv-gpu}
else
  VENV=${RMNET_VENV:-$ROOT/.venv}
fi
CACHE=${RMNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rmnet}
JOBS=${RMNET_JOBS:-$(nproc)}
LOGDIR=${RMNET_SETUP_LOGS:-$ROOT/.setup-logs}
SYSTEM_PYTHON=/usr/bin/python3
PYVER=3.11

# Debian packages: Caffe's build dependencies (boost, protobuf, glog, gflags, hdf5,
# OpenBLAS, lmdb, snappy, cmake, g++), plus what this recipe itself runs.
SYSTEM_PACKAGES=(
  build-essential cmake pkg-config
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev
  libopenblas-dev libopenblas0-openmp liblmdb-dev libsnappy-dev
  python3 python3-dev python3-venv
  dpkg-dev xz-utils patch ca-certificates debian-archive-keyring
)

# CMake flags; part of the cache key. OpenMP: the CPU kernels of our layer patches.
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DCPU_ONLY=ON -DBLAS=Open -DUSE_OPENMP=ON
  -DBUILD_python=ON -DBUILD_python_layer=ON -Dpython_version=3
  -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=ON -DUSE_NCCL=OFF
  -DBUILD_docs=OFF -DBUILD_matlab=OFF
)

# The project's build (not --stock-caffe) links OpenBLAS's OpenMP variant (Debian's
# libopenblas0-openmp, beside the default pthread one, which stays the system's choice): the
# patched layers and the BLAS then share one OpenMP thread pool, and a GEMM called inside a
# parallel loop runs on its caller's core. With the pthread variant both pools spin on the same
# cores and the patched step is slower than stock. The library's folder goes into the RPATH.
OPENMP_BLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0
OPENMP_BLAS_FLAGS=(-DOpenBLAS_LIB="$OPENMP_BLAS")

# Caffe's own gtests of the layers our patches change, built with the patched library into
# <prefix>/test/test.testbin (run by scripts/caffe/gtest.sh); part of the cache key.
CAFFE_GTESTS=convolution_layer,depthwise_convolution_layer,batch_norm_layer,scale_layer,bias_layer,neuron_layer,scheduled_dropout_layer,pooling_layer,eltwise_layer,split_layer,layer_chains,net

# --stock-caffe: Debian's source with only these of our patches (the ones needed to build).
STOCK_PATCHES=(0001-protobuf-SetTotalBytesLimit-one-argument.patch)
STOCK=0

# The CUDA build: CMAKE_FLAGS, then gpu_cmake_flags (CMake keeps the last value of a repeated
# -D), for the toolkit resolve_cuda chose; part of the CUDA build's cache key.

# nvcc_release NVCC: "11.8", "13.0", ... from `nvcc --version`.
nvcc_release() { "$1" --version 2>/dev/null | grep -o 'release [0-9]*\.[0-9]*' | cut -d' ' -f2; }

driver_version() {
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' '
}

# The compute capabilities a toolkit release builds by default (cuda.env's ARCH_* lists).
default_arch() {
  local v=$1 major minor
  major=${v%%.*}; minor=${v#*.}
  case $major in
    11) echo "$ARCH_BIN_CUDA11|$ARCH_PTX_CUDA11" ;;
    12) if [ "$minor" -ge 8 ]; then echo "$ARCH_BIN_CUDA12_8|$ARCH_PTX_CUDA12_8"
        else echo "$ARCH_BIN_CUDA12|$ARCH_PTX_CUDA12"; fi ;;
    *) echo "$ARCH_BIN_CUDA13|$ARCH_PTX_CUDA13" ;;
  esac
}

# resolve_cuda: which toolkit this --gpu build uses (see scripts/caffe/cuda.env). Sets
# CUDA_ROUTE (wheels|debian|home), CUDA_VERSION, CUDA_ROOT (the toolkit folder CMake gets),
# CUDA_WHY, CUDA_HOST_COMPILER, CUDA_ARCH_BIN/PTX, NCCL_SPEC (a wheel to fetch, or empty),
# NCCL_DIR, NCCL_INCLUDE_DIR, NCCL_LIBRARY. Reads nothing from the network.
resolve_cuda() {
  local choice=${RMNET_CUDA:-} driver major
  CUDA_WHY=""
  if [ -z "$choice" ] && [ -n "${CUDA_HOME:-}" ]; then choice=$CUDA_HOME; CUDA_WHY="CUDA_HOME=$CUDA_HOME"; fi
  if [ -z "$choice" ]; then
    driver=$(driver_version)
    if [ -n "$driver" ]; then
      major=${driver%%.*}
      if [ "$major" -ge "$DRIVER_MIN_13" ]; then
        choice=wheels; CUDA_WHY="driver $driver (>= $DRIVER_MIN_13) runs CUDA 13"
      elif [ "$major" -ge "$DRIVER_MIN_11" ]; then
        choice=debian; CUDA_WHY="driver $driver (< $DRIVER_MIN_13) runs CUDA 11.8, not 13"
      else
        echo "setup: the NVIDIA driver is $driver: CUDA 11.8 needs $DRIVER_MIN_11 or newer, CUDA 13 $DRIVER_MIN_13; update the driver (or set CUDA=... to build anyway)" >&2
        exit 2
      fi
    else
      choice=wheels
      CUDA_WHY="no NVIDIA driver visible (nvidia-smi): CUDA 13 by default; its binaries need driver $DRIVER_MIN_13+, CUDA=debian builds CUDA 11.8 for drivers $DRIVER_MIN_11+"
    fi
  fi
  [ -n "$CUDA_WHY" ] || CUDA_WHY="CUDA=$choice"
  NCCL_SPEC=""; NCCL_DIR=""
  case $choice in
    wheels)
      CUDA_ROUTE=wheels
      CUDA_VERSION=$WHEELS_CUDA_VERSION
      CUDA_WHEELS_DIR=$CACHE/cuda/wheels-$CUDA_VERSION-$(printf '%s' "$WHEELS_CUDA" | sha256sum | cut -c1-12)
      CUDA_ROOT=$CUDA_WHEELS_DIR/root
      ;;
    debian)
      CUDA_ROUTE=debian
      CUDA_VERSION=$DEBIAN_CUDA_VERSION
      CUDA_ROOT=/usr
      NCCL_SPEC=$NCCL_WHEEL_11
      ;;
    */*)
      CUDA_ROUTE=home
      [ -d "$choice" ] || { echo "setup: CUDA toolkit folder $choice ($CUDA_WHY) does not exist" >&2; exit 2; }
      CUDA_HOME_DIR=$(cd "$choice" && pwd -P)
      [ -x "$CUDA_HOME_DIR/bin/nvcc" ] || { echo "setup: $CUDA_HOME_DIR/bin/nvcc not found ($CUDA_WHY): not a CUDA toolkit folder" >&2; exit 2; }
      CUDA_VERSION=$(nvcc_release "$CUDA_HOME_DIR/bin/nvcc")
      case $CUDA_VERSION in
        11.8|12.*|13.*) ;;
        *) echo "setup: $CUDA_HOME_DIR/bin/nvcc is CUDA '${CUDA_VERSION:-unknown}': this build supports 11.8 to 13.x" >&2; exit 2 ;;
      esac
      CUDA_ROOT=$CACHE/cuda/home-$(printf '%s' "$CUDA_HOME_DIR" | sha256sum | cut -c1-12)/root
      if ! compgen -G "$CUDA_HOME_DIR/lib*/libnccl.so*" >/dev/null || [ ! -f "$CUDA_HOME_DIR/include/nccl.h" ]; then
        local var=NCCL_WHEEL_${CUDA_VERSION%%.*}
        NCCL_SPEC=${!var}
      fi
      ;;
    *) echo "setup: CUDA=$choice: expected wheels, debian or a toolkit folder (a path)" >&2; exit 2 ;;
  esac
  if [ -n "$NCCL_SPEC" ]; then
    local spec=${NCCL_SPEC%% *}
    NCCL_DIR=$CACHE/downloads/${spec%%==*}-${spec#*==}
  fi
  if [ "$CUDA_ROUTE" = debian ]; then
    NCCL_INCLUDE_DIR=$NCCL_DIR/nvidia/nccl/include
    NCCL_LIBRARY=$NCCL_DIR/nvidia/nccl/lib/libnccl.so.2
  else
    NCCL_INCLUDE_DIR=$CUDA_ROOT/include
    NCCL_LIBRARY=$CUDA_ROOT/lib/libnccl.so.2
  fi
  local dflt
  if [ "$CUDA_ROUTE" = debian ]; then dflt=$DEBIAN_CUDA_HOST_COMPILER
  elif [ "${CUDA_VERSION%%.*}" = 11 ]; then dflt=/usr/bin/g++-11
  else dflt=/usr/bin/g++
  fi
  CUDA_HOST_COMPILER=${RMNET_CUDA_HOST_COMPILER:-$dflt}
  dflt=$(default_arch "$CUDA_VERSION")
  CUDA_ARCH_BIN=${RMNET_CUDA_ARCH_BIN:-${dflt%|*}}
  CUDA_ARCH_PTX=${RMNET_CUDA_ARCH_PTX:-${dflt#*|}}
  # nvcc calls ptxas, fatbinary and cudafe++ by bare name: another CUDA toolchain earlier on
  # PATH (e.g. /usr/local/bin) would silently be mixed in, so configure and build with this
  # toolkit's bin first, then the system's.
  PATH_FOR_CUDA=$CUDA_ROOT/bin:/usr/bin:/bin:/usr/sbin:/sbin
}

gpu_cmake_flags() {
  printf '%s\n' -DCPU_ONLY=OFF -DUSE_CUDNN=OFF -DUSE_NCCL=ON \
    -DCUDA_ARCH_NAME=Manual "-DCUDA_ARCH_BIN=$CUDA_ARCH_BIN" "-DCUDA_ARCH_PTX=$CUDA_ARCH_PTX" \
    "-DCUDA_TOOLKIT_ROOT_DIR=$CUDA_ROOT" "-DCUDA_NVCC_EXECUTABLE=$CUDA_ROOT/bin/nvcc" \
    "-DCUDA_HOST_COMPILER=$CUDA_HOST_COMPILER" \
    "-DNCCL_INCLUDE_DIR=$NCCL_INCLUDE_DIR" "-DNCCL_LIBRARIES=$NCCL_LIBRARY"
}

print_cuda() {
  printf 'route=%s\nversion=%s\nroot=%s\nwhy=%s\nhost_compiler=%s\narch_bin=%s\narch_ptx=%s\nnccl=%s\n' \
    "$CUDA_ROUTE" "$CUDA_VERSION" "$CUDA_ROOT" "$CUDA_WHY" "$CUDA_HOST_COMPILER" \
    "$CUDA_ARCH_BIN" "$CUDA_ARCH_PTX" "${NCCL_SPEC%% *}"
}

# build_flags: the CMake flags of this build (stock; CPU; or CPU + GPU).
build_flags() {
  printf '%s\n' "${CMAKE_FLAGS[@]}"
  if [ "$STOCK" != 1 ]; then
    printf '%s\n' "${OPENMP_BLAS_FLAGS[@]}" -DBUILD_only_tests="$CAFFE_GTESTS"
  fi
  if [ "$GPU" = 1 ]; then gpu_cmake_flags; fi
}

STEP_NO=0

say() { printf '==> %s\n' "$*"; }

# run_step NAME FUNCTION: run FUNCTION with its output in a log file; on failure print one line
# naming the step and the log, and stop.
run_step() {
  local name=$1 fn=$2 log rc
  STEP_NO=$((STEP_NO + 1))
  log="$LOGDIR/$(printf '%02d' "$STEP_NO")-$(echo "${fn#step_}" | tr _ -).log"
  CURRENT_LOG=$log
  : >"$log"
  set +e
  ( set -euo pipefail; "$fn" ) >>"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    local last
    last=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-160)
    echo "setup: step '$name' failed (exit $rc): read $log${last:+ (last line: $last)}" >&2
    exit "$rc"
  fi
}

# Progress for the long steps goes to the terminal (fd 3), everything else to the step's log.
exec 3>&1
progress() { printf '    %s\n' "$*" >&3; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root to run: $* (no sudo found)"; return 1
  fi
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------------------------------------
# 1. system packages
missing_packages() {
  local p status
  for p in "${SYSTEM_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || echo "$p"
  done
}

step_system_packages() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  if [ -z "${missing// /}" ]; then echo "all present"; return 0; fi
  progress "installing Debian packages: $missing"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update
  # shellcheck disable=SC2086
  as_root apt-get install -y --no-install-recommends $missing
  missing=$(missing_packages | tr '\n' ' ')
  if [ -n "${missing// /}" ]; then echo "still missing after apt-get install: $missing"; return 1; fi
}

# ---------------------------------------------------------------------------------------------
# 2. python venv
venv_stamp() {
  cat "$ROOT/requirements.txt" "$ROOT/requirements-track.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
}

step_python_venv() {
  if [ ! -x "$SYSTEM_PYTHON" ]; then echo "$SYSTEM_PYTHON not found"; return 1; fi
  local v
  v=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$v" != "$PYVER" ]; then
    echo "$SYSTEM_PYTHON is Python $v; pycaffe here links Debian's libpython$PYVER"; return 1
  fi
  # A venv made from another interpreter cannot load pycaffe: rebuild it.
  if [ -f "$VENV/pyvenv.cfg" ] && ! grep -q '^home = /usr/bin$' "$VENV/pyvenv.cfg"; then
    progress "$VENV was not made from $SYSTEM_PYTHON; recreating it"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$SYSTEM_PYTHON" -m venv "$VENV"
  fi
  local want have
  want=$(venv_stamp)
  have=$(cat "$VENV/.rmnet-requirements" 2>/dev/null || true)
  if [ "$want" = "$have" ]; then echo "up to date"; return 0; fi
  progress "installing Python packages into $VENV (requirements.txt)"
  rm -f "$VENV/.rmnet-requirements"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$ROOT/requirements.txt"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps -r "$ROOT/requirements-track.txt"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  echo "$want" >"$VENV/.rmnet-requirements"
}

# ---------------------------------------------------------------------------------------------
# 3. caffe source
SRC_DIR=$CACHE/downloads/$CAFFE_SOURCE_PACKAGE-$CAFFE_DEBIAN_VERSION
DSC_NAME=${CAFFE_SOURCE_PACKAGE}_${CAFFE_DEBIAN_VERSION#*:}.dsc

debian_mirror() {
  if [ -n "${RMNET_DEBIAN_MIRROR:-}" ]; then echo "$RMNET_DEBIAN_MIRROR"; return; fi
  # The mirror this system's apt already uses for the main Debian archive.
  apt-get indextargets --format '$(REPO_URI) $(LABEL)' 2>/dev/null \
    | awk '$2 == "Debian" { print $1; exit }'
}

# verify_source DIR: the .dsc has the pinned SHA-256 and every file it lists has its checksum.
verify_source() {
  local dir=$1 dsc got
  dsc="$dir/$DSC_NAME"
  [ -f "$dsc" ] || { echo "missing $dsc"; return 1; }
  got=$(sha256 "$dsc")
  if [ "$got" != "$CAFFE_DSC_SHA256" ]; then
    echo "checksum mismatch: $dsc has SHA-256 $got, scripts/caffe/source.env pins $CAFFE_DSC_SHA256"
    return 1
  fi
  local sum size name n=0
  while read -r sum size name; do
    [ -f "$dir/$name" ] || { echo "missing $dir/$name (listed in $DSC_NAME)"; return 1; }
    got=$(sha256 "$dir/$name")
    if [ "$got" != "$sum" ]; then
      echo "checksum mismatch: $dir/$name has SHA-256 $got, $DSC_NAME says $sum"; return 1
    fi
    n=$((n + 1))
  done < <(sed -n '/^Checksums-Sha256:/,/^[^ ]/{/^ /p}' "$dsc")
  [ "$n" -gt 0 ] || { echo "$dsc lists no Checksums-Sha256"; return 1; }
  echo "verified $DSC_NAME and $n files"
}

step_caffe_source() {
  if verify_source "$SRC_DIR" >/dev/null 2>&1; then verify_source "$SRC_DIR"; return 0; fi
  mkdir -p "$CACHE/locks"
  exec 8>"$CACHE/locks/$(basename "$SRC_DIR").lock"   # one download at a time (see step_caffe_build)
  flock 8
  if verify_source "$SRC_DIR" >/dev/null 2>&1; then verify_source "$SRC_DIR"; return 0; fi
  local mirror apt_opts
  mirror=$(debian_mirror)
  [ -n "$mirror" ] || { echo "no Debian mirror found in apt's configuration; set RMNET_DEBIAN_MIRROR"; return 1; }
  progress "fetching Debian source package $CAFFE_SOURCE_PACKAGE $CAFFE_DEBIAN_VERSION ($CAFFE_DEBIAN_SUITE)"
  FETCH_TMP=$(mktemp -d "$CACHE/downloads/.fetch.XXXXXX")
  trap 'rm -rf "$FETCH_TMP"' EXIT   # this step runs in its own subshell
  local tmp=$FETCH_TMP
  mkdir -p "$tmp/state/lists/partial" "$tmp/state/cache/archives/partial" "$tmp/files"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $CAFFE_DEBIAN_SUITE main" \
    >"$tmp/state/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$tmp/state/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$tmp/state/lists" -o "Dir::Cache=$tmp/state/cache"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${apt_opts[@]}" update
  (cd "$tmp/files" && apt-get "${apt_opts[@]}" source --download-only \
    "$CAFFE_SOURCE_PACKAGE=$CAFFE_DEBIAN_VERSION")
  verify_source "$tmp/files"
  rm -rf "$SRC_DIR"
  mv "$tmp/files" "$SRC_DIR"
}

# ---------------------------------------------------------------------------------------------
# 4. caffe build
dpkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# The patches to apply, in order: all of scripts/caffe/patches, or STOCK_PATCHES with --stock-caffe.
patch_files() {
  local p
  if [ "$STOCK" = 1 ]; then
    for p in "${STOCK_PATCHES[@]}"; do echo "$ROOT/scripts/caffe/patches/$p"; done
  else
    for p in "$ROOT"/scripts/caffe/patches/*.patch; do echo "$p"; done
  fi
}

cache_key() {
  {
    echo "source $CAFFE_DEBIAN_VERSION $CAFFE_DSC_SHA256"
    local p
    while read -r p; do echo "patch $(basename "$p") $(sha256 "$p")"; done < <(patch_files)
    echo "flags ${CMAKE_FLAGS[*]}"
    if [ "$STOCK" != 1 ]; then
      echo "gtests $CAFFE_GTESTS"
      echo "blas ${OPENMP_BLAS_FLAGS[*]} $(dpkg_version libopenblas0-openmp)"
    fi
    echo "numpy $("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
    echo "python $("$SYSTEM_PYTHON" -c 'import sys; print(sys.version)')"
    echo "gcc $(gcc -dumpfullversion)"
    for p in libprotobuf-dev libboost-python-dev libopenblas-dev libhdf5-dev libgoogle-glog-dev; do
      echo "deb $p $(dpkg_version "$p")"
    done
    if [ "$GPU" = 1 ]; then
      # The CUDA build also depends on the toolkit, the host compiler, the architectures and NCCL.
      echo "gpu flags $(gpu_cmake_flags | tr '\n' ' ')"
      echo "cuda route $CUDA_ROUTE $CUDA_VERSION"
      echo "nvcc $("$CUDA_ROOT/bin/nvcc" --version 2>/dev/null | tail -n 1)"
      case $CUDA_ROUTE in
        debian) echo "deb nvidia-cuda-toolkit $(dpkg_version nvidia-cuda-toolkit)" ;;
        wheels) echo "wheels $WHEELS_CUDA" ;;
        home) echo "toolkit $CUDA_HOME_DIR $(cat "$CUDA_HOME_DIR/version.json" "$CUDA_HOME_DIR/version.txt" 2>/dev/null | sha256sum)" ;;
      esac
      echo "host compiler $("$CUDA_HOST_COMPILER" -dumpfullversion 2>/dev/null || echo none)"
      echo "nccl $NCCL_SPEC"
    fi
  } | sha256sum | cut -c1-16
}

caffe_prefix() {
  if [ "$GPU" = 1 ]; then echo "$CACHE/caffe/cuda$CUDA_VERSION-$(cache_key)"
  else echo "$CACHE/caffe/$(cache_key)"
  fi
}

step_caffe_build() {
  local prefix build stage
  prefix=$(caffe_prefix)
  if [ -f "$prefix/.complete" ]; then echo "cached: $prefix"; return 0; fi
  # One build per prefix at a time: a second setup (another clone or worktree sharing the
  # cache) waits here, then takes the finished build instead of removing the build folder
  # under the first. The lock is released when this step's subshell exits.
  mkdir -p "$CACHE/locks"
  exec 8>"$CACHE/locks/$(basename "$prefix").lock"
  if ! flock -n 8; then
    progress "another setup is building $prefix: waiting for it"
    flock 8
  fi
  if [ -f "$prefix/.complete" ]; then echo "cached (built by another setup): $prefix"; return 0; fi
  build="$prefix.build"
  stage="$prefix.stage"
  rm -rf "$build" "$stage"
  mkdir -p "$build"
  if [ "$GPU" = 1 ]; then
    # Only the chosen toolkit may be found by bare name (see PATH_FOR_CUDA).
    export PATH=$PATH_FOR_CUDA
    progress "building CUDA $CUDA_VERSION Caffe into $prefix for sm $CUDA_ARCH_BIN + PTX $CUDA_ARCH_PTX (on 2 cores about 2-3 minutes per architecture plus 5; log: $CURRENT_LOG)"
  else
    progress "building Caffe into $prefix (about 7 minutes on 2 cores; log: $CURRENT_LOG)"
  fi
  dpkg-source -x "$SRC_DIR/$DSC_NAME" "$build/src"
  local p
  while read -r p; do
    [ -f "$p" ] || { echo "patch $p not found"; return 1; }
    echo "applying $(basename "$p")"
    patch -d "$build/src" -p1 --forward --batch <"$p"
  done < <(patch_files)
  local flags
  mapfile -t flags < <(build_flags)
  # The libraries a wheels or folder toolkit brings (cuBLAS, cuRAND, NCCL, the runtime) stay
  # in its folder: libcaffe finds them through its RPATH.
  local rpath="$prefix/lib"
  if [ "$GPU" = 1 ] && [ "$CUDA_ROUTE" != debian ]; then rpath+=";$CUDA_ROOT/lib"; fi
  cmake -S "$build/src" -B "$build/obj" "${flags[@]}" \
    -DPYTHON_EXECUTABLE="$VENV/bin/python" \
    -DCMAKE_INSTALL_PREFIX="$prefix" "-DCMAKE_INSTALL_RPATH=$rpath"
  # Show progress in steps of 10%.
  make -C "$build/obj" -j"$JOBS" 2>&1 | awk -v fd=/dev/fd/3 '
    { print; fflush() }
    match($0, /^\[ *[0-9]+%\]/) {
      pct = substr($0, RSTART + 1, RLENGTH - 3) + 0
      if (pct >= last + 10) { last = pct - pct % 10; printf "    caffe build %d%%\n", last >> fd; fflush(fd) }
    }'
  make -C "$build/obj" install DESTDIR="$stage"
  if [ "$STOCK" != 1 ]; then
    progress "building Caffe's gtests of the patched layers ($CAFFE_GTESTS)"
    make -C "$build/obj" -j"$JOBS" test.testbin
    mkdir -p "$stage$prefix/test"
    cp "$build/obj/test/test.testbin" "$stage$prefix/test/"
    # The OpenMP OpenBLAS must be the one libcaffe loads (see OPENMP_BLAS). The output is
    # captured first: `ldd | grep -q` fails under pipefail when grep exits before ldd is done.
    local libs
    libs=$(ldd "$stage$prefix/lib/libcaffe.so")
    grep -q "=> ${OPENMP_BLAS%/*}/" <<<"$libs" ||
      { echo "$stage$prefix/lib/libcaffe.so does not load $OPENMP_BLAS:"; echo "$libs"; return 1; }
  fi
  if [ "$GPU" = 1 ]; then
    # debian: NCCL beside libcaffe.so (found through its RPATH), so the install does not
    # depend on the download cache. Then the fat binary must hold what was asked for, made by
    # the chosen toolkit.
    if [ "$CUDA_ROUTE" = debian ]; then cp -a "$NCCL_DIR"/nvidia/nccl/lib/libnccl.so* "$stage$prefix/lib/"; fi
    verify_fatbin "$stage$prefix/lib/libcaffe.so" | tee "$stage$prefix/cuobjdump.txt"
  fi
  touch "$stage$prefix/.complete"
  mv "$stage$prefix" "$prefix"
  rm -rf "$build" "$stage"
  echo "installed $prefix"
}

# ---------------------------------------------------------------------------------------------
# GPU only: the CUDA toolkit, NCCL and the fat-binary check

debian_cuda_ok() {
  [ -x /usr/bin/nvcc ] && [ -x "$CUDA_HOST_COMPILER" ] &&
    [ "$(nvcc_release /usr/bin/nvcc)" = "$DEBIAN_CUDA_VERSION" ]
}

# cuda_apt_sources: the system's Debian repositories (as apt is configured), each with the
# non-free component added, for a private sources list. The system's lists may be stale or
# removed (the Docker image removes them), so the private list holds main too, for the
# toolkit's dependencies.
cuda_apt_sources() {
  local lines
  lines=$(apt-get indextargets --format '$(TARGET_OF) $(REPO_URI) $(RELEASE) $(LABEL)' 2>/dev/null \
    | awk -v suite="$DEBIAN_CUDA_SUITE" '$1 == "deb" && ($4 == "Debian" || $4 == "Debian-Security") \
          && index($3, suite) == 1 { print $2, $3 }' | sort -u)
  if [ -z "$lines" ]; then
    local mirror
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian/
    lines="$mirror $DEBIAN_CUDA_SUITE"
  fi
  local uri suite
  while read -r uri suite; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main non-free"
  done <<<"$lines"
}

# The toolkit's packages depend on the driver's user-space libraries (libcuda.so.1,
# libnvidia-ml.so.1 >= 520), which Debian ships with its driver packages (contrib/non-free,
# pulling in nvidia-support and the alternatives system). The driver belongs to the machine: a
# host with NVIDIA's own installer, or the NVIDIA container runtime, provides it outside dpkg,
# and Debian's libcuda1 would take over the libcuda.so.1 link from it. So, when no driver
# package is installed, a file-less package stands in for those two (the compilers and
# runtime libraries need no driver to build).
driver_installed() {
  local installed   # captured: a `| grep -q` would fail under pipefail if grep exits early
  installed=$(dpkg-query -W -f='${db:Status-Status} ${Package} ${Provides}\n' 2>/dev/null |
    awk '$1 == "installed"')
  grep -q 'libcuda\.so\.1\|^installed libcuda1 ' <<<"$installed"
}

driver_stub_deb() {
  local dir=$1/driver-stub
  rm -rf "$dir"; mkdir -p "$dir/pkg/DEBIAN"
  cat >"$dir/pkg/DEBIAN/control" <<'EOF'
Package: rmnet-cuda-driver-stub
Version: 1.0
Architecture: all
Maintainer: RMNet setup recipe <root@localhost>
Provides: libcuda.so.1 (= 520), libnvidia-ml.so.1 (= 520)
Description: stands in for the NVIDIA driver's user-space libraries
 Installed by the RMNet reproduction's scripts/setup.sh --gpu so that Debian's CUDA toolkit
 installs without Debian's driver packages; the driver comes from the host (or the NVIDIA
 container runtime). Holds no files.
EOF
  dpkg-deb --build "$dir/pkg" "$dir/rmnet-cuda-driver-stub_1.0_all.deb" >/dev/null
  echo "$dir/rmnet-cuda-driver-stub_1.0_all.deb"
}

step_cuda_debian() {
  if debian_cuda_ok; then
    echo "present: $(/usr/bin/nvcc --version | tail -n 1), $CUDA_HOST_COMPILER"
    return 0
  fi
  progress "installing Debian's CUDA $DEBIAN_CUDA_VERSION toolkit ($DEBIAN_CUDA_PACKAGES) from $DEBIAN_CUDA_SUITE non-free (about 1.6 GB to download, 5.5 GB on disk)"
  local dir=$CACHE/apt-cuda apt_opts
  mkdir -p "$dir/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial"
  cuda_apt_sources >"$dir/sources.list.d/rmnet-cuda.list"
  cat "$dir/sources.list.d/rmnet-cuda.list"
  # Private sources and lists; dpkg's own state is the system's (these are binary packages).
  apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$dir/sources.list.d"
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
    -o "APT::Sandbox::User=root" -o "DPkg::Lock::Timeout=600"
  )
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get "${apt_opts[@]}" update
  local stub=""
  if ! driver_installed; then stub=$(driver_stub_deb "$dir"); echo "no NVIDIA driver package installed: adding $stub"; fi
  # shellcheck disable=SC2086
  as_root apt-get "${apt_opts[@]}" install -y --no-install-recommends $DEBIAN_CUDA_PACKAGES $stub
  as_root apt-get "${apt_opts[@]}" clean        # the downloaded .debs (1.6 GB)
  if ! debian_cuda_ok; then
    echo "after apt-get install, /usr/bin/nvcc is not CUDA $DEBIAN_CUDA_VERSION or $CUDA_HOST_COMPILER is missing"
    return 1
  fi
  /usr/bin/nvcc --version | tail -n 1
}

# fetch_wheel "NAME==VERSION SHA256" DIR: pip downloads that one wheel (no dependencies) into
# DIR, checks its SHA-256 against the pin and prints the wheel's path.
fetch_wheel() {
  local spec=${1%% *} want=${1#* } dir=$2 whl got
  mkdir -p "$dir"
  "$VENV/bin/python" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$dir" "$spec" >&2
  whl=$(find "$dir" -name "$(echo "${spec%%==*}" | tr - _)-${spec#*==}-*.whl" | head -n 1)
  [ -n "$whl" ] || { echo "pip downloaded no wheel of $spec" >&2; return 1; }
  got=$(sha256 "$whl")
  if [ "$got" != "$want" ]; then
    echo "checksum mismatch: $(basename "$whl") has SHA-256 $got, scripts/caffe/cuda.env pins $want" >&2
    return 1
  fi
  echo "$whl"
}

# wheels: NVIDIA's CUDA 13 wheels, each checked, unpacked into one tree in the cache
# (nvidia/cu13, nvidia/nccl), and scripts/caffe/cuda_root.sh's toolkit folder made from it.
step_cuda_wheels() {
  if [ -f "$CUDA_WHEELS_DIR/.complete" ] && [ -x "$CUDA_ROOT/bin/nvcc" ]; then
    echo "present: $CUDA_WHEELS_DIR ($("$CUDA_ROOT/bin/nvcc" --version | tail -n 1))"; return 0
  fi
  mkdir -p "$CACHE/locks" "$CACHE/cuda"
  exec 8>"$CACHE/locks/$(basename "$CUDA_WHEELS_DIR").lock"   # one download at a time
  flock 8
  if [ -f "$CUDA_WHEELS_DIR/.complete" ]; then echo "present (fetched by another setup): $CUDA_WHEELS_DIR"; return 0; fi
  progress "fetching NVIDIA's CUDA $CUDA_VERSION wheels from PyPI (about 0.8 GB; 1.2 GB unpacked into $CUDA_WHEELS_DIR)"
  local line whl n=0 total
  total=$(grep -c . <<<"$WHEELS_CUDA")
  rm -rf "$CUDA_WHEELS_DIR"
  mkdir -p "$CUDA_WHEELS_DIR/wheels"
  while read -r line; do
    [ -n "$line" ] || continue
    n=$((n + 1))
    progress "  $n/$total ${line%% *}"
    whl=$(fetch_wheel "$line" "$CUDA_WHEELS_DIR/wheels")
    "$VENV/bin/python" -m zipfile -e "$whl" "$CUDA_WHEELS_DIR/tree"
    echo "$(sha256 "$whl")  $(basename "$whl")" >>"$CUDA_WHEELS_DIR/SHA256SUMS"
    rm -f "$whl"
  done <<<"$WHEELS_CUDA"
  rmdir "$CUDA_WHEELS_DIR/wheels"
  bash "$ROOT/scripts/caffe/cuda_root.sh" "$CUDA_ROOT" "$CUDA_WHEELS_DIR/tree"
  [ "$(nvcc_release "$CUDA_ROOT/bin/nvcc")" = "$CUDA_VERSION" ] ||
    { echo "$CUDA_ROOT/bin/nvcc is not CUDA $CUDA_VERSION"; return 1; }
  touch "$CUDA_WHEELS_DIR/.complete"
}

# A toolkit folder (CUDA_HOME): checked here; its toolkit folder for CMake is assembled after
# NCCL (step_nccl), which it may lack.
step_cuda_home() {
  [ -x "$CUDA_HOST_COMPILER" ] ||
    { echo "host compiler $CUDA_HOST_COMPILER not found (CUDA $CUDA_VERSION; set RMNET_CUDA_HOST_COMPILER)"; return 1; }
  local f
  for f in include/cuda_runtime.h include/cublas_v2.h include/curand.h; do
    [ -f "$CUDA_HOME_DIR/$f" ] || { echo "$CUDA_HOME_DIR has no $f: CUDA $CUDA_VERSION there lacks the runtime, cuBLAS or cuRAND"; return 1; }
  done
  echo "toolkit $CUDA_HOME_DIR: $("$CUDA_HOME_DIR/bin/nvcc" --version | tail -n 1) ($CUDA_WHY)"
}

step_cuda_toolkit() {
  echo "toolkit: $CUDA_ROUTE, CUDA $CUDA_VERSION ($CUDA_WHY)"
  case $CUDA_ROUTE in
    wheels) step_cuda_wheels ;;
    debian) step_cuda_debian ;;
    home) step_cuda_home ;;
  esac
  [ -x "$CUDA_HOST_COMPILER" ] ||
    { echo "host compiler $CUDA_HOST_COMPILER not found (set RMNET_CUDA_HOST_COMPILER)"; return 1; }
}

# NCCL: in the wheels toolkit already; NVIDIA's wheel for the debian route and for a toolkit
# folder without NCCL, checked against its pin.
step_nccl() {
  if [ -n "$NCCL_SPEC" ]; then
    if [ -f "$NCCL_DIR/.verified" ] && [ -f "$NCCL_DIR/nvidia/nccl/lib/libnccl.so.2" ]; then
      echo "verified: $NCCL_DIR"
    else
      progress "fetching NCCL (${NCCL_SPEC%% *} wheel)"
      NCCL_TMP=$(mktemp -d "$CACHE/downloads/.nccl.XXXXXX")
      trap 'rm -rf "$NCCL_TMP"' EXIT   # this step runs in its own subshell
      local whl
      whl=$(fetch_wheel "$NCCL_SPEC" "$NCCL_TMP/wheel")
      "$VENV/bin/python" -m zipfile -e "$whl" "$NCCL_TMP/files"
      [ -f "$NCCL_TMP/files/nvidia/nccl/lib/libnccl.so.2" ] || { echo "$(basename "$whl") has no nvidia/nccl/lib/libnccl.so.2"; return 1; }
      echo "$(sha256 "$whl")  $(basename "$whl")" >"$NCCL_TMP/files/.verified"
      rm -rf "$NCCL_DIR"
      mv "$NCCL_TMP/files" "$NCCL_DIR"
      echo "verified $(basename "$whl") into $NCCL_DIR"
    fi
  else
    echo "NCCL comes with the toolkit ($CUDA_ROUTE)"
  fi
  if [ "$CUDA_ROUTE" = home ]; then
    bash "$ROOT/scripts/caffe/cuda_root.sh" "$CUDA_ROOT" "$CUDA_HOME_DIR" ${NCCL_DIR:+"$NCCL_DIR"}
  fi
}

# ptx_isa: the PTX ISA version this toolkit's nvcc writes, from a one-line kernel.
ptx_isa() {
  local tmp
  tmp=$(mktemp -d)
  echo '__global__ void k() {}' >"$tmp/k.cu"
  PATH=$PATH_FOR_CUDA "$CUDA_ROOT/bin/nvcc" -ccbin "$CUDA_HOST_COMPILER" -ptx \
    "-arch=compute_${CUDA_ARCH_PTX%% *}" "$tmp/k.cu" -o "$tmp/k.ptx" >/dev/null 2>&1 || true
  grep -m 1 -o '^\.version [0-9.]*' "$tmp/k.ptx" 2>/dev/null | cut -d' ' -f2 || true
  rm -rf "$tmp"
}

# verify_fatbin LIB: LIB's device code holds a cubin for every CUDA_ARCH_BIN and PTX for every
# CUDA_ARCH_PTX, readable by this toolkit's cuobjdump (a mixed toolchain's is not) and compiled
# by this toolkit (its PTX has the ISA version this nvcc writes). Prints the summary.
verify_fatbin() {
  local lib=$1 elf ptx a missing="" release want cuobjdump=$CUDA_ROOT/bin/cuobjdump
  [ -x "$cuobjdump" ] || { echo "no $cuobjdump: the $CUDA_ROUTE toolkit is not set up (make setup GPU=1)"; return 1; }
  if ! elf=$(PATH=$PATH_FOR_CUDA "$cuobjdump" --list-elf "$lib" 2>&1); then
    echo "cuobjdump cannot read the device code of $lib: $(head -n 1 <<<"$elf" | sed 's/^cuobjdump [a-z]* *: //') (a CPU-only build, or CUDA toolchains mixed)"
    return 1
  fi
  ptx=$(PATH=$PATH_FOR_CUDA "$cuobjdump" --list-ptx "$lib") ||
    { echo "cuobjdump --list-ptx failed on $lib"; return 1; }
  for a in $CUDA_ARCH_BIN; do grep -q "\.sm_$a\.cubin" <<<"$elf" || missing+=" sm_$a cubin"; done
  for a in $CUDA_ARCH_PTX; do grep -q "\.sm_$a\.ptx" <<<"$ptx" || missing+=" compute_$a PTX"; done
  [ -z "$missing" ] || { echo "$lib lacks:$missing"; return 1; }
  # The PTX ISA version names the compiler's release (CUDA 11.8 writes ISA 7.8, 13.0 ISA 9.0).
  release=$(PATH=$PATH_FOR_CUDA "$cuobjdump" --dump-ptx "$lib" | grep -m 1 -o '^\.version [0-9.]*' | cut -d' ' -f2 || true)
  want=$(ptx_isa)
  [ -n "$want" ] || { echo "$CUDA_ROOT/bin/nvcc could not compile a one-line kernel to PTX (host compiler $CUDA_HOST_COMPILER)"; return 1; }
  [ "$release" = "$want" ] ||
    { echo "$lib: PTX ISA '${release:-unknown}', expected $want (CUDA $CUDA_VERSION)"; return 1; }
  release="PTX ISA $release (CUDA $CUDA_VERSION)"
  local a_count p_count
  a_count=$(grep -c '\.cubin' <<<"$elf"); p_count=$(grep -c '\.ptx' <<<"$ptx")
  echo "fat binary: $a_count cubins ($(grep -o 'sm_[0-9]*' <<<"$elf" | sort -u | tr '\n' ' '| sed 's/ $//')), $p_count PTX ($(grep -o 'sm_[0-9]*' <<<"$ptx" | sort -u | tr '\n' ' ' | sed 's/ $//')); $release"
}

# ---------------------------------------------------------------------------------------------
# 5. wire caffe into the venv
step_wire() {
  local prefix site pydir
  prefix=$(caffe_prefix)
  site="$VENV/lib/python$PYVER/site-packages"
  pydir="$prefix/lib/python3/dist-packages"
  [ -f "$pydir/caffe/_caffe.so" ] || { echo "pycaffe missing in $pydir"; return 1; }
  echo "$pydir" >"$site/rmnet-caffe.pth"
  # The caffe tool embeds Debian's Python, which does not know the venv: hand it the venv's
  # site-packages, pycaffe and the repository (for the project's Python layers).
  cat >"$VENV/bin/caffe.tmp" <<EOF
#!/bin/sh
# Written by scripts/setup.sh: runs the cached Caffe build with this venv's Python packages.
PYTHONPATH="$ROOT:$site:$pydir\${PYTHONPATH:+:\$PYTHONPATH}" exec "$prefix/bin/caffe" "\$@"
EOF
  chmod +x "$VENV/bin/caffe.tmp"
  mv "$VENV/bin/caffe.tmp" "$VENV/bin/caffe"
  echo "$prefix" >"$VENV/.rmnet-caffe-prefix"
  "$VENV/bin/python" -c 'import caffe, sys; print("pycaffe", caffe.__file__)'
  "$VENV/bin/caffe" --version
}

# ---------------------------------------------------------------------------------------------
if [ "$GPU" = 1 ] || [ "${1:-}" = "--verify-fatbin" ]; then
  GPU=1
  resolve_cuda
  CAFFE_GTESTS+=,platform      # the device query PlatformTest prints (patched for CUDA 13)
fi
if [ "${1:-}" = "--verify-source" ]; then
  verify_source "${2:?usage: setup.sh --verify-source DIR}"
  exit
fi
if [ "${1:-}" = "--print-cmake-flags" ]; then build_flags; exit; fi
if [ "${1:-}" = "--print-cuda-apt-sources" ]; then cuda_apt_sources; exit; fi
if [ "${1:-}" = "--print-cuda" ]; then
  [ "$GPU" = 1 ] || { echo "setup: --print-cuda goes with --gpu" >&2; exit 2; }
  print_cuda; exit
fi
if [ "${1:-}" = "--verify-fatbin" ]; then verify_fatbin "${2:?usage: setup.sh --verify-fatbin LIB}"; exit; fi
if [ "${1:-}" = "--stock-caffe" ]; then
  STOCK=1
  [ "$GPU" = 0 ] || { echo "setup: --stock-caffe builds the CPU Caffe only" >&2; exit 2; }
  mkdir -p "$CACHE/downloads" "$CACHE/caffe" "$LOGDIR"
  [ -x "$VENV/bin/python" ] || { echo "setup: --stock-caffe needs $VENV: run make setup first" >&2; exit 1; }
  say "caffe source";  run_step "caffe source" step_caffe_source
  say "stock caffe build (patches: ${STOCK_PATCHES[*]})"
  run_step "stock caffe build" step_caffe_build
  caffe_prefix
  exit
fi
[ $# -eq 0 ] || { echo "usage: scripts/setup.sh [--gpu] [--stock-caffe | --verify-source DIR | --print-cmake-flags | --print-cuda | --print-cuda-apt-sources | --verify-fatbin LIB]" >&2; exit 2; }

if [ "$GPU" = 1 ] && [ -z "${RMNET_SETUP_LOGS:-}" ]; then LOGDIR=$ROOT/.setup-logs/gpu; fi
mkdir -p "$CACHE/downloads" "$CACHE/caffe" "$LOGDIR"
say "system packages";  run_step "system packages" step_system_packages
say "python venv";      run_step "python venv" step_python_venv
if [ "$GPU" = 1 ]; then
  say "cuda toolkit: $CUDA_ROUTE, CUDA $CUDA_VERSION ($CUDA_WHY)"
  run_step "cuda toolkit" step_cuda_toolkit
  say "nccl";           run_step "nccl" step_nccl
fi
say "caffe source";     run_step "caffe source" step_caffe_source
say "caffe build";      run_step "caffe build" step_caffe_build
say "wire caffe into $VENV"; run_step "wire" step_wire
say "setup done: $VENV/bin/python, $VENV/bin/caffe (build cache: $(caffe_prefix))"
