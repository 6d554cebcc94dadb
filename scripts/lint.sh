#!/usr/bin/env bash
# lint.sh format: every C++ file is clang-formatted (.clang-format).
# lint.sh tidy:   clang-tidy (.clang-tidy) over our sources, using build/compile_commands.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=(common model kernels parallel kvtransfer worker coordinator launch bench tests)
files() { find "${DIRS[@]}" -type f \( -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null | sort; }
case "${1:-format}" in
  format)
    bad=()
    while read -r f; do
      clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
    done < <(files)
    if [ ${#bad[@]} -gt 0 ]; then
      echo "not clang-formatted (run: clang-format -i FILE):"; printf '  %s\n' "${bad[@]}"; exit 1
    fi
    echo "clang-format: ok";;
  tidy)
    mapfile -t srcs < <(files | grep -E '\.cc$' | grep -v '^tests/' | grep -v '/fuzz/')
    log=$(mktemp)
    # clang-tidy's own exit status is ignored: findings are read from its output.
    printf '%s\n' "${srcs[@]}" | xargs -P "${JOBS:-$(nproc)}" -n 4 \
      clang-tidy -p build --quiet --extra-arg=-Wno-unknown-warning-option >"$log" 2>&1 || true
    if grep -q -E '(error|warning): ' "$log"; then
      grep -E -A3 '(error|warning): ' "$log"; echo "clang-tidy: findings above"; rm -f "$log"; exit 1
    fi
    rm -f "$log"
    echo "clang-tidy: ok";;
  *) echo "usage: lint.sh format|tidy"; exit 2;;
esac
