#!/usr/bin/env bash
# The GPU session's check (../shared/device/README.md): on a machine with an NVIDIA GPU and the
# .devdeps prefix carried over, builds for that GPU, runs every `gpu`-labelled test (the CUDA
# kernels' conformance suites, the transformers fixtures on the CUDA backend with and without
# decode graphs, KV migration between GPU caches, NCCL at world size 1) and the benchmarks
# (bench-kernels, attention on each kernel and torch's as its peer, bench-engine at 8B with graphs
# and eagerly, the transformers peer), writing
# each log under $OUT (default: gpu-out/).
#
#   On the machine with apt first:  bash ../shared/device/fetch-deps.sh   (fills .devdeps/)
#   Then, on the GPU machine:       bash scripts/gpu_check.sh [PHASE...]
#
# PHASEs, in this order whatever the order given: build, test, bench (default: all three). A
# device call is limited to 10 minutes, so a session can run `build test` in one call and `bench`
# in the next on the same warm machine (the build directory stays). Every step runs under the
# time left before DEADLINE_S seconds after the start (default 570); a step that would start with
# less than 20 s left is skipped and named in $OUT/summary.txt, so what ran still comes back.
# $OUT/summary.txt has one line a step: its status, its seconds and its log.
# Environment: ARCH (default 90a: H100/H200), JOBS (default: cores), DEADLINE_S.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-570}))
SUMMARY="$OUT/summary.txt"
status=0

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(build test bench)
want() {
  local p
  for p in "${phases[@]}"; do [ "$p" = "$1" ] && return 0; done
  return 1
}

# step NAME CRITICAL COMMAND...: runs COMMAND under the time left, its output in $OUT/NAME.log.
# A CRITICAL (1) step's failure fails the check; benchmarks are 0 (they print, never fail).
step() {
  local name="$1" critical="$2"
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 20 ]; then
    echo "SKIPPED $name (${left}s left)" | tee -a "$SUMMARY"
    [ "$critical" = 1 ] && status=1
    return 1
  fi
  local began rc
  began=$(date +%s)
  timeout "$left" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - began))
  if [ "$rc" -eq 0 ]; then
    echo "ok      $name ${took}s" >>"$SUMMARY"
  else
    echo "FAILED  $name ${took}s (exit $rc$([ "$rc" = 124 ] && echo ', out of time')) $OUT/$name.log" |
      tee -a "$SUMMARY"
    [ "$critical" = 1 ] && status=1
  fi
  return "$rc"
}

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

if want build; then
  step configure 1 cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${ARCH:-90a}" || { tail -30 "$OUT/configure.log"; exit 1; }
  # The executables of every `gpu` test: ctest -L gpu fails on one that was not built.
  targets=(kernels_test worker_test disaggregation_test tessera)
  if grep -q "^TESSERA_WITH_NCCL:BOOL=ON" build-gpu/CMakeCache.txt; then
    targets+=(comm_conformance_nccl_test)  # NCCL at world size 1, over a host group and a store
  fi
  step build 1 cmake --build build-gpu -j "${JOBS:-$(nproc)}" --target "${targets[@]}" || {
    grep -E "error|FAILED" -A5 "$OUT/build.log" | head -60
    exit 1
  }
fi

if want test; then
  # Per-test output of the CUDA instances, most telling first (the ctest entries at the end only
  # say pass or fail).
  step kernels_test_cuda 1 build-gpu/tests/kernels/kernels_test --gtest_filter='*/cuda:*/cuda_*'
  # The transformers fixtures on the GPU, decode graphs (DecodeGraphLogitsMatchTransformers)
  # included.
  CUDA_LAUNCH_BLOCKING=1 step worker_test_cuda 1 \
    build-gpu/tests/worker/worker_test --gtest_filter='*_cuda'
  # The CLI end to end: greedy tokens on the GPU, decode steps as CUDA graphs (the default) and
  # eagerly, equal the CPU's for a fixture.
  for run in cpu cuda cuda_eager; do
    args=(--backend "${run%_eager}")
    [ "$run" = cuda_eager ] && args+=(--enforce-eager)
    step "generate_$run" 1 build-gpu/launch/tessera generate \
      --model tests/reference/fixtures/llama_gqa "${args[@]}" \
      --prompt-ids 5,6,7,8 --max-tokens 16 --ignore-eos
  done
  for run in cuda cuda_eager; do
    if ! diff -q <(tail -1 "$OUT/generate_cpu.log") <(tail -1 "$OUT/generate_$run.log") \
      >/dev/null 2>&1; then
      echo "FAILED  generate_$run: its tokens differ from the cpu's" | tee -a "$SUMMARY"
      status=1
    fi
  done
  # KV migration between two GPU caches through KvPort's host mirrors.
  step disaggregation_test_cuda 1 \
    build-gpu/tests/worker/disaggregation_test --gtest_filter='*_cuda'
  step ctest_gpu 1 ctest --test-dir build-gpu -L gpu --output-on-failure
  grep -hE "^\[  (FAILED|PASSED|SKIPPED) " "$OUT"/*_cuda.log | head -60
fi

if want bench; then
  # Figures (print; never fail the check), each against the device's peaks measured in the same
  # run: the engine on an 8B-shaped model with decode graphs and without, then every kernel at
  # Llama-3-8B shapes, then the transformers peer at the engine's shapes.
  engine=(build-gpu/launch/tessera bench-engine --backend cuda --preset llama-8b
    --weight-dtype bfloat16 --batch-sizes "1,8,64" --prompt-len 128 --decode-steps 32)
  step bench_engine_8b 0 "${engine[@]}"
  step bench_engine_8b_eager 0 "${engine[@]}" --enforce-eager
  step bench_kernels 0 build-gpu/launch/tessera bench-kernels --backend cuda \
    --json "$OUT/bench_kernels.json"
  # The attention peer: torch's scaled_dot_product_attention at the shapes of the run above.
  step peer_attention_torch 0 python3 scripts/peer_attention_torch.py --device cuda \
    --dtype bfloat16 --prefill-tokens 4096 --batch-sizes 32,64 --contexts 4096,32768 \
    --compare "$OUT/bench_kernels.log"
  # Attention on each kernel (the run above takes tensor cores for prefill, SIMT for decode).
  step bench_attention_simt 0 build-gpu/launch/tessera bench-kernels --backend cuda \
    --ops decode_attention,prefill_attention --attention-kernel simt
  step bench_attention_tensor_cores 0 build-gpu/launch/tessera bench-kernels --backend cuda \
    --ops decode_attention --attention-kernel tensor-cores
  step peer_hf_8b 0 python3 scripts/peer_decode_hf.py --preset llama-8b --device cuda \
    --dtype bfloat16 --batch-sizes 1,8,64 --prompt-len 128 --decode-steps 32 \
    --compare "$OUT/bench_engine_8b.log"
  grep -hE "^(device|peak)|BELOW|met" "$OUT/bench_kernels.log" 2>/dev/null | head -40
  grep -HE "attention" "$OUT"/bench_attention_*.log 2>/dev/null | head -30
  grep -hE "attention|^peer" "$OUT/peer_attention_torch.log" 2>/dev/null | head -10
  tail -n 6 "$OUT"/bench_engine_8b*.log "$OUT/peer_hf_8b.log" 2>/dev/null
fi

echo "--- $SUMMARY"
cat "$SUMMARY" 2>/dev/null
exit $status
