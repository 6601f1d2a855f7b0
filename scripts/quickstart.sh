#!/usr/bin/env bash
# The main job on the shipped data: build, then run the engine on the real small model in
# ../shared/data/models (a Llama-architecture llama2.c checkpoint): describe it, generate text, and
# show what MLKV sharing would do to its KV cache.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh release
MLKV=build/bin/mlkv
DATA="${MLKV_DATA:-../shared/data}"
MODEL="$DATA/models/aidreams260K/aidreams260K.bin"
TOK="$DATA/models/aidreams260K/tok512.bin"

echo "== the model"
$MLKV info "$MODEL"
echo
echo "== greedy generation"
$MLKV generate "$MODEL" --tokenizer "$TOK" --bos --prompt "Once upon a time" -n 80
echo
echo "== sampled generation, three prompts decoded together"
$MLKV generate "$MODEL" --tokenizer "$TOK" --bos --prompt "The moon" --prompt "In the garden" \
  --prompt "A little robot" -n 48 --temp 0.8 --top-p 0.95 --seed 7
echo
echo "== speed of this model"
$MLKV bench "$MODEL" --prompt 64 --gen 48 --reps 3 --no-bandwidth
