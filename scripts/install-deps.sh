#!/usr/bin/env bash
# Installs every build and test dependency of tessera from Debian's packages (and PyPI for the
# Python test clients). Idempotent: packages already present are left alone, and apt-get update
# runs only when something is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(
  build-essential cmake ninja-build pkg-config git ca-certificates python3 python3-pip python3-venv curl procps
  libabsl-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libopenmpi-dev openmpi-bin
  libgloo-dev
  libucx-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libopenblas-dev
  libcpp-httplib-dev
  nlohmann-json3-dev libyaml-cpp-dev libcli11-dev libpcre2-dev libxxhash-dev libutf8proc-dev
  clang-format clang-tidy clang libclang-rt-14-dev
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all Debian packages present"
fi

# The real clients the end-to-end tests drive (and the demo uses), in a virtual environment so
# that the system Python stays untouched (Debian 12 marks it externally managed). Scripts put
# .pyenv/bin first on PATH. Installed only when an import fails.
# TESSERA_SKIP_PYTHON=1 skips them (the Dockerfile's build stage needs none).
if [ "${TESSERA_SKIP_PYTHON:-0}" = 1 ]; then
  echo "install-deps: Python test clients skipped (TESSERA_SKIP_PYTHON=1)"
  exit 0
fi
PYENV=${TESSERA_PYENV:-.pyenv}
if [ ! -x "$PYENV/bin/python3" ]; then
  python3 -m venv "$PYENV"
fi
if ! "$PYENV/bin/python3" -c 'import tritonclient.grpc, openai, numpy, prometheus_client, yaml' \
    >/dev/null 2>&1; then
  echo "install-deps: installing the Python test clients into $PYENV"
  "$PYENV/bin/python3" -m pip install --quiet --upgrade pip
  # (perf_analyzer is not here: PyPI's perf-analyzer is an empty placeholder, 0.1.0.)
  "$PYENV/bin/python3" -m pip install --quiet 'tritonclient[grpc]' openai numpy prometheus-client \
    pyyaml
else
  echo "install-deps: Python test clients present in $PYENV"
fi
