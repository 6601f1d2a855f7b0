#!/usr/bin/env bash
# The GPU check: builds mlkv with the CUDA backend, runs the `cuda` tests, compares a real model on
# the CPU and the GPU (log-probs, greedy tokens), and benchmarks decode and training on the GPU;
# prints a summary. Sized for one NVIDIA GPU in under 8 minutes (16 cores for the build).
#
#   scripts/gpu_check.sh                    configure + build build-cuda/ here, then check
#   MLKV_GPU_BIN=DIR scripts/gpu_check.sh   use prebuilt binaries (DIR/mlkv, DIR/mlkv_cuda_tests;
#                                           DIR/lib is added to the library path when present)
#   MLKV_GPU_DATA=DIR                       the aidreams260K model and token shards `ts/` (default:
#                                           ../shared/data, with ts/ made by `mlkv tokenize`)
#   OUT=DIR                                 where the log, summary and results go (gpu_check_out)
#
# Exit status: 0 when every stage passed, 1 otherwise. Stages that cannot run say SKIPPED.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.txt
BENCH=$OUT/bench.jsonl
: >"$LOG"
: >"$SUMMARY"
: >"$BENCH"
T0=$(date +%s)
status=0

say() { echo "$*" | tee -a "$SUMMARY"; }
stage() { echo "== $* ($(($(date +%s) - T0)) s)" | tee -a "$LOG"; }
fail_stage() {
  say "FAIL  $*"
  status=1
}

stage "machine"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  nproc
  grep -m1 'model name' /proc/cpuinfo
} | tee -a "$LOG"
if ! nvidia-smi -L >/dev/null 2>&1; then
  say "SKIPPED: no NVIDIA GPU (nvidia-smi finds none); nothing to check"
  exit 0
fi
say "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"

# ---- build ----
if [ -n "${MLKV_GPU_BIN:-}" ]; then
  BIN=$(cd "$MLKV_GPU_BIN" && pwd)
  TESTBIN=$BIN/mlkv_cuda_tests
  [ -d "$BIN/lib" ] && export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"
  say "build: prebuilt binaries in $BIN"
else
  stage "configure + build (CUDA)"
  BUILD=$ROOT/build-cuda
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if ! cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMLKV_CUDA=ON -DMLKV_MPI=OFF \
      -DMLKV_BUILD_BENCH=OFF >>"$LOG" 2>&1 ||
     ! cmake --build "$BUILD" -j "$(nproc)" --target mlkv mlkv_cuda_tests >>"$LOG" 2>&1; then
    fail_stage "build (see $LOG)"
    tail -30 "$LOG"
    exit 1
  fi
  BIN=$BUILD/bin
  TESTBIN=$BUILD/tests/mlkv_cuda_tests
  say "build: ok ($(($(date +%s) - T0)) s)"
fi
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
MLKV=$BIN/mlkv
export MLKV_PROGRESS=0 OMP_WAIT_POLICY=PASSIVE

# ---- the cuda tests ----
stage "cuda tests"
timeout 200 "$TESTBIN" --gtest_output="xml:$OUT/cuda_tests.xml" >"$OUT/cuda_tests.txt" 2>&1
rc=$?
tail -40 "$OUT/cuda_tests.txt" >>"$LOG"
passed=$(grep -c '^\[       OK \]' "$OUT/cuda_tests.txt")
failed=$(grep -c '^\[  FAILED  \].*(' "$OUT/cuda_tests.txt")
skipped=$(grep -c '^\[  SKIPPED \]' "$OUT/cuda_tests.txt")
if [ $rc -eq 0 ]; then
  say "cuda tests: $passed passed, $skipped skipped, $failed failed"
else
  fail_stage "cuda tests (exit $rc): $passed passed, $skipped skipped, $failed failed"
  grep '^\[  FAILED  \].*(' "$OUT/cuda_tests.txt" | head -40 | tee -a "$SUMMARY"
fi

# The cache attention's scalar kernel (the vectorised one serves aligned rows, i.e. every test).
timeout 60 env MLKV_CUDA_ATTN_SCALAR=1 "$TESTBIN" --gtest_filter='*CudaKvCache*:*CachedEquals*' \
  >"$OUT/cuda_tests_scalar_attn.txt" 2>&1
rc=$?
n_ok=$(grep -c '^\[       OK \]' "$OUT/cuda_tests_scalar_attn.txt")
if [ $rc -eq 0 ]; then
  say "cuda tests, scalar cache attention: $n_ok passed"
else
  fail_stage "cuda tests, scalar cache attention (exit $rc)"
  grep '^\[  FAILED  \].*(' "$OUT/cuda_tests_scalar_attn.txt" | head -20 | tee -a "$SUMMARY"
fi

# ---- a real model on CPU and GPU ----
DATA=${MLKV_GPU_DATA:-$ROOT/../shared/data}
M=$DATA/models/aidreams260K/aidreams260K.bin
if [ -f "$M" ]; then
  stage "real model: CPU vs GPU"
  ids="1 45 67 89 123 200 311 42 7 99 256 300 13 14 15 16 400 401 402 77 78 79 80 81"
  for ct in f32 f16 bf16; do
    "$MLKV" score "$M" --tokens "$ids" --cache-type $ct --json --device cpu >"$OUT/score_cpu.json" 2>>"$LOG"
    "$MLKV" score "$M" --tokens "$ids" --cache-type $ct --json --device cuda >"$OUT/score_gpu.json" 2>>"$LOG"
    python3 - "$OUT/score_cpu.json" "$OUT/score_gpu.json" "$ct" <<'EOF' | tee -a "$SUMMARY"
import json, sys
a = json.load(open(sys.argv[1]))["logprobs"]; b = json.load(open(sys.argv[2]))["logprobs"]
d = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
# f32: the same sums in another order; f16/bf16 caches: a key or value rounding the other way
bound = 1e-4 if sys.argv[3] == "f32" else 1e-3
print(f"{'ok   ' if d < bound else 'FAIL '} aidreams260K score, cache {sys.argv[3]}: max |logprob cpu - gpu| = {d:.2e} over {len(a)} tokens (bound {bound:.0e})")
EOF
  done
  # bf16 weights on the GPU (activations rounded to bf16 for prefill products) against f32 on the CPU
  "$MLKV" score "$M" --tokens "$ids" --json --device cpu >"$OUT/score_cpu.json" 2>>"$LOG"
  "$MLKV" score "$M" --tokens "$ids" --weights bf16 --json --device cuda >"$OUT/score_gpu.json" 2>>"$LOG"
  python3 - "$OUT/score_cpu.json" "$OUT/score_gpu.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
a = json.load(open(sys.argv[1]))["logprobs"]; b = json.load(open(sys.argv[2]))["logprobs"]
d = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
print(f"{'ok   ' if d < 0.1 else 'FAIL '} aidreams260K score, bf16 weights on the GPU vs f32 on the CPU: max |dlogprob| = {d:.2e} (bound 1e-1)")
EOF
  for dev in cpu cuda; do
    "$MLKV" generate "$M" --tokens "1 45 67 89" -n 48 --ignore-eos --json --device $dev >"$OUT/gen_$dev.json" 2>>"$LOG"
  done
  python3 - "$OUT/gen_cpu.json" "$OUT/gen_cuda.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
def toks(p):
    j = json.load(open(p))
    r = j["results"][0] if "results" in j else j[0] if isinstance(j, list) else j
    return r.get("tokens") or r.get("ids")
a, b = toks(sys.argv[1]), toks(sys.argv[2])
print(f"{'ok   ' if a == b and a else 'FAIL '} aidreams260K greedy 48 tokens: cpu == gpu: {a == b}")
EOF
  # The server on the GPU: four concurrent greedy requests, each equal to the CPU's generation.
  "$MLKV" serve "$M" --device cuda --port 18431 --parallel 4 >>"$LOG" 2>&1 &
  srv=$!
  python3 - "$OUT/gen_cpu.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys, time, urllib.request, concurrent.futures as cf
want = json.load(open(sys.argv[1]))["results"][0]["tokens"]
def post(_):
    req = urllib.request.Request("http://127.0.0.1:18431/v1/completions",
        data=json.dumps({"tokens": [1, 45, 67, 89], "max_tokens": len(want), "ignore_eos": True}).encode(),
        headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))["tokens"]
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:18431/health", timeout=1); break
    except Exception:
        time.sleep(0.1)
try:
    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(post, range(4)))
    ok = all(g == want for g in got)
    print(f"{'ok   ' if ok else 'FAIL '} serve --device cuda: 4 concurrent greedy completions equal the CPU's: {ok}")
except Exception as e:
    print(f"FAIL  serve --device cuda: {e}")
EOF
  kill $srv 2>/dev/null
  wait $srv 2>/dev/null
  grep -q '^FAIL' "$SUMMARY" && status=1
else
  say "SKIPPED real-model comparison: no $M"
fi

# ---- benchmarks (random Pythia-160M geometry) ----
bench() {  # label, then mlkv bench options
  local label=$1
  shift
  if timeout 120 "$MLKV" bench --device cuda --no-bandwidth --json "$@" >"$OUT/b.json" 2>>"$LOG"; then
    python3 - "$label" "$OUT/b.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
label, j = sys.argv[1], json.load(open(sys.argv[2]))
step_s = j["decode_step_ms"] / 1e3
by = j["weight_bytes_per_step"] + j["kv_read_bytes_per_step"]
bw = by / step_s / 1e9 if step_s > 0 else 0
j["label"] = label
print(f"bench {label:34s} decode {j['decode_tok_s']:10.1f} tok/s, step {j['decode_step_ms']:.3f} ms, "
      f"{bw:7.0f} GB/s streamed ({100 * bw / 4800:.1f}% of 4.8 TB/s); prefill {j['prefill_tok_s']:.0f} tok/s")
open(sys.argv[2] + ".l", "w").write(json.dumps(j) + "\n")
EOF
    cat "$OUT/b.json.l" >>"$BENCH"
  else
    fail_stage "bench $label"
  fi
}
stage "benchmarks"
# Decode steps as CUDA graphs (opt-in until verified here), for the ratio to the plain launches.
MLKV_CUDA_GRAPHS=1 bench "b1 bf16 weights, CUDA graphs" --random pythia-160m --weights bf16 --cache-type bf16 --batch 1 --prompt 128 --gen 128 --reps 3
MLKV_CUDA_GRAPHS=1 bench "b16 ctx 2k bf16 MHA, CUDA graphs" --random pythia-160m --weights bf16 --cache-type bf16 --batch 16 --prompt 2016 --gen 32 --reps 3 --synthetic-context
bench "b1 bf16 weights, bf16 cache" --random pythia-160m --weights bf16 --cache-type bf16 --batch 1 --prompt 128 --gen 128 --reps 3
bench "b1 f32 weights, f32 cache" --random pythia-160m --weights f32 --cache-type f32 --batch 1 --prompt 128 --gen 128 --reps 3
bench "b16 ctx 2k bf16 MHA" --random pythia-160m --weights bf16 --cache-type bf16 --batch 16 --prompt 2016 --gen 32 --reps 3 --synthetic-context
bench "b512 ctx 2k bf16 MHA" --random pythia-160m --weights bf16 --cache-type bf16 --batch 512 --prompt 2040 --gen 8 --reps 2 --synthetic-context
bench "b512 ctx 2k bf16 MLKV-2" --random pythia-160m --kv-layers 2 --weights bf16 --cache-type bf16 --batch 512 --prompt 2040 --gen 8 --reps 2 --synthetic-context

# ---- the training attention on tensor cores (mixed precision): its own check and timing ----
if [ -x "${MLKV_GPU_ATTN_CHECK:-}" ]; then
  stage "tensor-core attention check"
  timeout 120 "$MLKV_GPU_ATTN_CHECK" --bench >"$OUT/attn_tc_check.txt" 2>&1
  rc=$?
  tail -30 "$OUT/attn_tc_check.txt" >>"$LOG"
  grep -E 'TFLOP|FAIL' "$OUT/attn_tc_check.txt" | head -12 | sed 's/^/attn: /' | tee -a "$SUMMARY"
  [ $rc -eq 0 ] && say "ok    tensor-core attention check" || fail_stage "tensor-core attention check (exit $rc)"
fi

# ---- training throughput ----
if [ -d "$DATA/ts" ]; then
  stage "training"
  # f32; bf16 mixed precision; bf16 with the tensor-core attention (opt-in until verified here)
  for variant in f32:0 bf16:0 bf16:1; do
  prec=${variant%%:*}
  rm -rf /tmp/mlkv_gpu_train
  if MLKV_CUDA_ATTN_TC=${variant##*:} timeout 120 "$MLKV" train --data "$DATA/ts" -o /tmp/mlkv_gpu_train \
      --preset pythia-160m --ctx 1024 --batch 8 --steps 8 --device cuda --precision $prec --quiet >>"$LOG" 2>&1; then
    python3 - /tmp/mlkv_gpu_train "$prec (tensor-core attention ${variant##*:})" <<'EOF' | tee -a "$SUMMARY"
import json, glob, sys
rows = [json.loads(l) for f in glob.glob(sys.argv[1] + "/*.jsonl") for l in open(f)]
steps = [r for r in rows if r.get("event", "step") == "step" and "loss" in r]
# per-step throughput from the wall clock between log lines (the first steps warm up)
tps = [(b["tokens"] - a["tokens"]) / (b["time_s"] - a["time_s"]) for a, b in zip(steps[2:], steps[3:])
       if b["time_s"] > a["time_s"]]
tps = sorted(t for t in tps if t)
# FLOPs per token (docs/BENCHMARKS.md, training): 6 N_mm + 6 L n_head d_head (ctx + 1), N_mm the
# matrix-multiply weights of Pythia-160M with the data's 50277-id vocabulary (q/k/v/o, MLP, output).
L, E, F, V, ctx = 12, 768, 3072, 50277, 1024
n_mm = L * (E * 3 * E + E * E + 2 * E * F) + V * E
flops_tok = 6 * n_mm + 6 * L * E * (ctx + 1)
if tps:
    med = tps[len(tps) // 2]
    mfu = flops_tok * med / 989e12
    print(f"train pythia-160m ctx 1024 batch 8 {sys.argv[2]}: {med:.0f} tok/s (median of {len(tps)} steps), "
          f"loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}, {flops_tok * med / 1e12:.1f} TFLOP/s = "
          f"{100 * mfu:.2f}% of the 989 TFLOP/s dense bf16 peak")
else:
    print("train: ran, but no per-step throughput in the log: " + str(rows[-1] if rows else "no log"))
EOF
  else
    fail_stage "training run, $prec (see $LOG)"
    tail -20 "$LOG"
  fi
  done
else
  say "SKIPPED training: no token shards in $DATA/ts"
fi

# ---- checkpoints across devices: 4 steps on the GPU, resumed on the CPU to 8, against 8 CPU steps ----
if [ -d "$DATA/ts" ]; then
  stage "resume across devices"
  common=(--data "$DATA/ts" --preset tiny-neox --ctx 64 --batch 4 --schedule constant --warmup 0 --quiet)
  rm -rf /tmp/mlkv_rx_a /tmp/mlkv_rx_b
  if "$MLKV" train "${common[@]}" -o /tmp/mlkv_rx_a --steps 8 --device cpu >>"$LOG" 2>&1 &&
     "$MLKV" train "${common[@]}" -o /tmp/mlkv_rx_b --steps 4 --device cuda >>"$LOG" 2>&1 &&
     "$MLKV" train "${common[@]}" -o /tmp/mlkv_rx_b --steps 8 --resume --device cpu >>"$LOG" 2>&1; then
    python3 - /tmp/mlkv_rx_a/train_log.jsonl /tmp/mlkv_rx_b/train_log.jsonl <<'EOF' | tee -a "$SUMMARY"
import json, sys
def losses(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if "step" in r and "loss" in r}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
ok = all(s in a and s in b for s in range(1, 9))
d = max(abs(a[s] - b[s]) / abs(a[s]) for s in range(1, 9)) if ok else float("inf")
print(f"{'ok   ' if d < 1e-3 else 'FAIL '} resume across devices (4 GPU steps + 4 CPU steps vs 8 CPU steps): "
      f"max relative loss difference {d:.2e} (bound 1e-3)")
EOF
    grep -q '^FAIL' "$SUMMARY" && status=1
  else
    fail_stage "resume across devices (see $LOG)"
  fi
fi

say "total $(($(date +%s) - T0)) s, status $status"
exit $status
