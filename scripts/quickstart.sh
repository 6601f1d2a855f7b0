#!/usr/bin/env bash
# The main job on the shipped data, end to end, in a few minutes on 2 cores: the MLKV recipe at toy
# scale. Trains a tokenizer and a small MHA model on TinyStories, converts it to MLKV (2 KV layers x 1
# KV head: 8x smaller KV cache), uptrains it, and compares the two on held-out perplexity, KV-cache
# size and generated text. Everything lands in runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh release
MLKV=build/bin/mlkv
DATA="${MLKV_DATA:-../shared/data}"
OUT=runs/quickstart
STEPS="${QUICKSTART_STEPS:-300}"
mkdir -p "$OUT"
export MLKV_PROGRESS="${MLKV_PROGRESS:-1}"

echo "== 1. tokenizer (SentencePiece BPE, 4096 pieces) and token shards, 5% held out"
[ -f "$OUT/tok/tokenizer.model" ] || $MLKV tokenizer train --vocab 4096 -o "$OUT/tok" "$DATA/text/tinystories_lower.txt"
[ -f "$OUT/shards/meta.json" ] || $MLKV tokenize -t "$OUT/tok" -o "$OUT/shards" --val-fraction 0.05 \
  --txt-docs blank "$DATA/text/tinystories_lower.txt"

echo "== 2. train an MHA model from scratch (GPT-NeoX: 4 layers, d_model 128, 4 heads)"
$MLKV train --data "$OUT/shards" --out "$OUT/mha" --preset tiny-neox --layers 4 --embd 128 --heads 4 \
  --model-ctx 128 --ctx 128 --batch 16 --steps "$STEPS" --lr 2e-3 --warmup-ratio 0.05 --eval-every 100 --overwrite

echo "== 3. convert to MLKV: 2 KV layers x 1 KV head (owners 0 and 2)"
$MLKV convert "$OUT/mha" "$OUT/mlkv" --kv-layers 2 --kv-heads 1 --force

echo "== 4. uptrain the converted model"
$MLKV train --init "$OUT/mlkv" --data "$OUT/shards" --out "$OUT/mlkv-up" --ctx 128 --batch 16 \
  --steps $((STEPS / 3)) --lr 1e-3 --warmup-ratio 0.2 --overwrite

echo "== 5. compare: held-out perplexity and KV cache (context 128, batch 64)"
for m in mha mlkv mlkv-up; do
  $MLKV eval "$OUT/$m" --shard "$OUT/shards/val_000.bin" --ctx 128 --json "$OUT/eval-$m.json" >/dev/null
  ppl=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print("%.3f" % next(iter(r.values()))["token_perplexity"])' "$OUT/eval-$m.json")
  kv=$($MLKV info "$OUT/$m" --ctx 128 --batch 64 --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["kv_cache_bytes"], j["kv_bytes_per_token"], j["scheme"])')
  read -r bytes per_tok scheme <<<"$kv"
  printf '%-8s val perplexity %8s   KV cache %9s bytes (%5s per token)  %s\n' "$m" "$ppl" "$bytes" "$per_tok" "$scheme"
done

echo "== 6. generate with the MLKV model"
$MLKV generate "$OUT/mlkv-up" --prompt "once upon a time" -n 60 --temp 0.7 --top-p 0.9 --seed 1
