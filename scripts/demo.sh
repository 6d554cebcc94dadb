#!/usr/bin/env bash
# The README's first command: installs what is needed, builds, and runs the main job on the
# built-in demo — a tiny random Llama checkpoint: generation for three prompts at once, then
# `tessera launch` of the demo topology (a coordinator, a prefill replica of TP 2 and a decode
# replica of TP 1 on this machine: disaggregated serving, the KV of every prompt moving between
# them over the gRPC KV transport) answering real requests through the OpenAI HTTP API and the
# KServe v2 gRPC API, `tessera bench` against it for 30 s (its table), then a clean shutdown.
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

echo "launching the demo topology (launch/topologies/demo.yaml): a coordinator, a prefill replica"
echo "of TP 2 and a decode replica of TP 1 on this machine, KV moving between them over gRPC"
WORK_DIR=$(mktemp -d)
./build/launch/tessera launch launch/topologies/demo.yaml --work-dir "$WORK_DIR" &
LAUNCH_PID=$!
trap 'kill -INT $LAUNCH_PID 2>/dev/null || true; wait $LAUNCH_PID 2>/dev/null || true; rm -rf "$WORK_DIR"' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:8000/metrics" | grep -q '^tessera_replicas{role="decode"} 1' && break
  kill -0 $LAUNCH_PID 2>/dev/null || { echo "tessera launch failed"; exit 1; }
  sleep 0.2
done
curl -s "http://127.0.0.1:8000/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tessera-demo", "prompt": "Hello, my name is", "max_tokens": 8}'
echo
python3 scripts/demo_requests.py 8000 8001 tessera-demo
echo "tessera bench: 30 s of Poisson arrivals at 4 requests/s (prompts of 64-192 tokens, 16-48 out)"
./build/launch/tessera bench --backend openai --port 8000 --dataset-name random \
  --random-input-len 128 --random-output-len 32 --random-range-ratio 0.5 --request-rate 4 \
  --duration 30 --goodput ttft:500 tpot:50 --save-result --result-file "$WORK_DIR/bench.json"
kill -INT $LAUNCH_PID
wait $LAUNCH_PID
trap 'rm -rf "$WORK_DIR"' EXIT
echo "demo done"
