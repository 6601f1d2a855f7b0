#!/usr/bin/env python3
"""The paper's memory experiment at CPU scale: for each KV-sharing configuration of the MLKV paper's
table on Pythia-160M's geometry (random weights; speed does not depend on the values), report

  * KV-cache bytes per token (exact formula, from `mlkv info`),
  * the largest batch whose cache fits a memory budget at a given context,
  * decode throughput at a fixed batch and context (cache filled synthetically, `--synthetic-context`),
  * decode throughput at the largest batch that fits the budget (capped by --max-batch).

    bench/kv_sweep.py --mlkv build/bin/mlkv [--ctx 1024] [--budget-gib 2] [--batch 8] [--max-batch 64]

Prints a markdown table for docs/BENCHMARKS.md.
"""
import argparse
import json
import subprocess

# name, KV layers m, KV heads g (12 layers x 12 heads)
CONFIGS = [("MHA-144", 12, 12), ("GQA-48", 12, 4), ("MLKV-48", 4, 12), ("MQA-12", 12, 1),
           ("MLKV-12", 4, 3), ("MLKV-6", 6, 1), ("MLKV-4", 4, 1), ("MLKV-2", 2, 1), ("MLKV-1", 1, 1)]


def bench(mlkv, m, g, batch, ctx, gen, reps, threads, cache_type):
    cmd = [mlkv, "bench", "--random", "pythia-160m", "--kv-layers", str(m), "--kv-heads", str(g),
           "--synthetic-context", "--prompt", str(ctx), "--gen", str(gen), "--batch", str(batch),
           "--reps", str(reps), "--no-bandwidth", "--json", "--cache-type", cache_type]
    if threads:
        cmd += ["--threads", str(threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--budget-gib", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache-type", default="f32")
    a = ap.parse_args()
    budget = a.budget_gib * (1 << 30)
    print(f"context {a.ctx}, cache {a.cache_type}, budget {a.budget_gib} GiB, fixed batch {a.batch}, "
          f"median of {a.reps}")
    print()
    print(f"| config | m x g | KV bytes/token | max batch in {a.budget_gib:g} GiB | decode tok/s at batch {a.batch} "
          f"| decode tok/s at max batch (capped {a.max_batch}) |")
    print("|---|---|---:|---:|---:|---:|")
    elem = 4 if a.cache_type == "f32" else 2
    for name, m, g in CONFIGS:
        per_tok = 2 * m * g * 64 * elem
        per_seq = per_tok * (a.ctx + a.gen)
        max_batch = int(budget // per_seq)
        fixed = bench(a.mlkv, m, g, a.batch, a.ctx, a.gen, a.reps, a.threads, a.cache_type)
        assert fixed["kv_bytes_per_token"] == per_tok, (fixed["kv_bytes_per_token"], per_tok)
        big = min(max_batch, a.max_batch)
        at_max = bench(a.mlkv, m, g, big, a.ctx, a.gen, a.reps, a.threads, a.cache_type) if big > 0 else None
        print(f"| {name} | {m} x {g} | {per_tok} | {max_batch} | {fixed['decode_tok_s']:.1f} | "
              f"{(at_max['decode_tok_s'] if at_max else 0):.1f} (batch {big}) |", flush=True)


if __name__ == "__main__":
    main()
