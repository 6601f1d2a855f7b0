#!/bin/bash
# Builds the libFuzzer targets of fuzz/ with clang (ASan + UBSan) in their own build folder and runs
# each for a short time from the committed seed corpus. Exits non-zero when a target crashes, trips
# a sanitizer, or lets an exception other than mlkv::Error escape.
#   .ci/fuzz.sh                              # ~25 s per target (CI)
#   MLKV_FUZZ_SECONDS=300 .ci/fuzz.sh
#   MLKV_FUZZ_RUNS=10000000 .ci/fuzz.sh      # a number of executions per target instead of a time
#                                            # (the `slow` ctest fuzz_long; fuzz/README.md)
#   MLKV_FUZZ_TARGETS="safetensors_fuzz hf_config_fuzz" .ci/fuzz.sh   # only these
#   MLKV_FUZZ_BUILD=/tmp/bf .ci/fuzz.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${MLKV_FUZZ_BUILD:-$ROOT/build-fuzz}
SECONDS_EACH=${MLKV_FUZZ_SECONDS:-25}
RUNS=${MLKV_FUZZ_RUNS:-}
TARGETS=${MLKV_FUZZ_TARGETS:-"tokenizer_json_fuzz token_shard_fuzz text_encode_fuzz tokenizer_bin_fuzz
  safetensors_fuzz hf_config_fuzz llama2c_fuzz openai_request_fuzz http_request_fuzz"}
export MLKV_SHARED_DIR=${MLKV_SHARED_DIR:-$ROOT/../shared}

mkdir -p "$BUILD"
GEN=()
command -v ninja > /dev/null && GEN=(-G Ninja)
CC=clang CXX=clang++ cmake -S "$ROOT/fuzz" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log"; exit 1; }
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "$(nproc)" --target $TARGETS

status=0
for target in $TARGETS; do
  name=${target%_fuzz}
  work="$BUILD/corpus/$name"  # grows between runs; the seeds stay read-only in fuzz/corpus
  mkdir -p "$work" "$BUILD/artifacts"
  if [ -n "$RUNS" ]; then
    limit=(-runs="$RUNS")
    what="$RUNS executions"
  else
    limit=(-max_total_time="$SECONDS_EACH")
    what="${SECONDS_EACH}s"
  fi
  args=("${limit[@]}" -timeout=20 -rss_limit_mb=2048 -max_len=8192
        -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$name-")
  [ -f "$ROOT/fuzz/$name.dict" ] && args+=(-dict="$ROOT/fuzz/$name.dict")
  echo "=== $target: $what"
  if ! "$BUILD/$target" "${args[@]}" "$work" "$ROOT/fuzz/corpus/$name" > "$BUILD/$name.log" 2>&1; then
    tail -60 "$BUILD/$name.log"
    echo "FAIL: $target (crash input saved under $BUILD/artifacts/)"
    status=1
  else
    grep -E "stat::number_of_executed_units|Done" "$BUILD/$name.log" | tail -2
  fi
done
[ $status -eq 0 ] && echo "fuzz: all targets ran clean"
exit $status
