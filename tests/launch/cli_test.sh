#!/usr/bin/env bash
# End-to-end checks of the tessera binary: make-model writes a checkpoint that generate runs, the
# output is deterministic, batched prompts equal the same prompts alone, and bad input fails with
# a message that names the problem (exit 1; exit 2 for usage errors, as argparse's), never a crash.
set -uo pipefail
TESSERA=$1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

expect_error() {  # expect_error "text in stderr" args...
  local text=$1; shift
  "$TESSERA" "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  [ $rc -eq 1 ] || fail "expected exit 1 from '$*', got $rc: $(cat "$WORK/err")"
  grep -qF -- "$text" "$WORK/err" || fail "expected '$text' in the error of '$*', got: $(cat "$WORK/err")"
}

expect_usage_error() {  # a usage error (CLI11's): exit 2, as argparse's
  local want="$1"
  shift
  "$TESSERA" "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  [ $rc -eq 2 ] || fail "expected exit 2 from '$*', got $rc: $(cat "$WORK/err")"
  grep -qF -- "$want" "$WORK/err" || fail "'$*': no '$want' in: $(cat "$WORK/err")"
}

"$TESSERA" make-model --out "$WORK/m" --preset tiny --seed 3 --init-std 0.5 >/dev/null || fail "make-model"
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [ -s "$WORK/m/$f" ] || fail "make-model did not write $f"
done

"$TESSERA" generate --model "$WORK/m" --max-tokens 6 --prompt-ids 1,2,3 --prompt-ids 4,5 \
  --ignore-eos >"$WORK/a" 2>/dev/null || fail "generate"
[ "$(wc -l <"$WORK/a")" -eq 2 ] || fail "expected 2 lines, got: $(cat "$WORK/a")"
grep -qE '^[0-9]+(,[0-9]+){5}$' "$WORK/a" || fail "expected 6 comma-separated ids per line: $(cat "$WORK/a")"
"$TESSERA" generate --model "$WORK/m" --max-tokens 6 --prompt-ids 1,2,3 --prompt-ids 4,5 \
  --ignore-eos >"$WORK/b" 2>/dev/null || fail "generate (again)"
cmp -s "$WORK/a" "$WORK/b" || fail "greedy output differs between runs"
"$TESSERA" generate --model "$WORK/m" --max-tokens 6 --prompt-ids 4,5 --ignore-eos \
  >"$WORK/c" 2>/dev/null || fail "generate (alone)"
[ "$(sed -n 2p "$WORK/a")" = "$(cat "$WORK/c")" ] || fail "batched output differs from alone"

# Tensor and pipeline parallelism give the same tokens: ranks as threads, and under mpirun.
"$TESSERA" generate --model "$WORK/m" --max-tokens 6 --prompt-ids 1,2,3 --prompt-ids 4,5 \
  --ignore-eos -tp 2 -pp 2 >"$WORK/tp" 2>"$WORK/err" || fail "generate -tp 2 -pp 2: $(cat "$WORK/err")"
cmp -s "$WORK/a" "$WORK/tp" || fail "-tp 2 -pp 2 (threads) differs: $(cat "$WORK/tp")"
if command -v mpirun >/dev/null; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 4 \
    --mca btl self,vader,tcp --mca btl_tcp_if_include lo --mca plm_rsh_agent false \
    "$TESSERA" generate --model "$WORK/m" --max-tokens 6 --prompt-ids 1,2,3 --prompt-ids 4,5 \
    --ignore-eos -tp 2 -pp 2 >"$WORK/mpi" 2>"$WORK/err" || fail "mpirun -np 4: $(cat "$WORK/err")"
  cmp -s "$WORK/a" "$WORK/mpi" || fail "mpirun -tp 2 -pp 2 differs: $(cat "$WORK/mpi")"
fi
# Two processes ranked as LeaderWorkerSet pods (Gloo) make a pipeline of two stages with two steps
# in flight: a 26-token prompt in chunks of 8 (each chunk follows the one before into the
# pipeline) and two short prompts give the tokens of one process.
PIPE=(generate --model "$WORK/m" --max-tokens 6 --prompt-ids "$(seq -s, 5 30)" --prompt-ids "1,2,3"
  --prompt-ids "4,5" --ignore-eos --max-num-batched-tokens 8 --max-num-seqs 4)
if [ "${TESSERA_TEST_GLOO:-0}" = 1 ]; then
  "$TESSERA" "${PIPE[@]}" >"$WORK/pipe1" 2>"$WORK/err" || fail "chunked generate: $(cat "$WORK/err")"
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  LWS_WORKER_INDEX=1 LWS_GROUP_SIZE=2 LWS_LEADER_ADDRESS=127.0.0.1 timeout 120 \
    "$TESSERA" "${PIPE[@]}" -pp 2 --pp-steps-in-flight 2 --rendezvous-port "$PORT" \
    >"$WORK/pipe_r1" 2>&1 &
  RANK1=$!
  LWS_WORKER_INDEX=0 LWS_GROUP_SIZE=2 LWS_LEADER_ADDRESS=127.0.0.1 timeout 120 \
    "$TESSERA" "${PIPE[@]}" -pp 2 --pp-steps-in-flight 2 --rendezvous-port "$PORT" \
    >"$WORK/pipe2" 2>"$WORK/err" || fail "gloo -pp 2 rank 0: $(cat "$WORK/err")"
  wait "$RANK1" || fail "gloo -pp 2 rank 1: $(cat "$WORK/pipe_r1")"
  cmp -s "$WORK/pipe1" "$WORK/pipe2" || fail "gloo -pp 2 with steps in flight differs: $(cat "$WORK/pipe2")"
fi
expect_error "does not divide the model's 4 attention heads" generate --model "$WORK/m" -tp 3 --prompt-ids 1

"$TESSERA" generate --model "$WORK/m" --max-tokens 5 --temperature 0.9 --top-k 50 --top-p 0.9 \
  --seed 9 --output json --prompt-ids 1,2 >"$WORK/s1" 2>/dev/null || fail "sampled generate"
"$TESSERA" generate --model "$WORK/m" --max-tokens 5 --temperature 0.9 --top-k 50 --top-p 0.9 \
  --seed 9 --output json --prompt-ids 1,2 >"$WORK/s2" 2>/dev/null || fail "sampled generate (again)"
cmp -s "$WORK/s1" "$WORK/s2" || fail "seeded sampling is not reproducible"
# Under TP the ranks draw from their shards' top-k candidates (worker/vocab_parallel.h): the same
# tokens as one rank drawing from the whole vocabulary.
"$TESSERA" generate --model "$WORK/m" --max-tokens 5 --temperature 0.9 --top-k 50 --top-p 0.9 \
  --seed 9 --output json --prompt-ids 1,2 -tp 2 >"$WORK/s3" 2>"$WORK/err" ||
  fail "sampled generate -tp 2: $(cat "$WORK/err")"
python3 - "$WORK/s1" "$WORK/s3" <<'PY' || fail "sampled -tp 2 differs: $(cat "$WORK/s3")"
import json, sys
ids = [[json.loads(line)["token_ids"] for line in open(p) if line.strip()] for p in sys.argv[1:]]
assert ids[0] == ids[1], ids
PY
grep -q '"finish_reason"' "$WORK/s1" || fail "json output lacks finish_reason"

expect_error "is not a token id" generate --model "$WORK/m" --prompt-ids 1,x,3
expect_error "outside the vocabulary" generate --model "$WORK/m" --prompt-ids 1,99999
expect_error "config.json" generate --model "$WORK/missing" --prompt-ids 1
expect_error "exceeds max_model_len" generate --model "$WORK/m" --max-model-len 8 --max-tokens 8 --prompt-ids 1,2
expect_error "--dtype" generate --model "$WORK/m" --dtype int8 --prompt-ids 1
expect_error "--preset" make-model --out "$WORK/x" --preset huge
echo '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}' >"$WORK/m/config.json"
expect_error "GPT2LMHeadModel" generate --model "$WORK/m" --prompt-ids 1
# The benchmarks run and print what they promise (figures are not checked: they are not tests).
"$TESSERA" bench-kernels --preset tiny --batch-sizes 1,4 --contexts 32 --prefill-tokens 16 \
  --copy-gib 0.01 --gemm-size 64 --min-seconds 0 --repeats 1 --json "$WORK/kernels.json" \
  >"$WORK/kernels.txt" 2>"$WORK/err" || fail "bench-kernels: $(cat "$WORK/err")"
grep -q "^peak copy: " "$WORK/kernels.txt" || fail "bench-kernels printed no copy peak"
python3 - "$WORK/kernels.json" <<'PY' || fail "bench-kernels --json: $(cat "$WORK/kernels.json")"
import json, sys
report = json.load(open(sys.argv[1]))
ops = {r["op"] for r in report["results"]}
want = {"embedding", "add_rms_norm", "rope", "swiglu", "kv_write", "matmul", "decode_attention",
        "prefill_attention", "sample_greedy", "sample_top_p", "apply_penalties"}
assert ops == want, ops
assert report["peaks"]["gemm_flops_per_second"] > 0 and report["backend"] == "cpu"
assert all(r["seconds"] > 0 and r["bytes"] > 0 for r in report["results"])
PY
# scripts/peer_attention_torch.py --compare reads this table: its parser must find the attention rows.
python3 - "$WORK/kernels.txt" "$(dirname "$0")/../../scripts" <<'PY' || fail "bench-kernels' attention rows no longer parse: $(cat "$WORK/kernels.txt")"
import sys
sys.path.insert(0, sys.argv[2])
from peer_attention_torch import tessera_figures
figures = tessera_figures(sys.argv[1])
want = {("decode_attention", "batch=1 context=32"), ("decode_attention", "batch=4 context=32"),
        ("prefill_attention", "tokens=16 causal")}
assert set(figures) == want, figures
# (tiny shapes: the table's rounding can print 0.0)
assert all(gbps >= 0 and tflops >= 0 for gbps, tflops in figures.values()), figures
PY
expect_error "unknown op 'softmax'" bench-kernels --preset tiny --ops softmax
# A flag value outside its set, or a flag that does not exist, is a usage error: exit 2 (as
# argparse's), before anything runs.
expect_usage_error "fast not in {auto,simt,tensor-cores}" \
  bench-kernels --preset tiny --attention-kernel fast
expect_usage_error "--no-such-flag" generate --model "$WORK/m" --prompt-ids 1,2 --no-such-flag
expect_usage_error "--log-level" --log-level loud generate --model "$WORK/m" --prompt-ids 1,2
expect_error "backend 'tpu' is not cpu or cuda" bench-kernels --preset tiny --backend tpu
expect_error "--tool-call-parser 'qwen' is not one of auto, none, hermes" \
  coordinator --model "$WORK/m" --tool-call-parser qwen --check
expect_error "--reasoning-parser 'r1' is not one of auto, none, qwen3" \
  coordinator --model "$WORK/m" --reasoning-parser r1 --check
"$TESSERA" bench-engine --preset tiny --batch-sizes 1,2 --prompt-len 8 --decode-steps 2 \
  --copy-gib 0.01 --gemm-size 64 >"$WORK/engine.txt" 2>"$WORK/err" ||
  fail "bench-engine: $(cat "$WORK/err")"
# scripts/peer_decode_hf.py --compare reads this table: its parser must still find both rows.
python3 - "$WORK/engine.txt" "$(dirname "$0")/../../scripts" <<'PY' || fail "bench-engine's table no longer parses: $(cat "$WORK/engine.txt")"
import sys
sys.path.insert(0, sys.argv[2])
from peer_decode_hf import tessera_rows
rows = tessera_rows(sys.argv[1])
assert sorted(rows) == [1, 2] and all(p > 0 and d > 0 for p, d in rows.values()), rows
PY
echo "cli_test: all passed"
