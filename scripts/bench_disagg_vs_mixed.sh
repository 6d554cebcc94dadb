#!/usr/bin/env bash
# Disaggregated against mixed serving with the same number of worker processes (2, one CPU thread
# each): goodput under an SLO over a rate sweep, measured with `tessera bench` against
# `tessera serve` (docs/benchmarks.md, "Disaggregated against mixed serving").
#
#   bash scripts/bench_disagg_vs_mixed.sh [OUT_DIR]      # default: build/bench-disagg
#
# The model: a random Llama of 8 layers, hidden 512, 2 KV heads (16 KiB of KV per token), so that
# a 512-token prefill (~0.45 s) and a decode step (~10 ms) are far apart, as on real hardware.
set -euo pipefail
cd "$(dirname "$0")/.."
TESSERA=${TESSERA:-build/launch/tessera}
OUT=${1:-build/bench-disagg}
RATES=${RATES:-1,2,3,4}
DURATION=${DURATION:-20}
SLO=${SLO:-"ttft:1000 tpot:25"}
mkdir -p "$OUT"
MODEL="$OUT/model"
[ -f "$MODEL/config.json" ] || "$TESSERA" make-model --out "$MODEL" --preset tiny --vocab-size 4096 \
  --hidden-size 512 --intermediate-size 1536 --num-layers 8 --num-heads 8 --num-kv-heads 2 \
  --max-position-embeddings 2048 --seed 3
run() {  # NAME SERVE-ARGS...
  local name=$1; shift
  local work="$OUT/$name-work"
  rm -rf "$work"
  "$TESSERA" serve "$MODEL" --served-model-name bm --port 0 --grpc-port 0 --threads 1 \
    --kv-cache-gib 0.25 --work-dir "$work" "$@" > "$OUT/$name-serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do grep -q "tessera serve: ready" "$OUT/$name-serve.log" && break; sleep 0.2; done
  local port
  port=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['http'])" "$work/coordinator-ports.json")
  # shellcheck disable=SC2086
  "$TESSERA" bench --port "$port" --dataset-name random --random-input-len 512 \
    --random-output-len 64 --random-range-ratio 0.5 --vocab-size 4000 --request-rate "$RATES" \
    --duration "$DURATION" --goodput $SLO --seed 1 --disable-tqdm --save-result \
    --result-file "$OUT/$name.json" --plot "$OUT/$name.svg" | tee "$OUT/$name.txt"
  kill -INT "$pid"; wait "$pid" || true
}
run mixed --num-replicas 2
run disaggregated --num-prefill 1 --num-decode 1 --kv-transport grpc
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| rate (req/s) | mixed goodput | disagg goodput | mixed p99 TTFT (ms) | disagg p99 TTFT (ms) | mixed p99 TPOT (ms) | disagg p99 TPOT (ms) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
m = json.load(open(f"{out}/mixed.json")); d = json.load(open(f"{out}/disaggregated.json"))
runs = lambda j: j["runs"] if "runs" in j else j
for a, b in zip(runs(m), runs(d)):
    g = lambda r, k: r.get(k, r.get("metrics", {}).get(k))
    print(f"| {g(a,'request_rate')} | {g(a,'request_goodput'):.2f} | {g(b,'request_goodput'):.2f} | "
          f"{g(a,'p99_ttft_ms'):.0f} | {g(b,'p99_ttft_ms'):.0f} | {g(a,'p99_tpot_ms'):.1f} | {g(b,'p99_tpot_ms'):.1f} |")
PY
