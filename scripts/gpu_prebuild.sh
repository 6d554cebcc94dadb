#!/usr/bin/env bash
# Builds, on this (Debian 12) machine, the executables scripts/gpu_check.sh runs on a GPU machine,
# for that GPU (ARCH, default 90a: H100/H200), and puts them, stripped, into .gpubin/bin.tar.xz
# (ignored by git) under the paths they have in a build directory. Carried to the GPU machine with .devdeps
# (device tool: carry [".devdeps", ".gpubin"]), they save the build there, minutes of the
# session's device time; gpu_check.sh builds there anyway when they do not start (other system
# libraries). They link the same Debian libraries that .devdeps brings.
#
#   bash ../shared/device/fetch-deps.sh && bash scripts/gpu_prebuild.sh
#
# Environment: ARCH, JOBS (default: cores), BUILD (default build-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build-gpu}"
DEST=.gpubin  # ignored by .gitignore
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${ARCH:-90a}" \
  -DTESSERA_WERROR=OFF >/dev/null
bins=(tests/kernels/kernels_test tests/worker/worker_test tests/worker/disaggregation_test
  launch/tessera)
targets=(kernels_test worker_test disaggregation_test tessera)
if grep -q "^TESSERA_WITH_NCCL:BOOL=ON" "$BUILD/CMakeCache.txt"; then
  bins+=(tests/parallel/comm/comm_conformance_nccl_test)
  targets+=(comm_conformance_nccl_test)
fi
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}" --target "${targets[@]}"
# Stripped, under their build-directory paths, in one xz archive: the device tool carries at most
# 64 MiB with the tree and .devdeps (about 41 MiB), and xz takes the binaries to a third.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for b in "${bins[@]}"; do
  mkdir -p "$stage/$(dirname "$b")"
  strip -o "$stage/$b" "$BUILD/$b"
done
rm -rf "$DEST"
mkdir -p "$DEST"
tar -cJf "$DEST/bin.tar.xz" -C "$stage" .
{
  git rev-parse --short HEAD
  git diff --quiet HEAD || echo "(with uncommitted changes)"
} >"$DEST/COMMIT"
du -sh "$stage" "$DEST"
