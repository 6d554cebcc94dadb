#!/usr/bin/env bash
# The README's first command: installs what is needed, builds, and runs the main job on the
# built-in demo — a tiny random Llama checkpoint: generation for three prompts at once, then
# `tessera serve` (a coordinator, a prefill and a decode replica on this machine: disaggregated
# serving, the KV of every prompt moving between them over the gRPC KV transport) answering real
# requests through the OpenAI HTTP API and the KServe v2 gRPC API, then a clean shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$(cd "${TESSERA_PYENV:-.pyenv}" && pwd)/bin:$PATH"
bash scripts/build.sh
DEMO_DIR=${DEMO_DIR:-build/demo-model}
./build/launch/tessera make-model --out "$DEMO_DIR" --preset tiny --seed 7 --init-std 0.5
echo "generating (greedy, 3 prompts in one batch):"
./build/launch/tessera generate --model "$DEMO_DIR" --max-tokens 12 \
  --prompt-ids 1,15,27,300 --prompt-ids 1,2 --prompt-ids 1,400,33,8,91,120,7
echo "sampling (temperature 0.8, top-p 0.9, seed 42), JSON output:"
./build/launch/tessera generate --model "$DEMO_DIR" --max-tokens 8 --temperature 0.8 \
  --top-p 0.9 --seed 42 --output json --prompt-ids 1,15,27,300

echo "serving: tessera serve (coordinator + a prefill and a decode replica), then requests through both APIs"
WORK_DIR=$(mktemp -d)
./build/launch/tessera serve --port "${HTTP_PORT:-8000}" --grpc-port "${GRPC_PORT:-8001}" \
  --num-prefill 1 --num-decode 1 --kv-transport grpc --threads 1 --kv-cache-gib 0.25 \
  --work-dir "$WORK_DIR" &
SERVE_PID=$!
trap 'kill -INT $SERVE_PID 2>/dev/null || true; wait $SERVE_PID 2>/dev/null || true; rm -rf "$WORK_DIR"' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:${HTTP_PORT:-8000}/metrics" | grep -q '^tessera_replicas{role="decode"} 1' && break
  kill -0 $SERVE_PID 2>/dev/null || { echo "tessera serve failed"; exit 1; }
  sleep 0.2
done
curl -s "http://127.0.0.1:${HTTP_PORT:-8000}/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tessera-demo", "prompt": "Hello, my name is", "max_tokens": 8}'
echo
python3 scripts/demo_requests.py "${HTTP_PORT:-8000}" "${GRPC_PORT:-8001}" tessera-demo
sleep 1  # one heartbeat, so that the replicas' KV counters reach the coordinator
curl -s "http://127.0.0.1:${HTTP_PORT:-8000}/metrics" |
  grep -E '^(vllm:(request_success|generation_tokens)_total|tessera_disaggregated_requests_total|tessera_kv_transfer_bytes_total)'
kill -INT $SERVE_PID
wait $SERVE_PID
trap 'rm -rf "$WORK_DIR"' EXIT
echo "demo done"
