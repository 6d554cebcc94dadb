#!/usr/bin/env bash
# The README's second command: installs, builds and runs every check and test.
#   layering check, clang-format, the build (warnings are errors), the CTest suite (all labels but
#   perf), clang-tidy, and the fuzzers for a bounded time.
# Environment: JOBS (default: cores), FUZZ_SECONDS (default 30), SKIP_TIDY=1 to skip clang-tidy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$(cd "${TESSERA_PYENV:-.pyenv}" && pwd)/bin:$PATH"

echo "== layering"
python3 scripts/check_layering.py
python3 scripts/check_layering_test.py

echo "== clang-format"
bash scripts/lint.sh format

echo "== build"
bash scripts/build.sh

echo "== tests"
ctest --test-dir build -j "${JOBS:-$(nproc)}" --output-on-failure -LE perf --timeout 600

if [ "${SKIP_TIDY:-0}" != "1" ]; then
  echo "== clang-tidy"
  bash scripts/lint.sh tidy
fi

echo "== fuzz"
bash scripts/run-fuzz.sh "${FUZZ_SECONDS:-30}"
echo "all checks passed"
