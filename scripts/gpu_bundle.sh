#!/usr/bin/env bash
# gpu_bundle.sh [OUT]: one archive (`make gpu-bundle`, default dist/rmnet-gpu-bundle.tar.xz) that
# lets a CUDA machine with no network build this project's Caffe (scripts/offline_setup.sh,
# `make setup GPU=1 OFFLINE=OUT`). Run it on the connected Debian bookworm machine where
# `make setup` has run (it takes the Caffe source from setup's cache and the C++ dependencies
# from the installed Debian packages).
#
# The archive (one top folder, rmnet-gpu-bundle/) holds what such a target lacks:
#   caffe-src/           Debian's Caffe source with Debian's patches and ours applied
#   deps/include, lib    headers and shared libraries of Boost (system, thread, filesystem),
#                        protobuf, glog, gflags, HDF5, LMDB and OpenBLAS (OpenMP variant), with
#                        their shared-library closure minus glibc, libstdc++, libgcc_s, libgomp
#   deps/bin/protoc      protoc (a wrapper that finds its libraries in deps/lib)
#   boost-python-src/    Boost.Python's sources with Debian's Python patches (built on the
#                        target against its own Python: Debian's libboost_python311 fits 3.11 only)
#   python/X.Y/          for Python 3.12 (Ubuntu noble) and 3.13 (Debian trixie): headers and
#                        libpython, used only where the target's Python has none
#   python/site/six.py   pycaffe imports six, which the target may lack
#   MANIFEST.json        versions, packages, the project commit and each file's SHA-256
#   SHA256SUMS           the same SHA-256s for `sha256sum -c`
#
# Deterministic where cheap: files sorted, owners and times fixed (the project commit's time).
# Pins: scripts/caffe/source.env (Caffe), scripts/caffe/offline.env (everything else).
# RMNET_BUNDLE_XZ: xz preset (default -6; e.g. -1 for a quicker, larger archive in trials).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=caffe/source.env
. "$ROOT/scripts/caffe/source.env"
# shellcheck source=caffe/offline.env
. "$ROOT/scripts/caffe/offline.env"

OUT=${1:-$ROOT/dist/rmnet-gpu-bundle.tar.xz}
CACHE=${RMNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rmnet}
SRC_DIR=$CACHE/downloads/$CAFFE_SOURCE_PACKAGE-$CAFFE_DEBIAN_VERSION
BOOST_DIR=$CACHE/downloads/$BOOST_SOURCE_PACKAGE-$BOOST_DEBIAN_VERSION
PYDEB_DIR=$CACHE/downloads/python-fallback
MULTIARCH=x86_64-linux-gnu
LIBDIR=/usr/lib/$MULTIARCH
TOP=rmnet-gpu-bundle

say() { printf '==> %s\n' "$*"; }
die() { echo "gpu-bundle: $*" >&2; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }

[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || die "run this on an amd64 Debian machine (the targets are x86_64)"
for p in $BUNDLE_DEV_PACKAGES; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] ||
    die "Debian package $p is not installed: run 'make setup' first (it installs Caffe's build dependencies)"
done
"$ROOT/scripts/setup.sh" --verify-source "$SRC_DIR" >/dev/null 2>&1 ||
  die "no verified Caffe source in $SRC_DIR: run 'make setup' first ($("$ROOT/scripts/setup.sh" --verify-source "$SRC_DIR" 2>&1 | tail -n 1))"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rmnet-gpu-bundle.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
B=$WORK/$TOP
mkdir -p "$B/deps/include" "$B/deps/lib" "$B/deps/bin" "$B/python/site"

# --- Caffe's source, patched --------------------------------------------------------------
say "caffe source: $CAFFE_DEBIAN_VERSION + $(ls "$ROOT"/scripts/caffe/patches/*.patch | wc -l) patches"
# (dpkg-source copies the source files beside the folder it makes: not into the bundle.)
mkdir -p "$WORK/dsc"
dpkg-source -x "$SRC_DIR/${CAFFE_SOURCE_PACKAGE}_${CAFFE_DEBIAN_VERSION}.dsc" "$WORK/dsc/caffe-src" >"$WORK/dpkg-source.log" 2>&1 ||
  die "dpkg-source -x failed: $(tail -n 1 "$WORK/dpkg-source.log")"
mv "$WORK/dsc/caffe-src" "$B/caffe-src"
for p in "$ROOT"/scripts/caffe/patches/*.patch; do
  patch -d "$B/caffe-src" -p1 --forward --batch --quiet <"$p" || die "patch $p does not apply"
done
# Not needed to build: Debian's packaging, the docs, example data and models.
rm -rf "$B/caffe-src/debian" "$B/caffe-src/.pc" "$B/caffe-src/docs" "$B/caffe-src/data" \
  "$B/caffe-src/models"
mkdir -p "$B/caffe-src/docs"   # CMakeLists.txt adds it as a subdirectory (BUILD_docs=OFF)
printf 'cmake_minimum_required(VERSION 2.8.7)\n' >"$B/caffe-src/docs/CMakeLists.txt"

# --- headers ------------------------------------------------------------------------------
say "headers: boost, protobuf, glog, gflags, hdf5, lmdb, openblas"
# The packages' regular files under /usr/include (symlinks and folders left out).
dpkg -L libboost1.74-dev libprotobuf-dev libgoogle-glog-dev libgflags-dev liblmdb-dev |
  grep '^/usr/include/' | while read -r f; do [ -f "$f" ] && [ ! -L "$f" ] && echo "${f#/usr/include/}"; done |
  tar -C /usr/include -cf - -T - | tar -C "$B/deps/include" -xf -
cp -p /usr/include/hdf5/serial/*.h "$B/deps/include/"
cp -p /usr/include/$MULTIARCH/openblas-pthread/{cblas.h,f77blas.h,openblas_config.h} "$B/deps/include/"

# --- shared libraries and their closure ---------------------------------------------------
# Seeds: SONAME-named copies of what Caffe links, with the unversioned names the linker needs.
# Left out of the closure: what every Linux C++ toolchain has, and libgomp (the target's
# compiler's OpenMP runtime must be the only one loaded).
SYSTEM_LIBS='^(linux-vdso|ld-linux-x86-64|libc|libm|libpthread|libdl|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libgomp)\.so'
declare -A DEV_NAME=(
  [$LIBDIR/libboost_system.so.1.74.0]=libboost_system.so
  [$LIBDIR/libboost_thread.so.1.74.0]=libboost_thread.so
  [$LIBDIR/libboost_filesystem.so.1.74.0]=libboost_filesystem.so
  [$LIBDIR/libprotobuf.so.32]=libprotobuf.so
  [$LIBDIR/libglog.so.1]=libglog.so
  [$LIBDIR/libgflags.so.2.2]=libgflags.so
  [$LIBDIR/libhdf5_serial.so.103]=libhdf5.so
  [$LIBDIR/libhdf5_serial_hl.so.100]=libhdf5_hl.so
  [$LIBDIR/libhdf5_serial_cpp.so.103]=libhdf5_cpp.so         # CMake's FindHDF5 asks for the C++
  [$LIBDIR/libhdf5_serial_hl_cpp.so.100]=libhdf5_hl_cpp.so   # ones too (Caffe uses only C's)
  [$LIBDIR/liblmdb.so.0]=liblmdb.so
  [$LIBDIR/openblas-openmp/libopenblas.so.0]=libopenblas.so
)
soname() { objdump -p "$1" | awk '$1 == "SONAME" { print $2 }'; }
copy_lib() {   # copy_lib PATH: PATH's real file as deps/lib/<SONAME>, once
  local name
  name=$(soname "$1"); [ -n "$name" ] || name=$(basename "$1")
  [ -e "$B/deps/lib/$name" ] || cp -L "$1" "$B/deps/lib/$name"
  echo "$name"
}
closure() {    # closure FILE...: the non-system libraries FILE... load, recursively (ldd is)
  ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u |
    while read -r name path; do
      [[ $name =~ $SYSTEM_LIBS ]] || echo "$path"
    done
}
say "shared libraries"
seeds=("${!DEV_NAME[@]}" /usr/bin/protoc)
for s in "${!DEV_NAME[@]}"; do
  [ -e "$s" ] || die "$s not found (its Debian package changed?)"
  name=$(copy_lib "$s")
  ln -sf "$name" "$B/deps/lib/${DEV_NAME[$s]}"
done
while read -r path; do copy_lib "$path" >/dev/null; done < <(closure "${seeds[@]}")
cp -p /usr/bin/protoc "$B/deps/bin/protoc.real"
cat >"$B/deps/bin/protoc" <<'EOF'
#!/bin/sh
# Debian's protoc, finding its libraries in the bundle (not through a global LD_LIBRARY_PATH).
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/protoc.real" "$@"
EOF
chmod +x "$B/deps/bin/protoc"
# Check: every carried library and protoc find all they load inside the bundle or the system set.
missing=$(cd "$B/deps/lib" && LD_LIBRARY_PATH=$PWD ldd ./*.so.* ../bin/protoc.real 2>/dev/null |
  awk '$2 == "=>" && $3 !~ /^\// { print $1 }' | sort -u)
[ -z "$missing" ] || die "libraries not resolved in the bundle: $missing"

# --- Boost.Python's sources ----------------------------------------------------------------
verify_boost() {
  local dsc=$BOOST_DIR/${BOOST_SOURCE_PACKAGE}_$BOOST_DEBIAN_VERSION.dsc sum size name
  [ -f "$dsc" ] && [ "$(sha256 "$dsc")" = "$BOOST_DSC_SHA256" ] || return 1
  while read -r sum size name; do
    [ -f "$BOOST_DIR/$name" ] && [ "$(sha256 "$BOOST_DIR/$name")" = "$sum" ] || return 1
  done < <(sed -n '/^Checksums-Sha256:/,/^[^ ]/{/^ /p}' "$dsc")
}
if ! verify_boost; then
  say "fetching Debian source package $BOOST_SOURCE_PACKAGE $BOOST_DEBIAN_VERSION (about 61 MB, once)"
  t=$WORK/apt-boost; mkdir -p "$t/lists/partial" "$t/cache/archives/partial" "$t/files"
  mirror=$(apt-get indextargets --format '$(REPO_URI) $(LABEL)' 2>/dev/null | awk '$2 == "Debian" { print $1; exit }')
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror:-http://deb.debian.org/debian/} $BOOST_DEBIAN_SUITE main" >"$t/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$t/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$t/lists" -o "Dir::Cache=$t/cache" -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" update >"$t/log" 2>&1 || die "apt-get update for $BOOST_SOURCE_PACKAGE failed: $(tail -n 1 "$t/log")"
  (cd "$t/files" && apt-get "${apt_opts[@]}" source --download-only "$BOOST_SOURCE_PACKAGE=$BOOST_DEBIAN_VERSION") >>"$t/log" 2>&1 ||
    die "apt-get source $BOOST_SOURCE_PACKAGE=$BOOST_DEBIAN_VERSION failed: $(tail -n 1 "$t/log")"
  rm -rf "$BOOST_DIR"; mkdir -p "$(dirname "$BOOST_DIR")"; mv "$t/files" "$BOOST_DIR"
  verify_boost || die "$BOOST_DIR does not match BOOST_DSC_SHA256 in scripts/caffe/offline.env or its .dsc's checksums"
fi
say "boost.python sources ($BOOST_DEBIAN_VERSION)"
bp=$WORK/boost-python
mkdir -p "$bp"
tar -xJf "$BOOST_DIR/${BOOST_SOURCE_PACKAGE}_${BOOST_DEBIAN_VERSION%-*}.orig.tar.xz" -C "$bp" \
  boost/libs/python/src boost/libs/python/include boost/LICENSE_1_0.txt
tar -xJf "$BOOST_DIR/${BOOST_SOURCE_PACKAGE}_$BOOST_DEBIAN_VERSION.debian.tar.xz" -C "$bp" debian/patches
for p in $BOOST_PYTHON_PATCHES; do
  patch -d "$bp/boost" -p1 --forward --batch --quiet <"$bp/debian/patches/$p" || die "Debian's $p does not apply to Boost.Python"
done
mkdir -p "$B/boost-python-src"
cp -a "$bp/boost/libs/python/src" "$bp/boost/LICENSE_1_0.txt" "$B/boost-python-src/"
rm -rf "$B/boost-python-src/src/numpy" "$B/boost-python-src/src/fabscript"   # boost_numpy: not used
# The headers the bundle carries (Debian's) already have the patches; check they agree.
for h in detail/wrap_python.hpp object/make_instance.hpp; do
  cmp -s "$bp/boost/libs/python/include/boost/python/$h" "$B/deps/include/boost/python/$h" ||
    die "boost/python/$h: Debian's installed header differs from the patched source"
done

# --- Python fallbacks ----------------------------------------------------------------------
say "python fallbacks (headers and libpython for 3.12, 3.13)"
mkdir -p "$PYDEB_DIR"
while read -r ver url sum; do
  [ -n "$ver" ] || continue
  deb=$PYDEB_DIR/$(basename "$url")
  if [ ! -f "$deb" ] || [ "$(sha256 "$deb")" != "$sum" ]; then
    curl -fsSL --retry 3 -o "$deb.part" "$url" || die "download failed: $url"
    got=$(sha256 "$deb.part")
    [ "$got" = "$sum" ] || { rm -f "$deb.part"; die "checksum mismatch: $url has SHA-256 $got, scripts/caffe/offline.env pins $sum"; }
    mv "$deb.part" "$deb"
  fi
  x=$WORK/deb-$ver-$(basename "$url" .deb); mkdir -p "$x"
  dpkg-deb -x "$deb" "$x"
  d=$B/python/$ver; mkdir -p "$d/include" "$d/lib"
  if [ -d "$x/usr/include/python$ver" ]; then
    cp -a "$x/usr/include/python$ver" "$d/include/"
    mkdir -p "$d/include/$MULTIARCH"
    cp -a "$x/usr/include/$MULTIARCH/python$ver" "$d/include/$MULTIARCH/"
  fi
  for f in "$x/usr/lib/$MULTIARCH"/libpython"$ver".so.*; do
    [ -f "$f" ] && [ ! -L "$f" ] && cp -p "$f" "$d/lib/"
  done
  echo "$ver $(basename "$url") $sum" >>"$WORK/python-debs.txt"
done <<<"$PYTHON_FALLBACK_DEBS"
for ver in $(awk '{print $1}' "$WORK/python-debs.txt" | sort -u); do
  [ -f "$B/python/$ver/include/python$ver/Python.h" ] && ls "$B/python/$ver/lib"/libpython"$ver".so.1* >/dev/null 2>&1 ||
    die "python fallback $ver lacks Python.h or libpython$ver.so.1.0"
done
six=$(grep -E '^six==' "$ROOT/requirements.txt" | cut -d= -f3)
pip_dir=$WORK/six; mkdir -p "$pip_dir"
python3 -m pip download --disable-pip-version-check --no-deps --only-binary=:all: -q -d "$pip_dir" "six==$six" ||
  die "pip download six==$six failed"
python3 -m zipfile -e "$pip_dir"/six-*.whl "$pip_dir/x"
cp "$pip_dir/x/six.py" "$B/python/site/six.py"

# --- manifest ------------------------------------------------------------------------------
say "manifest"
commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -v '^??' | head -n 1 || true)
mtime=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
(cd "$B" && find . -type f ! -name SHA256SUMS ! -name MANIFEST.json | LC_ALL=C sort | sed 's|^\./||' |
  xargs -d '\n' sha256sum) >"$B/SHA256SUMS"
pkgs=$(for p in $BUNDLE_DEV_PACKAGES; do echo "$p $(dpkg-query -W -f='${Version}' "$p")"; done
  # the Debian package of every carried library
  for f in "$B"/deps/lib/*; do
    [ -L "$f" ] && continue
    # (openblas-openmp first: $LIBDIR/libopenblas.so.0 is the alternatives' pthread variant)
    for cand in "$LIBDIR/openblas-openmp/$(basename "$f")" "$LIBDIR/$(basename "$f")" "/lib/$MULTIARCH/$(basename "$f")"; do
      [ -e "$cand" ] || continue
      p=$(dpkg -S "$(readlink -f "$cand")" 2>/dev/null | head -n 1 | cut -d: -f1) || true
      [ -n "$p" ] && echo "$p $(dpkg-query -W -f='${Version}' "$p")" && break
    done
  done | sort -u)
patches=$(for p in "$ROOT"/scripts/caffe/patches/*.patch; do echo "$(basename "$p") $(sha256 "$p")"; done)
COMMIT=$commit DIRTY=${dirty:+yes} CAFFE_VERSION=$CAFFE_DEBIAN_VERSION CAFFE_DSC=$CAFFE_DSC_SHA256 \
BOOST_VERSION=$BOOST_DEBIAN_VERSION BOOST_DSC=$BOOST_DSC_SHA256 BOOST_PATCHES=$BOOST_PYTHON_PATCHES \
PKGS=$pkgs PATCHES=$patches PYDEBS=$(cat "$WORK/python-debs.txt") SIX=$six \
python3 - "$B" <<'EOF'
"""Write MANIFEST.json from the environment and SHA256SUMS."""
import json, os, sys
from pathlib import Path
b = Path(sys.argv[1])
env = os.environ
def pairs(text):
    return [line.split() for line in text.splitlines() if line.strip()]
files = {}
for line in (b / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split(None, 1)
    files[name] = {"sha256": digest, "size": (b / name).stat().st_size}
manifest = {
    "format": "rmnet-gpu-bundle 1",
    "project_commit": env["COMMIT"] + ("-dirty" if env.get("DIRTY") else ""),
    "caffe_source": {"debian_version": env["CAFFE_VERSION"], "dsc_sha256": env["CAFFE_DSC"],
                     "patches_applied": [{"name": n, "sha256": s} for n, s in pairs(env["PATCHES"])]},
    "boost_python_source": {"debian_version": env["BOOST_VERSION"], "dsc_sha256": env["BOOST_DSC"],
                            "debian_patches": env["BOOST_PATCHES"].split()},
    "debian_packages": {n: v for n, v in pairs(env["PKGS"])},
    "python_fallbacks": [{"python": v, "deb": d, "sha256": s} for v, d, s in pairs(env["PYDEBS"])],
    "six": env["SIX"],
    "files": files,
}
(b / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
EOF

# --- archive -------------------------------------------------------------------------------
say "archive (xz)"
mkdir -p "$(dirname "$OUT")"
tar -C "$WORK" --sort=name --mtime="@$mtime" --owner=0 --group=0 --numeric-owner \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf - "$TOP" |
  xz "${RMNET_BUNDLE_XZ:--6}" -T2 >"$OUT.part"
mv "$OUT.part" "$OUT"
size=$(stat -c %s "$OUT")
echo "$(sha256 "$OUT")  $(basename "$OUT")" >"$OUT.sha256"
say "wrote $OUT ($((size / 1024 / 1024)) MiB, $size bytes; SHA-256 in $OUT.sha256); per part (uncompressed):"
(cd "$B" && du -sh caffe-src deps/include deps/lib deps/bin boost-python-src python | sed 's/^/    /')
