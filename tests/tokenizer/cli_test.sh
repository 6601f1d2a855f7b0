#!/bin/bash
# End-to-end test of the text commands of the mlkv binary:
#   cli_test.sh MLKV_BINARY SHARED_DIR
# encode | decode reproduces stdin byte for byte, tokenize writes shards, train writes a model that
# encode can use, and bad input exits 1 with "mlkv: error:".
set -euo pipefail
MLKV=$1
DATA=$2/data
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ ! -d "$DATA/tokenizers" ]; then echo "shared data missing: skipped"; exit 0; fi

fail() { echo "FAIL: $*"; exit 1; }
printf 'Hello  world\n\ttabs, café 日本 😀 <|endoftext|> end\n' > "$TMP/in.txt"
for tok in "$DATA/tokenizers/gpt-neox-20b" "$DATA/tokenizers/gpt2" "$DATA/tokenizers/llama2" \
           "$DATA/models/aidreams260K"; do
  "$MLKV" tokenizer encode -t "$tok" < "$TMP/in.txt" > "$TMP/ids.txt"
  "$MLKV" tokenizer decode -t "$tok" < "$TMP/ids.txt" > "$TMP/out.txt"
  # (<|endoftext|> is a special token for GPT-2 / GPT-NeoX and plain text for the others: either
  # way it decodes back to itself.)
  cmp -s "$TMP/in.txt" "$TMP/out.txt" || fail "round trip through $tok"
done
"$MLKV" tokenizer encode -t "$DATA/tokenizers/gpt2" --json "Hello world" | grep -q '"ids":\[15496,995\]' \
  || fail "encode --json"
[ "$("$MLKV" tokenizer decode -t "$DATA/tokenizers/gpt2" "[15496, 995]")" = "Hello world" ] || fail "decode"

"$MLKV" tokenize -t "$DATA/tokenizers/gpt2" -o "$TMP/shards" --val-fraction 0.1 --no-progress \
  "$DATA/text/tinyshakespeare.txt" 2> "$TMP/log.txt"
[ -s "$TMP/shards/train_000.bin" ] && [ -s "$TMP/shards/val_000.bin" ] && [ -s "$TMP/shards/meta.json" ] \
  || fail "tokenize outputs"
head -c 8 "$TMP/shards/train_000.bin" | grep -q MLKVTOKS || fail "shard magic"

head -c 300000 "$DATA/text/kjv.txt" > "$TMP/kjv.txt"
"$MLKV" tokenizer train --vocab 500 -o "$TMP/trained" "$TMP/kjv.txt" > /dev/null 2>&1 || fail "train"
"$MLKV" tokenizer encode -t "$TMP/trained" < "$TMP/in.txt" > "$TMP/ids2.txt"
"$MLKV" tokenizer decode -t "$TMP/trained" < "$TMP/ids2.txt" > "$TMP/out2.txt"
cmp -s "$TMP/in.txt" "$TMP/out2.txt" || fail "round trip through the trained tokenizer"

set +e
printf '{"model": [' > "$TMP/bad.json"
"$MLKV" tokenizer encode -t "$TMP/bad.json" hi 2> "$TMP/err.txt"
rc=$?
set -e
[ $rc -eq 1 ] || fail "bad tokenizer exit code $rc"
grep -q "mlkv: error: .*bad.json.*not valid JSON" "$TMP/err.txt" || fail "bad tokenizer message: $(cat "$TMP/err.txt")"
echo "tokenizer CLI: all checks passed"
