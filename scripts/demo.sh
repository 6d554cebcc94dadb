#!/usr/bin/env bash
# The README's first command: installs what is needed, builds, and runs the main job on the
# built-in demo — a tiny random Llama checkpoint, then generation for three prompts at once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
DEMO_DIR=${DEMO_DIR:-build/demo-model}
./build/launch/tessera make-model --out "$DEMO_DIR" --preset tiny --seed 7 --init-std 0.5
echo "generating (greedy, 3 prompts in one batch):"
./build/launch/tessera generate --model "$DEMO_DIR" --max-tokens 12 \
  --prompt-ids 1,15,27,300 --prompt-ids 1,2 --prompt-ids 1,400,33,8,91,120,7
echo "sampling (temperature 0.8, top-p 0.9, seed 42), JSON output:"
./build/launch/tessera generate --model "$DEMO_DIR" --max-tokens 8 --temperature 0.8 \
  --top-p 0.9 --seed 42 --output json --prompt-ids 1,15,27,300
