#!/usr/bin/env bash
# offline_setup.sh BUNDLE: the CUDA build of this project's Caffe on a machine with no network
# (`make setup GPU=1 OFFLINE=BUNDLE`), from the archive scripts/gpu_bundle.sh writes
# (`make gpu-bundle`) and what such a machine has: its own nvcc (CUDA_HOME, PATH or
# /usr/local/cuda*), cuBLAS, cuRAND, cudart and NCCL from that toolkit or from NVIDIA's wheels in
# its Python's site-packages, its own Python (with numpy), CMake and g++.
#
# Steps (each idempotent; a re-run reuses what is done):
#   1. bundle       unpack into $RMNET_CACHE/offline/bundle-<archive SHA-256> and check every
#                   file against the bundle's SHA256SUMS
#   2. python       RMNET_PYTHON (default: python3 on PATH); numpy, Python.h and libpython from it, or
#                   the bundle's copies for its version when it has none
#   3. cuda         one toolkit folder (scripts/caffe/cuda_root.sh) from the toolkit and the
#                   Python's NVIDIA wheels; NCCL must be there
#   4. build        Boost.Python against this Python, then Caffe (CUDA for the GPU's own compute
#                   capability, NCCL, pycaffe with Python layers) and Caffe's gtests of the
#                   layers the project patches (<prefix>/test/test.testbin, as scripts/setup.sh
#                   builds them; run by scripts/caffe/gtest.sh) on all cores, installed into
#                   $RMNET_CACHE/caffe/offline-cuda<version>-<key>
#   5. wire         .venv-gpu: a venv of this Python that sees its packages, pycaffe, the project
#                   (and six if it lacks it); .venv-gpu/bin/caffe
# Nothing is installed outside the checkout and $RMNET_CACHE.
#
# Environment (all optional):
#   RMNET_PYTHON         the Python to build pycaffe for (default: python3 on PATH)
#   RMNET_CACHE          cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/rmnet)
#   RMNET_VENV           the venv to make (default: <repo>/.venv-gpu)
#   RMNET_JOBS           parallel build jobs (default: nproc)
#   RMNET_CUDA_ARCH_BIN  compute capabilities, e.g. "90" (default: nvidia-smi's, else 90)
#   RMNET_CUDA_ARCH_PTX  PTX kept (default: the highest of RMNET_CUDA_ARCH_BIN)
#   CUDA_HOME            a CUDA toolkit root to use first
#
# `offline_setup.sh --verify BUNDLE` only unpacks and checks the bundle; `--print-arch` prints
# the compute capabilities a build would use. On failure: one line saying what is wrong, exit 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${RMNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rmnet}
VENV=${RMNET_VENV:-$ROOT/.venv-gpu}
JOBS=${RMNET_JOBS:-$(nproc)}
DEFAULT_ARCH=90
T0=$SECONDS

say() { printf '==> %s\n' "$*"; }
progress() { printf '    %s\n' "$*"; }
die() { echo "offline setup: $*" >&2; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# choose_arch: RMNET_CUDA_ARCH_BIN if set; else the compute capabilities nvidia-smi reports
# (each GPU's, "9.0" -> "90"); else DEFAULT_ARCH.
choose_arch() {
  local arch=${RMNET_CUDA_ARCH_BIN:-} caps
  if [ -z "$arch" ] && command -v nvidia-smi >/dev/null 2>&1; then
    caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true)
    arch=$(tr -d ' .' <<<"$caps" | grep -E '^[0-9]{2,3}$' | sort -un | tr '\n' ' ' | sed 's/ $//' || true)
  fi
  arch=${arch:-$DEFAULT_ARCH}
  [[ $arch =~ ^[0-9]{2,3}[a-z]?( [0-9]{2,3}[a-z]?)*$ ]] ||
    die "compute capability '$arch' is not a list like '90' or '80 90' (RMNET_CUDA_ARCH_BIN or nvidia-smi)"
  echo "$arch"
}

# --- 1. bundle -----------------------------------------------------------------------------
# unpack_bundle FILE: prints the checked bundle folder.
unpack_bundle() {
  local file=$1 key dir tmp bad
  [ -e "$file" ] || die "bundle $file: no such file (make it with 'make gpu-bundle' on a connected machine)"
  [ -f "$file" ] && [ -r "$file" ] || die "bundle $file: not a readable file"
  key=$(sha256 "$file" | cut -c1-16)
  dir=$CACHE/offline/bundle-$key
  if [ -f "$dir/.complete" ]; then echo "$dir/rmnet-gpu-bundle"; return; fi
  mkdir -p "$CACHE/offline"
  tmp=$(mktemp -d "$CACHE/offline/.unpack.XXXXXX")
  if ! tar -xJf "$file" -C "$tmp" 2>"$tmp.err"; then
    local why; why=$(grep -v '^$' "$tmp.err" | tail -n 1); rm -rf "$tmp" "$tmp.err"
    die "bundle $file: not a complete xz tar archive ($why)"
  fi
  rm -f "$tmp.err"
  [ -f "$tmp/rmnet-gpu-bundle/SHA256SUMS" ] && [ -f "$tmp/rmnet-gpu-bundle/MANIFEST.json" ] ||
    { rm -rf "$tmp"; die "bundle $file: no rmnet-gpu-bundle/SHA256SUMS or MANIFEST.json in it (not made by scripts/gpu_bundle.sh)"; }
  bad=$(cd "$tmp/rmnet-gpu-bundle" && sha256sum -c --quiet SHA256SUMS 2>&1 | head -n 3 | tr '\n' ';' || true)
  if [ -n "$bad" ]; then rm -rf "$tmp"; die "bundle $file: files do not match its SHA256SUMS: $bad"; fi
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "$dir/rmnet-gpu-bundle"
}

if [ "${1:-}" = --print-arch ]; then choose_arch; exit; fi
if [ "${1:-}" = --verify ]; then
  b=$(unpack_bundle "${2:?usage: offline_setup.sh --verify BUNDLE}")
  echo "bundle OK: $b ($(wc -l <"$b/SHA256SUMS") files checked)"
  exit
fi
[ $# -eq 1 ] || die "usage: scripts/offline_setup.sh BUNDLE | --verify BUNDLE | --print-arch"
BUNDLE_FILE=$1

say "bundle $BUNDLE_FILE"
BUNDLE=$(unpack_bundle "$BUNDLE_FILE")
DEPS=$BUNDLE/deps
progress "unpacked and checked: $BUNDLE"

# --- 2. python -----------------------------------------------------------------------------
say "python"
PY=${RMNET_PYTHON:-$(command -v python3 || true)}
[ -n "$PY" ] && [ -x "$PY" ] || die "no Python: set RMNET_PYTHON=/path/to/python3 or put python3 on PATH"
pyinfo=$("$PY" - <<'EOF' 2>&1
import site, sys, sysconfig
print("%d.%d" % sys.version_info[:2])
print(sysconfig.get_paths()["include"])
print(sysconfig.get_config_var("LIBDIR") or "")
print(sysconfig.get_config_var("INSTSONAME") or "")
paths = sysconfig.get_paths()
dirs = [paths["purelib"], paths["platlib"]] + list(getattr(site, "getsitepackages", lambda: [])())
print(":".join(dict.fromkeys(d for d in dirs if d)))
try:
    import numpy
    print(numpy.get_include())
except ImportError as e:
    print("NO-NUMPY " + str(e))
try:
    import six  # noqa: F401
    print("six")
except ImportError:
    print("no-six")
EOF
) || die "$PY does not run: $pyinfo"
{ read -r PYVER; read -r PYINC; read -r PYLIBDIR; read -r PYSONAME; read -r PYSITES; read -r NUMPY_INC; read -r HAS_SIX; } <<<"$pyinfo"
[[ $NUMPY_INC != NO-NUMPY* ]] || die "$PY (Python $PYVER) has no numpy (${NUMPY_INC#NO-NUMPY }): pycaffe needs it"
FALLBACK=$BUNDLE/python/$PYVER
PYINC_EXTRA=""
if [ -f "$PYINC/Python.h" ]; then
  progress "Python $PYVER ($PY), headers $PYINC"
elif [ -f "$FALLBACK/include/python$PYVER/Python.h" ]; then
  PYINC=$FALLBACK/include/python$PYVER
  PYINC_EXTRA=$FALLBACK/include   # Debian's pyconfig.h includes <x86_64-linux-gnu/pythonX.Y/pyconfig.h>
  progress "Python $PYVER ($PY) has no Python.h: using the bundle's ($PYINC)"
else
  die "$PY (Python $PYVER) has no Python.h in $PYINC and the bundle carries headers only for $(ls "$BUNDLE/python" | grep -v site | tr '\n' ' ')(install python$PYVER-dev, or use one of those)"
fi
# Python 3.13 removed PyEval_CallFunction and PyEval_CallMethod, which Boost 1.74's headers
# (boost/python/call.hpp, call_method.hpp, override.hpp) call with a "(O...)" tuple format, for
# which PyObject_CallFunction/PyObject_CallMethod do the same (later Boost releases switched so).
PY_COMPAT=()
if [ "${PYVER#3.}" -ge 13 ] 2>/dev/null; then
  PY_COMPAT=(-DPyEval_CallFunction=PyObject_CallFunction -DPyEval_CallMethod=PyObject_CallMethod)
fi
PYLIB=$PYLIBDIR/$PYSONAME
PYLIB_DIR_RPATH=""
if [ -n "$PYSONAME" ] && [ -f "$PYLIB" ]; then
  progress "libpython: $PYLIB"
elif ls "$FALLBACK"/lib/libpython"$PYVER".so.1* >/dev/null 2>&1; then
  PYLIB=$(ls "$FALLBACK"/lib/libpython"$PYVER".so.1* | head -n 1)
  PYLIB_DIR_RPATH=$FALLBACK/lib
  progress "no shared libpython$PYVER on this machine: using the bundle's ($PYLIB)"
else
  die "$PY (Python $PYVER) has no shared library ${PYSONAME:-libpython$PYVER.so} in ${PYLIBDIR:-?} and the bundle carries none for $PYVER (the caffe tool embeds Python for Python layers)"
fi

# --- 3. cuda -------------------------------------------------------------------------------
say "cuda"
TOOLKITS=()
add_toolkit() { local d; d=$(readlink -f "$1"); [ -x "$d/bin/nvcc" ] && TOOLKITS+=("$d") || true; }
[ -n "${CUDA_HOME:-}" ] && add_toolkit "$CUDA_HOME"
[ -n "${CUDA_PATH:-}" ] && add_toolkit "$CUDA_PATH"
if command -v nvcc >/dev/null 2>&1; then add_toolkit "$(dirname "$(readlink -f "$(command -v nvcc)")")/.."; fi
for d in /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV); do add_toolkit "$d"; done
SOURCES=()
[ ${#TOOLKITS[@]} -eq 0 ] || SOURCES+=("${TOOLKITS[0]}")
IFS=: read -r -a sites <<<"$PYSITES"
for d in "${sites[@]}"; do [ -d "$d/nvidia" ] && SOURCES+=("$d"); done
[ ${#SOURCES[@]} -gt 0 ] ||
  die "no CUDA toolkit (nvcc via CUDA_HOME, PATH or /usr/local/cuda*) and no NVIDIA wheels in $PY's site-packages ($PYSITES)"
CUDA_ROOT=$CACHE/offline/cuda-root-$(printf '%s\n' "${SOURCES[@]}" | sha256sum | cut -c1-12)
out=$("$ROOT/scripts/caffe/cuda_root.sh" "$CUDA_ROOT" "${SOURCES[@]}" 2>&1) ||
  die "$(tail -n 1 <<<"$out") (sources: ${SOURCES[*]})"
NVCC_VERSION=$(sed -n 's/.*release \([0-9.]*\).*/\1/p' <<<"$out")
[ -f "$CUDA_ROOT/include/nccl.h" ] && [ -e "$CUDA_ROOT/lib/libnccl.so.2" ] ||
  die "no NCCL (nccl.h and libnccl.so.2) in ${SOURCES[*]}: pip install nvidia-nccl-cu${NVCC_VERSION%%.*} into $PY's environment"
progress "nvcc $NVCC_VERSION, toolkit folder $CUDA_ROOT from: ${SOURCES[*]}"
ARCH_BIN=$(choose_arch)
ARCH_PTX=${RMNET_CUDA_ARCH_PTX:-$(tr ' ' '\n' <<<"$ARCH_BIN" | sort -n | tail -n 1)}
HOST_CXX=$(command -v "${CXX:-g++}" || true)
[ -n "$HOST_CXX" ] || die "no C++ compiler (g++ or CXX) on PATH"
command -v cmake >/dev/null || die "no cmake on PATH"
progress "compute capability $ARCH_BIN (PTX $ARCH_PTX), host compiler $HOST_CXX ($("$HOST_CXX" -dumpfullversion))"

# --- 4. build ------------------------------------------------------------------------------
mapfile -t CPU_FLAGS < <("$ROOT/scripts/setup.sh" --print-cmake-flags)
[ ${#CPU_FLAGS[@]} -gt 0 ] || die "scripts/setup.sh --print-cmake-flags printed nothing"
# The gtests setup.sh builds (its -DBUILD_only_tests), and PlatformTest, as its CUDA build adds.
GTESTS=$(printf '%s\n' "${CPU_FLAGS[@]}" | sed -n 's/^-DBUILD_only_tests=//p' | tail -n 1)
[ -n "$GTESTS" ] || die "scripts/setup.sh --print-cmake-flags names no gtests (-DBUILD_only_tests)"
GTESTS+=,platform
KEY=$( {
  echo "gtests $GTESTS"
  echo "bundle $(basename "$(dirname "$BUNDLE")")"; echo "python $PY $PYVER $PYINC $PYLIB $NUMPY_INC"
  echo "cuda $NVCC_VERSION $CUDA_ROOT $ARCH_BIN $ARCH_PTX"; echo "cxx $HOST_CXX $("$HOST_CXX" -dumpfullversion)"
  echo "cmake $(cmake --version | head -n 1)"; printf '%s\n' "${CPU_FLAGS[@]}"
} | sha256sum | cut -c1-16)
PREFIX=$CACHE/caffe/offline-cuda$NVCC_VERSION-$KEY
BPY=boost_python${PYVER/./}
say "build into $PREFIX"
if [ -f "$PREFIX/.complete" ]; then
  progress "cached"
else
  mkdir -p "$CACHE/locks"
  exec 8>"$CACHE/locks/$(basename "$PREFIX").lock"
  flock -n 8 || { progress "another setup is building $PREFIX: waiting"; flock 8; }
fi
if [ ! -f "$PREFIX/.complete" ]; then
  BUILD=$PREFIX.build; STAGE=$PREFIX.stage
  rm -rf "$BUILD" "$STAGE"; mkdir -p "$BUILD/libs" "$STAGE/lib"
  LOG=$BUILD/build.log
  progress "log: $LOG"
  # Boost.Python for this Python (the sources Debian builds libboost_python from), kept in its
  # own cache folder: each object is compiled once, so a failed or changed Caffe build reuses it.
  BPY_DIR=$CACHE/offline/$BPY-$(echo "$BUNDLE $PYINC $HOST_CXX $("$HOST_CXX" -dumpfullversion) ${PY_COMPAT[*]}" | sha256sum | cut -c1-12)
  mkdir -p "$BPY_DIR/obj"
  if [ ! -f "$BPY_DIR/lib$BPY.so.1.74.0" ]; then
    progress "boost.python for Python $PYVER ($(find "$BUNDLE/boost-python-src/src" -name '*.cpp' | wc -l) files)"
    incs=(-I"$DEPS/include" -I"$PYINC"); [ -z "$PYINC_EXTRA" ] || incs+=(-I"$PYINC_EXTRA")
    incs+=("${PY_COMPAT[@]}")
    (cd "$BUNDLE/boost-python-src/src" && find . -name '*.cpp' | LC_ALL=C sort) |
      BUNDLE=$BUNDLE OUTD=$BPY_DIR/obj CXXBIN=$HOST_CXX xargs -P "$JOBS" -I{} sh -c \
        'o=$OUTD/$(echo "{}" | tr / _ | sed "s/^\._//; s/\.cpp$/.o/"); [ -f "$o" ] && exit 0; "$CXXBIN" -c -O2 -fPIC -std=c++14 -DNDEBUG -DBOOST_PYTHON_SOURCE -DBOOST_PYTHON_DYN_LINK -DBOOST_ALL_NO_LIB "$@" -o "$o.tmp" "$BUNDLE/boost-python-src/src/{}" && mv "$o.tmp" "$o"' \
        _ "${incs[@]}" >>"$LOG" 2>&1 ||
      die "building Boost.Python for Python $PYVER failed: read $LOG (last line: $(grep -v '^$' "$LOG" | tail -n 1 | cut -c1-160))"
    "$HOST_CXX" -shared -Wl,-soname,lib$BPY.so.1.74.0 -o "$BPY_DIR/lib$BPY.so.tmp" "$BPY_DIR"/obj/*.o >>"$LOG" 2>&1 ||
      die "linking lib$BPY failed: read $LOG"
    mv "$BPY_DIR/lib$BPY.so.tmp" "$BPY_DIR/lib$BPY.so.1.74.0"
  fi
  cp "$BPY_DIR/lib$BPY.so.1.74.0" "$STAGE/lib/"
  ln -sf "$STAGE/lib/lib$BPY.so.1.74.0" "$BUILD/libs/lib$BPY.so"
  ln -sf "$STAGE/lib/lib$BPY.so.1.74.0" "$BUILD/libs/libboost_python3.so"
  for f in "$DEPS"/lib/libboost_*; do ln -sf "$f" "$BUILD/libs/"; done
  # Caffe.
  rpath="$PREFIX/lib;$DEPS/lib;$CUDA_ROOT/lib${PYLIB_DIR_RPATH:+;$PYLIB_DIR_RPATH}"
  link="-Wl,--as-needed -Wl,--disable-new-dtags -Wl,-rpath-link,$DEPS/lib:$CUDA_ROOT/lib:$STAGE/lib${PYLIB_DIR_RPATH:+:$PYLIB_DIR_RPATH}"
  gen=(-G "Unix Makefiles"); command -v ninja >/dev/null && gen=(-G Ninja)
  flags=("${CPU_FLAGS[@]}"
    -DCPU_ONLY=OFF -DUSE_CUDNN=OFF -DUSE_NCCL=ON
    -DCUDA_ARCH_NAME=Manual "-DCUDA_ARCH_BIN=$ARCH_BIN" "-DCUDA_ARCH_PTX=$ARCH_PTX"
    "-DCUDA_TOOLKIT_ROOT_DIR=$CUDA_ROOT" "-DCUDA_NVCC_EXECUTABLE=$CUDA_ROOT/bin/nvcc"
    "-DCUDA_HOST_COMPILER=$HOST_CXX"
    "-DNCCL_INCLUDE_DIR=$CUDA_ROOT/include" "-DNCCL_LIBRARIES=$CUDA_ROOT/lib/libnccl.so.2"
    -DCMAKE_POLICY_VERSION_MINIMUM=3.5 "-DCMAKE_PREFIX_PATH=$DEPS"
    -DBoost_NO_BOOST_CMAKE=ON -DBoost_NO_SYSTEM_PATHS=ON
    "-DBOOST_INCLUDEDIR=$DEPS/include" "-DBOOST_LIBRARYDIR=$BUILD/libs"
    "-DBoost_PYTHON3_LIBRARY_RELEASE=$BUILD/libs/libboost_python3.so"
    "-DBoost_PYTHON3_LIBRARY_DEBUG=$BUILD/libs/libboost_python3.so"
    "-DGLOG_INCLUDE_DIR=$DEPS/include" "-DGLOG_LIBRARY=$DEPS/lib/libglog.so"
    "-DGFLAGS_INCLUDE_DIR=$DEPS/include" "-DGFLAGS_LIBRARY=$DEPS/lib/libgflags.so"
    "-DLMDB_INCLUDE_DIR=$DEPS/include" "-DLMDB_LIBRARIES=$DEPS/lib/liblmdb.so"
    "-DOpenBLAS_INCLUDE_DIR=$DEPS/include" "-DOpenBLAS_LIB=$DEPS/lib/libopenblas.so.0"
    "-DProtobuf_INCLUDE_DIR=$DEPS/include" "-DProtobuf_LIBRARY=$DEPS/lib/libprotobuf.so"
    "-DProtobuf_PROTOC_EXECUTABLE=$DEPS/bin/protoc" "-DPROTOBUF_PROTOC_EXECUTABLE=$DEPS/bin/protoc"
    "-DHDF5_ROOT=$DEPS" -DHDF5_NO_FIND_PACKAGE_CONFIG_FILE=ON
    "-DPYTHON_EXECUTABLE=$PY" "-DPYTHON_INCLUDE_DIR=$PYINC" "-DPYTHON_LIBRARY=$PYLIB"
    "-DCMAKE_CXX_FLAGS=${PYINC_EXTRA:+-I$PYINC_EXTRA }${PY_COMPAT[*]}"
    "-DCMAKE_EXE_LINKER_FLAGS=$link" "-DCMAKE_SHARED_LINKER_FLAGS=$link" "-DCMAKE_MODULE_LINKER_FLAGS=$link"
    "-DCMAKE_INSTALL_PREFIX=$PREFIX" "-DCMAKE_INSTALL_RPATH=$rpath" "-DBUILD_only_tests=$GTESTS")
  progress "configure (cmake ${gen[*]})"
  printf '%s\n' "${flags[@]}" >"$BUILD/cmake-flags.txt"
  cmake -S "$BUNDLE/caffe-src" -B "$BUILD/obj" "${gen[@]}" "${flags[@]}" >>"$LOG" 2>&1 ||
    die "cmake configure failed: read $LOG (last line: $(grep -v '^$' "$LOG" | tail -n 1 | cut -c1-160))"
  grep -q 'HAVE_PYTHON\|Python' "$BUILD/obj/CMakeCache.txt" || true
  progress "compile on $JOBS jobs (sm $ARCH_BIN)"
  set +e
  # Progress in steps of 10% from make's "[ 42%]" or ninja's "[42/263]" (read line by line:
  # mawk, Debian's and Ubuntu's awk, holds back piped input until its buffer fills).
  cmake --build "$BUILD/obj" -j "$JOBS" 2>&1 | tee -a "$LOG" | {
    last=0
    while IFS= read -r line; do
      p=-1
      if [[ $line =~ ^\[\ *([0-9]+)%\] ]]; then p=${BASH_REMATCH[1]}
      elif [[ $line =~ ^\[([0-9]+)/([0-9]+)\] ]]; then p=$((100 * BASH_REMATCH[1] / BASH_REMATCH[2])); fi
      if [ "$p" -ge $((last + 10)) ]; then last=$((p - p % 10)); progress "caffe build $last%"; fi
    done
  }
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || die "caffe build failed: read $LOG (last error: $(grep -m1 -i 'error' "$LOG" | cut -c1-160))"
  t_gtests=$SECONDS
  progress "caffe's gtests of the patched layers (test.testbin: ${GTESTS//,/ })"
  # Caffe itself is built: a gtest failure is reported (tests/test_caffe_gtests.py then fails,
  # naming the missing binary) but does not cost the GPU its Caffe.
  GTEST_OK=1
  if cmake --build "$BUILD/obj" -j "$JOBS" --target test.testbin >>"$LOG" 2>&1; then
    progress "gtests built in $((SECONDS - t_gtests)) s"
  else
    GTEST_OK=0
    progress "WARNING: building Caffe's gtests failed after $((SECONDS - t_gtests)) s (Caffe is built; read $LOG, last error: $(grep -i 'error' "$LOG" | tail -n 1 | cut -c1-160))"
  fi
  DESTDIR=$STAGE/root cmake --install "$BUILD/obj" >>"$LOG" 2>&1 || die "caffe install failed: read $LOG"
  cp -a "$STAGE/root$PREFIX/." "$STAGE/"
  rm -rf "$STAGE/root"
  if [ "$GTEST_OK" = 1 ]; then
    mkdir -p "$STAGE/test"
    cp "$BUILD/obj/test/test.testbin" "$STAGE/test/"
  fi
  libs=$(LD_LIBRARY_PATH="$STAGE/lib" ldd "$STAGE/lib/libcaffe.so" "$STAGE/bin/caffe" 2>&1)
  ! grep -q 'not found' <<<"$libs" || die "libcaffe.so or caffe cannot find: $(grep 'not found' <<<"$libs" | sort -u | tr '\n' ' ')"
  "$CUDA_ROOT/bin/cuobjdump" --list-elf "$STAGE/lib/libcaffe.so" >"$STAGE/cuobjdump.txt" 2>&1 ||
    progress "(cuobjdump could not list the device code; see $STAGE/cuobjdump.txt)"
  cp "$BUNDLE/MANIFEST.json" "$STAGE/bundle-MANIFEST.json"
  # The test binary keeps the build tree's RPATH: with that tree gone, it must find every
  # library as scripts/caffe/gtest.sh runs it (libcaffe through LD_LIBRARY_PATH).
  rm -rf "$BUILD"
  if [ "$GTEST_OK" = 1 ]; then
    libs=$(LD_LIBRARY_PATH="$STAGE/lib" ldd "$STAGE/test/test.testbin" 2>&1)
    if grep -q 'not found' <<<"$libs"; then
      progress "WARNING: test.testbin cannot find: $(grep 'not found' <<<"$libs" | sort -u | tr '\n' ' ')(removed; Caffe is built)"
      rm -rf "$STAGE/test"
    fi
  fi
  touch "$STAGE/.complete"
  rm -rf "$PREFIX"
  mv "$STAGE" "$PREFIX"
fi

# --- 5. wire -------------------------------------------------------------------------------
say "wire $VENV"
PYDIR=$PREFIX/lib/python3/dist-packages
[ -f "$PYDIR/caffe/_caffe.so" ] || die "pycaffe missing in $PYDIR"
if [ -f "$VENV/pyvenv.cfg" ] && [ "$(cat "$VENV/.rmnet-python" 2>/dev/null)" != "$PY" ]; then rm -rf "$VENV"; fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --without-pip "$VENV" || die "$PY -m venv --without-pip $VENV failed"
fi
echo "$PY" >"$VENV/.rmnet-python"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
{
  echo "# Written by scripts/offline_setup.sh: $PY's packages, pycaffe and the project."
  for d in "${sites[@]}"; do [ -d "$d" ] && echo "import site; site.addsitedir('$d')"; done
  echo "$PYDIR"
  echo "$ROOT"
  [ "$HAS_SIX" = six ] || echo "$BUNDLE/python/site"
} >"$site/rmnet-caffe.pth"
pypath="$ROOT:$PYDIR:$(IFS=:; echo "${sites[*]}")"
[ "$HAS_SIX" = six ] || pypath+=":$BUNDLE/python/site"
cat >"$VENV/bin/caffe.tmp" <<EOF
#!/bin/sh
# Written by scripts/offline_setup.sh: the offline CUDA Caffe with $PY's packages.
PYTHONPATH="$pypath\${PYTHONPATH:+:\$PYTHONPATH}" exec "$PREFIX/bin/caffe" "\$@"
EOF
chmod +x "$VENV/bin/caffe.tmp"; mv "$VENV/bin/caffe.tmp" "$VENV/bin/caffe"
echo "$PREFIX" >"$VENV/.rmnet-caffe-prefix"
"$VENV/bin/python" -c 'import caffe; print("    pycaffe", caffe.__file__, "nccl" if caffe.has_nccl() else "NO NCCL")' ||
  die "$VENV/bin/python cannot import caffe"
"$VENV/bin/caffe" --version | sed 's/^/    /' || die "$VENV/bin/caffe does not run"
t=$((SECONDS - T0))
say "offline setup done in $((t / 60)) min $((t % 60)) s: $VENV/bin/python, $VENV/bin/caffe (Caffe: $PREFIX, sm $ARCH_BIN, CUDA $NVCC_VERSION)"
