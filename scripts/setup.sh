#!/usr/bin/env bash
# The project's one set-up recipe, used by `make setup` on a host and by docker/Dockerfile.
#
# Steps (each idempotent; a re-run skips what is already done and resumes after a failure):
#   1. system packages   Debian build dependencies of Caffe, installed with apt-get if missing.
#   2. python venv       .venv from Debian's /usr/bin/python3 (pycaffe links Debian's
#                        libpython3.11), with requirements.txt and the project (pip install -e .).
#   3. caffe source      Debian's caffe source package, fetched with a private apt state
#                        directory (the system's apt configuration is not touched) and checked
#                        against the pinned .dsc SHA-256 and the .dsc's own checksums.
#   4. caffe build       Debian's patches + ours (scripts/caffe/patches), CPU only, OpenBLAS,
#                        pycaffe with Python layers, on all cores; installed into a cache outside
#                        the clone keyed by everything that changes the binaries.
#   5. wire              .venv sees caffe: a .pth file for `import caffe`, and .venv/bin/caffe.
#
# Environment (all optional):
#   RMNET_CACHE    build cache root      (default: ${XDG_CACHE_HOME:-$HOME/.cache}/rmnet)
#   RMNET_VENV     virtual environment   (default: <repo>/.venv)
#   RMNET_JOBS     parallel build jobs   (default: nproc)
#   RMNET_DEBIAN_MIRROR  Debian mirror for the source package (default: the one apt already uses)
#   RMNET_SETUP_LOGS     where step logs go (default: <repo>/.setup-logs)
#
# `scripts/setup.sh --verify-source DIR` only checks a downloaded source package in DIR.
#
# On failure it prints one line naming the step and the log file to read, and exits non-zero.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=caffe/source.env
. "$ROOT/scripts/caffe/source.env"

VENV=${RMNET_VENV:-$ROOT/.venv}
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
  libopenblas-dev liblmdb-dev libsnappy-dev
  python3 python3-dev python3-venv
  dpkg-dev xz-utils patch ca-certificates debian-archive-keyring
)

# CMake flags; part of the cache key.
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DCPU_ONLY=ON -DBLAS=Open
  -DBUILD_python=ON -DBUILD_python_layer=ON -Dpython_version=3
  -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=ON -DUSE_NCCL=OFF
  -DBUILD_docs=OFF -DBUILD_matlab=OFF
)

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
  cat "$ROOT/requirements.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
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

cache_key() {
  {
    echo "source $CAFFE_DEBIAN_VERSION $CAFFE_DSC_SHA256"
    for p in "$ROOT"/scripts/caffe/patches/*.patch; do echo "patch $(basename "$p") $(sha256 "$p")"; done
    echo "flags ${CMAKE_FLAGS[*]}"
    echo "numpy $("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
    echo "python $("$SYSTEM_PYTHON" -c 'import sys; print(sys.version)')"
    echo "gcc $(gcc -dumpfullversion)"
    for p in libprotobuf-dev libboost-python-dev libopenblas-dev libhdf5-dev libgoogle-glog-dev; do
      echo "deb $p $(dpkg_version "$p")"
    done
  } | sha256sum | cut -c1-16
}

caffe_prefix() { echo "$CACHE/caffe/$(cache_key)"; }

step_caffe_build() {
  local prefix build stage
  prefix=$(caffe_prefix)
  if [ -f "$prefix/.complete" ]; then echo "cached: $prefix"; return 0; fi
  build="$prefix.build"
  stage="$prefix.stage"
  rm -rf "$build" "$stage"
  mkdir -p "$build"
  progress "building Caffe into $prefix (about 7 minutes on 2 cores; log: $CURRENT_LOG)"
  dpkg-source -x "$SRC_DIR/$DSC_NAME" "$build/src"
  local p
  for p in "$ROOT"/scripts/caffe/patches/*.patch; do
    echo "applying $(basename "$p")"
    patch -d "$build/src" -p1 --forward --batch <"$p"
  done
  cmake -S "$build/src" -B "$build/obj" "${CMAKE_FLAGS[@]}" \
    -DPYTHON_EXECUTABLE="$VENV/bin/python" \
    -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_RPATH="$prefix/lib"
  # Show progress in steps of 10%.
  make -C "$build/obj" -j"$JOBS" 2>&1 | awk -v fd=/dev/fd/3 '
    { print; fflush() }
    match($0, /^\[ *[0-9]+%\]/) {
      pct = substr($0, RSTART + 1, RLENGTH - 3) + 0
      if (pct >= last + 10) { last = pct - pct % 10; printf "    caffe build %d%%\n", last >> fd; fflush(fd) }
    }'
  make -C "$build/obj" install DESTDIR="$stage"
  touch "$stage$prefix/.complete"
  mv "$stage$prefix" "$prefix"
  rm -rf "$build" "$stage"
  echo "installed $prefix"
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
if [ "${1:-}" = "--verify-source" ]; then
  verify_source "${2:?usage: setup.sh --verify-source DIR}"
  exit
fi
[ $# -eq 0 ] || { echo "usage: scripts/setup.sh [--verify-source DIR]" >&2; exit 2; }

mkdir -p "$CACHE/downloads" "$CACHE/caffe" "$LOGDIR"
say "system packages";  run_step "system packages" step_system_packages
say "python venv";      run_step "python venv" step_python_venv
say "caffe source";     run_step "caffe source" step_caffe_source
say "caffe build";      run_step "caffe build" step_caffe_build
say "wire caffe into $VENV"; run_step "wire" step_wire
say "setup done: $VENV/bin/python, $VENV/bin/caffe (build cache: $(caffe_prefix))"
