#!/usr/bin/env bash
# Builds tessera's libFuzzer targets with clang (ASan + UBSan) and runs each for SECONDS seconds
# (default 30). Exits non-zero if any target finds a crash, a sanitizer error, a leak or a timeout;
# the reproducer is left in $BUILD_DIR/artifacts/. Needs clang and libclang-rt-14-dev
# (scripts/install-deps.sh). The CMake build (g++) does not build these targets.
#
#   scripts/run-fuzz.sh [SECONDS]        env: CXX (clang++), BUILD_DIR (build-fuzz), JOBS (2)
#   reproduce:  build-fuzz/config_fuzz build-fuzz/artifacts/config_fuzz-crash-...
set -euo pipefail

SECONDS_PER_TARGET="${1:-30}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-fuzz}"
JOBS="${JOBS:-2}"
# Each target is tests/<folder>/fuzz/<name>.cc, with seeds in tests/<folder>/fuzz/corpus/<name
# without _fuzz> and an optional dictionary tests/<folder>/fuzz/*.dict.
TARGETS=(model/safetensors_header_fuzz model/config_fuzz model/structured_output_fuzz
  kvtransfer/ucx_wire_fuzz worker/replica_wire_fuzz coordinator/chat_output_fuzz)

if [ -z "${CXX:-}" ]; then
  if command -v clang++ >/dev/null; then CXX=clang++; else CXX=clang++-14; fi
fi
if ! command -v "$CXX" >/dev/null; then
  echo "run-fuzz: $CXX not found; run scripts/install-deps.sh" >&2
  exit 2
fi

SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CXXFLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer $SANITIZE -I"$ROOT")
# shellcheck disable=SC2207
ABSL_LIBS=($(pkg-config --libs absl_status absl_statusor absl_strings absl_str_format absl_time \
  absl_synchronization absl_hash absl_raw_hash_set))
# The tokenizer's text helpers (model/tokenizer_text.cc) that the grammar matcher shares need these.
# shellcheck disable=SC2207
TEXT_LIBS=($(pkg-config --libs libutf8proc libpcre2-8))

mkdir -p "$BUILD_DIR/obj" "$BUILD_DIR/artifacts"

# The library code under test, instrumented for coverage, in an archive so that only the objects
# the targets need are linked.
SOURCES=("$ROOT"/model/*.cc "$ROOT"/common/*.cc "$ROOT"/kvtransfer/ucx/wire.cc
  "$ROOT"/worker/replica_wire.cc "$ROOT"/coordinator/api/tool_calls.cc
  "$ROOT"/coordinator/api/reasoning.cc)
OBJECTS=()
pids=()
for src in "${SOURCES[@]}"; do
  rel="${src#"$ROOT"/}"
  obj="$BUILD_DIR/obj/${rel//\//_}.o"
  OBJECTS+=("$obj")
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$0" -nt "$obj" ] ||
     [ -n "$(find "$ROOT/model" "$ROOT/common" "$ROOT/kvtransfer" "$ROOT/worker" \
       "$ROOT/coordinator/api" -name '*.h' \
       -newer "$obj" -print -quit)" ]; then
    "$CXX" "${CXXFLAGS[@]}" -fsanitize=fuzzer-no-link -c "$src" -o "$obj" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
rm -f "$BUILD_DIR/libmodel_fuzz.a"
ar rcs "$BUILD_DIR/libmodel_fuzz.a" "${OBJECTS[@]}"

for entry in "${TARGETS[@]}"; do
  target="${entry#*/}"
  echo "run-fuzz: building $target"
  "$CXX" "${CXXFLAGS[@]}" -fsanitize=fuzzer "$ROOT/tests/${entry%%/*}/fuzz/$target.cc" \
    "$BUILD_DIR/libmodel_fuzz.a" "${ABSL_LIBS[@]}" "${TEXT_LIBS[@]}" -lpthread \
    -o "$BUILD_DIR/$target"
done

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

failed=()
for entry in "${TARGETS[@]}"; do
  target="${entry#*/}"
  fuzz_dir="$ROOT/tests/${entry%%/*}/fuzz"
  seeds="$fuzz_dir/corpus/${target%_fuzz}"
  dict=()
  for d in "$fuzz_dir"/*.dict; do [ -f "$d" ] && dict=(-dict="$d"); done
  work="$BUILD_DIR/corpus/$target"  # new inputs go here, not into the committed seeds
  mkdir -p "$work"
  echo "run-fuzz: running $target for ${SECONDS_PER_TARGET}s"
  if ! "$BUILD_DIR/$target" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 "${dict[@]}" -print_final_stats=1 \
      -artifact_prefix="$BUILD_DIR/artifacts/$target-" "$work" "$seeds"; then
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "run-fuzz: FAILED: ${failed[*]} (reproducers in $BUILD_DIR/artifacts/)" >&2
  exit 1
fi
echo "run-fuzz: all targets ran ${SECONDS_PER_TARGET}s without a failure"
