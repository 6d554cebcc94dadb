#!/usr/bin/env bash
# The GPU session's one call (../shared/device/README.md): on a machine with an NVIDIA GPU and
# the .devdeps prefix carried over, builds for that GPU and runs every `gpu`-labelled test (the
# CUDA kernels' conformance suites and the transformers fixtures on the CUDA backend), then the
# benchmarks (bench-kernels, bench-engine at 8B, the transformers peer), writing each log under
# $OUT (default: gpu-out/).
#   On the machine with apt first:  bash ../shared/device/fetch-deps.sh   (fills .devdeps/)
#   Then, on the GPU machine:       bash scripts/gpu_check.sh
# Environment: ARCH (default 90a: H100/H200), JOBS (default: cores).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
if [ -f .devdeps/unpack.sh ]; then
  # shellcheck disable=SC1091
  source .devdeps/unpack.sh
fi
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  for lib in /usr/local/cuda*/lib64/*nccl* /usr/local/cuda*/lib64/*cublas*; do
    [ -e "$lib" ] && echo "$lib"
  done | head
} >"$OUT/device.txt" 2>&1

cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="${ARCH:-90a}" >"$OUT/configure.log" 2>&1 || {
  tail -30 "$OUT/configure.log"
  exit 1
}
# The executables of every `gpu` test: ctest -L gpu fails on one that was not built.
targets=(kernels_test worker_test disaggregation_test tessera)
if grep -q "^TESSERA_WITH_NCCL:BOOL=ON" build-gpu/CMakeCache.txt; then
  targets+=(comm_conformance_nccl_test)  # NCCL at world size 1, over a host group and a store
fi
cmake --build build-gpu -j "${JOBS:-$(nproc)}" --target "${targets[@]}" \
  >"$OUT/build.log" 2>&1 || {
  grep -E "error|FAILED" -A5 "$OUT/build.log" | head -60
  exit 1
}

status=0
# Per-test output of the CUDA instances (the ctest entries below only say pass/fail).
build-gpu/tests/kernels/kernels_test --gtest_filter='*/cuda' >"$OUT/kernels_test_cuda.log" 2>&1 ||
  status=1
CUDA_LAUNCH_BLOCKING=1 build-gpu/tests/worker/worker_test --gtest_filter='*_cuda' \
  >"$OUT/worker_test_cuda.log" 2>&1 || status=1
# KV migration between two GPU caches through KvPort's host mirrors.
build-gpu/tests/worker/disaggregation_test --gtest_filter='*_cuda' \
  >"$OUT/disaggregation_test_cuda.log" 2>&1 || status=1
ctest --test-dir build-gpu -L gpu --output-on-failure >"$OUT/ctest_gpu.log" 2>&1 || status=1
# The CLI end to end: greedy tokens on the GPU (decode steps as CUDA graphs, the default, and
# eagerly) equal the CPU's for a fixture.
for run in cpu cuda cuda_eager; do
  args=(--backend "${run%_eager}")
  [ "$run" = cuda_eager ] && args+=(--enforce-eager)
  build-gpu/launch/tessera generate --model tests/reference/fixtures/llama_gqa "${args[@]}" \
    --prompt-ids 5,6,7,8 --max-tokens 16 --ignore-eos >"$OUT/generate_$run.log" 2>&1 || status=1
done
for run in cuda cuda_eager; do
  if ! diff -q <(tail -1 "$OUT/generate_cpu.log") <(tail -1 "$OUT/generate_$run.log") >/dev/null; then
    echo "tessera generate: $run tokens differ from cpu's" | tee -a "$OUT/generate_$run.log"
    status=1
  fi
done
# Figures (print; never fail the run), each against the device's peaks measured in the same run:
# every kernel at Llama-3-8B shapes, the engine on an 8B-shaped model, and the transformers peer
# at the same shapes when this machine's python has torch.
timeout 300 build-gpu/launch/tessera bench-kernels --backend cuda --json "$OUT/bench_kernels.json" \
  >"$OUT/bench_kernels.log" 2>&1 || true
timeout 300 build-gpu/launch/tessera bench-engine --backend cuda --preset llama-8b \
  --weight-dtype bfloat16 --batch-sizes 1,8,64 --prompt-len 128 --decode-steps 32 \
  >"$OUT/bench_engine_8b.log" 2>&1 || true
# The same without CUDA graphs: what recording the decode steps saves.
timeout 300 build-gpu/launch/tessera bench-engine --backend cuda --preset llama-8b \
  --weight-dtype bfloat16 --batch-sizes 1,8,64 --prompt-len 128 --decode-steps 32 --enforce-eager \
  >"$OUT/bench_engine_8b_eager.log" 2>&1 || true
timeout 300 python3 scripts/peer_decode_hf.py --preset llama-8b --device cuda --dtype bfloat16 \
  --batch-sizes 1,8,64 --prompt-len 128 --decode-steps 32 --compare "$OUT/bench_engine_8b.log" \
  >"$OUT/peer_hf_8b.log" 2>&1 || true
grep -E "^\[  (FAILED|PASSED|SKIPPED) " "$OUT"/*_cuda.log | head -60
tail -5 "$OUT/ctest_gpu.log"
grep -E "^(device|peak)|BELOW|met" "$OUT/bench_kernels.log" | head -40
tail -6 "$OUT/bench_engine_8b.log" "$OUT/bench_engine_8b_eager.log" "$OUT/peer_hf_8b.log"
exit $status
