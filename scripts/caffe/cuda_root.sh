#!/usr/bin/env bash
# cuda_root.sh DEST SOURCE...: one CUDA toolkit folder, as CMake's FindCUDA and nvcc expect it
# (DEST/bin/nvcc, DEST/include, DEST/lib64, DEST/nvvm), assembled from pieces that ship apart.
#
# A SOURCE is any of:
#   - a toolkit root (it has bin/nvcc), e.g. /usr/local/cuda-13.0;
#   - a folder holding NVIDIA's wheels unpacked or pip-installed (it has nvidia/cu13/, or
#     nvidia/cu12/..., and nvidia/nccl/), e.g. a venv's site-packages: the CUDA 13 wheels
#     nvidia-cuda-nvcc, -crt, -runtime, -cccl, nvidia-nvvm, nvidia-cublas, nvidia-curand and
#     nvidia-nccl-cu13 all unpack into nvidia/cu13 (NCCL into nvidia/nccl).
#
# DEST/bin and DEST/nvvm are links to the first SOURCE that has nvcc (nvcc finds cicc, ptxas and
# its profile next to itself); include/ and lib/ hold one link per file, the first SOURCE that
# has a name winning, so a toolkit without cuBLAS gets it from a wheel folder. lib64 is lib.
# Unversioned library names (libcublas.so, libnccl.so, ...) are added where only versioned
# ones ship, for the linker. Nothing is copied; DEST is replaced whole.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: cuda_root.sh DEST SOURCE..." >&2; exit 2; }
DEST=$1; shift

# The folders of one SOURCE that hold toolkit files, most specific first.
parts() {
  local s=$1 d
  if [ -f "$s/bin/nvcc" ] || [ -d "$s/include" ]; then echo "$s"; fi
  for d in "$s"/nvidia/cu[0-9]* "$s"/nvidia/nccl "$s"/nvidia/*; do
    [ -d "$d/include" ] || [ -d "$d/lib" ] || [ -d "$d/bin" ] || continue
    echo "$d"
  done | awk '!seen[$0]++'
}

tmp="$DEST.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/include" "$tmp/lib"
nvcc_root=""
for s in "$@"; do
  [ -d "$s" ] || { echo "cuda_root.sh: $s is not a folder" >&2; exit 2; }
  while read -r p; do
    if [ -z "$nvcc_root" ] && [ -f "$p/bin/nvcc" ]; then nvcc_root=$p; fi
    for sub in include lib lib64; do
      [ -d "$p/$sub" ] || continue
      for f in "$p/$sub"/* ; do
        [ -e "$f" ] || continue
        name=$(basename "$f")
        [ "$sub" = include ] && t="$tmp/include/$name" || t="$tmp/lib/$name"
        [ -e "$t" ] || [ -L "$t" ] || ln -s "$(readlink -f "$f")" "$t"
      done
    done
  done < <(parts "$s")
done
if [ -z "$nvcc_root" ]; then
  echo "cuda_root.sh: no bin/nvcc in: $* (a CUDA toolkit, or NVIDIA's nvidia-cuda-nvcc wheel, is needed)" >&2
  rm -rf "$tmp"; exit 1
fi
# Wheels unpacked with Python's zipfile lose the executable bit.
chmod +x "$nvcc_root"/bin/* 2>/dev/null || true
[ -d "$nvcc_root/nvvm/bin" ] && chmod +x "$nvcc_root"/nvvm/bin/* 2>/dev/null || true
ln -s "$(readlink -f "$nvcc_root/bin")" "$tmp/bin"
[ -d "$nvcc_root/nvvm" ] && ln -s "$(readlink -f "$nvcc_root/nvvm")" "$tmp/nvvm"
ln -s lib "$tmp/lib64"
# Unversioned names for the linker: libfoo.so -> libfoo.so.N where only the latter ships.
for f in "$tmp"/lib/lib*.so.*; do
  [ -e "$f" ] || continue
  base=$(basename "$f"); plain=${base%%.so.*}.so
  [ -e "$tmp/lib/$plain" ] || ln -s "$base" "$tmp/lib/$plain"
done
for need in include/cuda_runtime.h lib/libcudart.so include/cublas_v2.h lib/libcublas.so \
            include/curand.h lib/libcurand.so; do
  [ -e "$tmp/$need" ] || { echo "cuda_root.sh: no $need in: $*" >&2; rm -rf "$tmp"; exit 1; }
done
rm -rf "$DEST"
mv "$tmp" "$DEST"
"$DEST/bin/nvcc" --version | tail -n 2 | head -n 1
