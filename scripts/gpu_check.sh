#!/usr/bin/env bash
# The GPU session's check (../shared/device/README.md): on a machine with an NVIDIA GPU and the
# .devdeps prefix carried over, builds for that GPU (or takes the binaries scripts/gpu_prebuild.sh
# made on the development machine, when they run there), runs every `gpu`-labelled test (the CUDA
# kernels' conformance suites, the transformers fixtures on the CUDA backend with and without
# decode graphs, KV migration between GPU caches, NCCL at world size 1) and the benchmarks
# (bench-kernels, attention on each kernel and torch's as its peer, bench-engine at 8B with graphs
# and eagerly, the transformers peer).
#
#   On the machine with apt first:  bash ../shared/device/fetch-deps.sh   (fills .devdeps/)
#                         optional: bash scripts/gpu_prebuild.sh          (fills .gpubin/)
#   Then, on the GPU machine:       bash scripts/gpu_check.sh [PHASE...]
#   (device tool: run carrying [".devdeps", ".gpubin"])
#
# PHASEs, in this order whatever the order given: build, test, bench (default: all three). A
# device call is limited to 10 minutes, so a session can run `build test` in one call and `bench`
# in the next on the same warm machine (the build directory stays). Every step runs under the
# time left before DEADLINE_S seconds after the start (default 570); a step that would start with
# less than 20 s left is skipped and named in the summary, so what ran still comes back.
# The device tool brings back at most 8 files from $OUT, so $OUT holds three: summary.txt (one
# line a step: its status, its seconds and its log), device.txt, and logs.tar.gz (every step's
# log, and bench-kernels' JSON).
# Environment: ARCH (default 90a: H100/H200), JOBS (default: cores), DEADLINE_S, PREBUILT
# (default .gpubin; "" always builds).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
# Tests find the committed fixtures here, wherever their binaries were built (tests/source_dir.h).
export TESSERA_SOURCE_DIR="$PWD"
OUT="${OUT:-gpu-out}"
LOGS="$OUT/logs"
mkdir -p "$LOGS"
# Every log into one archive at the end, whatever ends the script.
trap 'tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"' EXIT
trap 'exit 143' TERM INT  # a killed check still packs what it logged
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

# step NAME CRITICAL COMMAND...: runs COMMAND under the time left, its output in $LOGS/NAME.log.
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
  timeout "$left" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - began))
  if [ "$rc" -eq 0 ]; then
    echo "ok      $name ${took}s" >>"$SUMMARY"
  else
    echo "FAILED  $name ${took}s (exit $rc$([ "$rc" = 124 ] && echo ', out of time')) $LOGS/$name.log" |
      tee -a "$SUMMARY"
    [ "$critical" = 1 ] && status=1
  fi
  return "$rc"
}

if [ -f .devdeps/unpack.sh ]; then
  # shellcheck disable=SC1091
  source .devdeps/unpack.sh
fi
# The CUDA libraries the executables load: the toolkit's, else those of PyTorch's nvidia-* wheels
# (where NCCL may come only with torch). A folder that holds one the loader cannot find yet goes
# on LD_LIBRARY_PATH; NCCL's wheel is also named to CMake (TESSERA_NCCL_ROOT).
[ -d /usr/local/cuda/lib64 ] && export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
wheels=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  if ldconfig -p 2>/dev/null | grep -q " $lib " || [ -e "/usr/local/cuda/lib64/$lib" ]; then
    continue
  fi
  found=$([ -n "$wheels" ] && find "$wheels" -name "$lib" 2>/dev/null | head -1)
  if [ -n "$found" ]; then
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$(dirname "$found")"
    [ "$lib" = libnccl.so.2 ] && export TESSERA_NCCL_ROOT="$(dirname "$(dirname "$found")")"
  fi
done
{
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "TESSERA_NCCL_ROOT=${TESSERA_NCCL_ROOT:-}"
  nvidia-smi -L
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  for lib in /usr/local/cuda*/lib64/*nccl* /usr/local/cuda*/lib64/*cublas*; do
    [ -e "$lib" ] && echo "$lib"
  done | head
} >"$OUT/device.txt" 2>&1

# BIN: where the executables are. The prebuilt ones (scripts/gpu_prebuild.sh, built on Debian 12
# against .devdeps' libraries) when they start here; otherwise a build on this machine.
PREBUILT="${PREBUILT-.gpubin}"
BIN=build-gpu
if [ -n "$PREBUILT" ] && [ -f "$PREBUILT/bin.tar.xz" ]; then
  tar -xJf "$PREBUILT/bin.tar.xz" -C "$PREBUILT"
fi
if [ -n "$PREBUILT" ] && [ -x "$PREBUILT/launch/tessera" ]; then
  if "$PREBUILT/tests/kernels/kernels_test" --gtest_list_tests >"$LOGS/prebuilt.log" 2>&1 &&
    "$PREBUILT/launch/tessera" --help >>"$LOGS/prebuilt.log" 2>&1; then
    BIN="$PREBUILT"
    echo "ok      prebuilt binaries in $PREBUILT ($(tr "\n" " " <"$PREBUILT/COMMIT" 2>/dev/null))" >>"$SUMMARY"
  else
    ldd "$PREBUILT/launch/tessera" "$PREBUILT/tests/kernels/kernels_test" 2>&1 |
      grep -E "not found|version" | sort -u | tee -a "$LOGS/prebuilt.log" | head -5
    echo "FAILED  prebuilt binaries do not start here; building ($LOGS/prebuilt.log)" |
      tee -a "$SUMMARY"
  fi
fi

if want build && [ "$BIN" = build-gpu ]; then
  # Warnings are not errors here: this machine's compiler may not be CI's.
  step configure 1 cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${ARCH:-90a}" -DTESSERA_WERROR=OFF ||
    { tail -30 "$LOGS/configure.log"; exit 1; }
  # The executables of every `gpu` test.
  targets=(kernels_test worker_test disaggregation_test tessera)
  if grep -q "^TESSERA_WITH_NCCL:BOOL=ON" build-gpu/CMakeCache.txt; then
    targets+=(comm_conformance_nccl_test)  # NCCL at world size 1, over a host group and a store
  fi
  step build 1 cmake --build build-gpu -j "${JOBS:-$(nproc)}" --target "${targets[@]}" || {
    grep -E "error|FAILED" -A5 "$LOGS/build.log" | head -60
    exit 1
  }
fi

if want test; then
  # Per-test output of the CUDA instances, most telling first (the ctest entries at the end only
  # say pass or fail).
  step kernels_test_cuda 1 "$BIN"/tests/kernels/kernels_test --gtest_filter='*/cuda:*/cuda_*'
  # The transformers fixtures on the GPU, decode graphs (DecodeGraphLogitsMatchTransformers)
  # included.
  CUDA_LAUNCH_BLOCKING=1 step worker_test_cuda 1 \
    "$BIN"/tests/worker/worker_test --gtest_filter='*_cuda'
  # The CLI end to end: greedy tokens on the GPU, decode steps as CUDA graphs (the default) and
  # eagerly, equal the CPU's for a fixture.
  for run in cpu cuda cuda_eager; do
    args=(--backend "${run%_eager}")
    [ "$run" = cuda_eager ] && args+=(--enforce-eager)
    step "generate_$run" 1 "$BIN"/launch/tessera generate \
      --model tests/reference/fixtures/llama_gqa "${args[@]}" \
      --prompt-ids 5,6,7,8 --max-tokens 16 --ignore-eos
  done
  for run in cuda cuda_eager; do
    if ! diff -q <(tail -1 "$LOGS/generate_cpu.log") <(tail -1 "$LOGS/generate_$run.log") \
      >/dev/null 2>&1; then
      echo "FAILED  generate_$run: its tokens differ from the cpu's" | tee -a "$SUMMARY"
      status=1
    fi
  done
  # KV migration between two GPU caches through KvPort's host mirrors.
  step disaggregation_test_cuda 1 \
    "$BIN"/tests/worker/disaggregation_test --gtest_filter='*_cuda'
  # NCCL at world size 1 (the conformance suite over every communicator built; the ctest entries
  # of label gpu are the runs above and this one's cases).
  if [ -x "$BIN/tests/parallel/comm/comm_conformance_nccl_test" ]; then
    step comm_conformance_nccl 1 "$BIN/tests/parallel/comm/comm_conformance_nccl_test" \
      --gtest_filter='*/nccl'
  else
    echo "SKIPPED comm_conformance_nccl (not built: no NCCL)" | tee -a "$SUMMARY"
  fi
  grep -hE "^\[  (FAILED|PASSED|SKIPPED) " "$LOGS"/*_cuda.log | head -60
fi

if want bench; then
  # Figures (print; never fail the check), each against the device's peaks measured in the same
  # run: the engine on an 8B-shaped model with decode graphs and without, then every kernel at
  # Llama-3-8B shapes, then the transformers peer at the engine's shapes.
  engine=("$BIN"/launch/tessera bench-engine --backend cuda --preset llama-8b
    --weight-dtype bfloat16 --batch-sizes "1,8,64" --prompt-len 128 --decode-steps 32)
  step bench_engine_8b 0 "${engine[@]}"
  step bench_engine_8b_eager 0 "${engine[@]}" --enforce-eager
  step bench_kernels 0 "$BIN"/launch/tessera bench-kernels --backend cuda \
    --json "$LOGS/bench_kernels.json"
  # The attention peer: torch's scaled_dot_product_attention at the shapes of the run above.
  step peer_attention_torch 0 python3 scripts/peer_attention_torch.py --device cuda \
    --dtype bfloat16 --prefill-tokens 4096 --batch-sizes 32,64 --contexts 4096,32768 \
    --compare "$LOGS/bench_kernels.log"
  # Attention on each kernel (the run above takes tensor cores for prefill, SIMT for decode).
  step bench_attention_simt 0 "$BIN"/launch/tessera bench-kernels --backend cuda \
    --ops decode_attention,prefill_attention --attention-kernel simt
  step bench_attention_tensor_cores 0 "$BIN"/launch/tessera bench-kernels --backend cuda \
    --ops decode_attention --attention-kernel tensor-cores
  step peer_hf_8b 0 python3 scripts/peer_decode_hf.py --preset llama-8b --device cuda \
    --dtype bfloat16 --batch-sizes 1,8,64 --prompt-len 128 --decode-steps 32 \
    --compare "$LOGS/bench_engine_8b.log"
  grep -hE "^(device|peak)|BELOW|met" "$LOGS/bench_kernels.log" 2>/dev/null | head -40
  grep -HE "attention" "$LOGS"/bench_attention_*.log 2>/dev/null | head -30
  grep -hE "attention|^peer" "$LOGS/peer_attention_torch.log" 2>/dev/null | head -10
  tail -n 6 "$LOGS"/bench_engine_8b*.log "$LOGS/peer_hf_8b.log" 2>/dev/null
fi

echo "--- $SUMMARY"
cat "$SUMMARY" 2>/dev/null
exit $status
