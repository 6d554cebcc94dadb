#!/usr/bin/env bash
# Drives openai_client_test.py against fake_openai_server: starts the server on a free port, runs
# the python `openai` client test against it, stops the server. Exit 77 (ctest: skipped) when
# python3 has no `openai` package (pip install openai).
# Usage: run_openai_client_test.sh <fake_openai_server binary> <openai_client_test.py>
set -euo pipefail
server_bin=$1
client_test=$2

if ! python3 -c 'import openai' >/dev/null 2>&1; then
  echo "SKIP: python3 package 'openai' is not installed (pip install openai)"
  exit 77
fi

# The server reads its stdin until EOF: hold a pipe open to it and close it to stop the server.
coproc SERVER { exec "$server_bin" --token-delay-ms 1; }
server_pid=$SERVER_PID
exec {server_in}>&"${SERVER[1]}"
cleanup() {
  exec {server_in}>&- || true
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap cleanup EXIT

port=""
if read -r -t 30 word value <&"${SERVER[0]}" && [ "$word" = "PORT" ]; then
  port=$value
fi
if [ -z "$port" ]; then
  echo "FAIL: fake_openai_server did not print its port"
  exit 1
fi
python3 "$client_test" --base-url "http://127.0.0.1:${port}/v1"
