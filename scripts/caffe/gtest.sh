#!/usr/bin/env bash
# Runs Caffe's own gtests of the layers the project's patches change (convolution with its 1x1
# and depthwise paths, BatchNorm, Scale, Bias, the neuron layers with ELU, ReLU and Dropout,
# scheduled Dropout, Pooling, Eltwise, Split) against the patched library that `make setup` built and wired into the venv.
# scripts/setup.sh builds the test binary with the library and keeps it in the build cache
# (<prefix>/test/test.testbin), so this only runs it (CPU tests only).
#
#   scripts/caffe/gtest.sh [gtest options, e.g. --gtest_filter=*Depthwise*]
#
# Environment: RMNET_VENV (default <repo>/.venv). Exit status: the test binary's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${RMNET_VENV:-$ROOT/.venv}
marker="$VENV/.rmnet-caffe-prefix"
[ -f "$marker" ] || { echo "gtest.sh: $marker not found: run make setup first" >&2; exit 2; }
prefix=$(cat "$marker")
bin="$prefix/test/test.testbin"
[ -x "$bin" ] || { echo "gtest.sh: $bin not found: the Caffe build in $prefix has no gtests (run make setup)" >&2; exit 2; }

# CPU tests only: the *GPU* cases need a GPU, and so, in a CUDA build, do PlatformTest (it
# prints the device's properties) and the GPUDevice<float|double> instances of the typed tests
# (Caffe's TestDtypesAndDevices lists them third and fourth: */2, */3); without a device Caffe
# aborts in them.
no_gpu="*GPU*"
if ldd "$bin" 2>/dev/null | grep -q 'libcudart'; then no_gpu+=":PlatformTest.*:*/2.*:*/3.*"; fi
filter="-$no_gpu"
for a in "$@"; do
  case $a in --gtest_filter=*) filter="${a#--gtest_filter=}:-$no_gpu" ;; esac
done
args=()
for a in "$@"; do
  case $a in --gtest_filter=*) ;; *) args+=("$a") ;; esac
done
# Caffe's tests look for data files relative to the working directory; these need none.
cd "$(mktemp -d)"
trap 'rm -rf "$PWD"' EXIT
LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  GLOG_minloglevel=${GLOG_minloglevel:-2} "$bin" --gtest_filter="$filter" "${args[@]}"
