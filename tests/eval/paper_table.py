#!/usr/bin/python3
"""Loss right after conversion, for each of the MLKV paper's configurations scaled to a model and each
cross-layer merge strategy: the numbers behind docs/RESULTS.md and the default of `mlkv convert --merge`.

For every configuration (M KV layers by the authors' owner rule x G KV heads per layer) and every merge
(pairwise, mean, owner) it runs `mlkv convert SRC ... --merge X` and `mlkv eval CONVERTED DATA --json`, and
prints a markdown table of the mean token loss (nats) on DATA (a text file or a token shard), with the
source model's loss and the KV-cache bytes per token. Merges only differ when some layer shares (M < L).

The paper's table is for Pythia-160M (12 layers x 12 heads): MHA-144 (12x12), GQA-48 (12x4), MLKV-48 (4x12),
MQA-12 (12x1), MLKV-12 (4x3), MLKV-6 (6x1), MLKV-4 (4x1), MLKV-2 (2x1), MLKV-1 (1x1). For a model with L
layers and H heads, M scales as round(m * L / 12) (1 stays 1) and G as the divisor of H nearest g * H / 12
(1 stays 1); --grid takes every (M, G) instead.

    tests/eval/paper_table.py --mlkv build/bin/mlkv --model M --data val.bin --workdir /tmp/pt [--limit 200] [--ctx 128]

With --uptrain-data (a `mlkv tokenize` folder) every configuration, converted with --uptrain-merge, is also
uptrained for --uptrain-tokens tokens with the authors' recipe (AdamW 0.9/0.95, weight decay 0.01, warmup
ratio 0.2, cosine; lr --uptrain-lr) by `mlkv train --init`, the MHA source included (same budget), and a
second table gives the loss after uptraining.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

PAPER = [("MHA", 12, 12), ("GQA", 12, 4), ("MLKV", 4, 12), ("MQA", 12, 1), ("MLKV", 4, 3), ("MLKV", 6, 1),
         ("MLKV", 4, 1), ("MLKV", 2, 1), ("MLKV", 1, 1)]
MERGES = ("pairwise", "mean", "owner")


def run(cmd: list[str]) -> str:
    env = dict(os.environ, MLKV_PROGRESS="0")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n{r.stderr.strip()[-800:]}")
    return r.stdout


def info(mlkv: str, model: str) -> dict:
    return json.loads(run([mlkv, "info", model, "--json"]))


def scaled_configs(n_layer: int, n_head: int, grid: bool) -> list[tuple[str, int, int]]:
    divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
    if grid:
        out = []
        for m in sorted({max(1, n_layer // k) for k in range(1, n_layer + 1)}, reverse=True):
            for g in sorted(divisors, reverse=True):
                kind = "MHA" if (m, g) == (n_layer, n_head) else "GQA" if m == n_layer and g > 1 else \
                    "MQA" if m == n_layer else "MLKV"
                out.append((kind, m, g))
        return out
    out, seen = [], set()
    for kind, m, g in PAPER:
        ms = 1 if m == 1 else max(1, round(m * n_layer / 12))
        gs = 1 if g == 1 else min(divisors, key=lambda d: (abs(d - g * n_head / 12), -d))
        if (ms, gs) in seen:
            continue
        seen.add((ms, gs))
        kind = "MHA" if (ms, gs) == (n_layer, n_head) else "GQA" if ms == n_layer and gs > 1 else \
            "MQA" if ms == n_layer else "MLKV"
        out.append((kind, ms, gs))
    return out


def eval_loss(mlkv: str, model: str, data: str, out_json: str, limit: int, threads: int, ctx: int) -> dict:
    cmd = [mlkv, "eval", model, data, "--json", out_json, "-t", str(threads)]
    if limit > 0:
        cmd += ["--limit", str(limit)]
    if ctx > 0:
        cmd += ["--ctx", str(ctx)]
    run(cmd)
    with open(out_json) as f:
        return next(iter(json.load(f)["results"].values()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--model", required=True, help="the MHA source model")
    ap.add_argument("--data", required=True, help="text file or token shard for the loss")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--limit", type=int, default=0, help="windows of DATA (0: all)")
    ap.add_argument("--ctx", type=int, default=0, help="perplexity window (default: the model's context)")
    ap.add_argument("--grid", action="store_true", help="every (M, G) instead of the paper's configurations")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--uptrain-data", default=None, help="uptrain every configuration on this token folder")
    ap.add_argument("--uptrain-tokens", type=int, default=100000)
    ap.add_argument("--uptrain-lr", type=float, default=6e-4)
    ap.add_argument("--uptrain-batch", type=int, default=16)
    ap.add_argument("--uptrain-merge", default="owner")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    src = info(args.mlkv, args.model)
    L, H = src["n_layer"], src["n_head"]
    t0 = time.time()
    base = eval_loss(args.mlkv, args.model, args.data, os.path.join(args.workdir, "base.json"), args.limit, args.threads,
                     args.ctx)
    rows = []
    for kind, m, g in scaled_configs(L, H, args.grid):
        row = {"name": f"{kind}-{m * g}", "kv_layers": m, "kv_heads": g, "losses": {}}
        for merge in MERGES:
            if m == L and merge != MERGES[0]:
                row["losses"][merge] = row["losses"][MERGES[0]]  # no layer shares: the merges coincide
                continue
            dst = os.path.join(args.workdir, f"m{m}g{g}-{merge}")
            shutil.rmtree(dst, ignore_errors=True)
            rep = json.loads(run([args.mlkv, "convert", args.model, dst, "--kv-heads", str(g), "--kv-layers", str(m),
                                  "--merge", merge, "--json"]))
            r = eval_loss(args.mlkv, dst, args.data, dst + ".json", args.limit, args.threads, args.ctx)
            row["losses"][merge] = r["loss"]
            row["owners"] = rep["owner_layers"]
            row["kv_bytes_per_token"] = rep["kv_bytes_per_token_after"]
            row["n_tokens"] = r["n_tokens"]
            shutil.rmtree(dst, ignore_errors=True)
        if args.uptrain_data:
            dst = os.path.join(args.workdir, f"m{m}g{g}-up")
            shutil.rmtree(dst, ignore_errors=True)
            run([args.mlkv, "convert", args.model, dst, "--kv-heads", str(g), "--kv-layers", str(m),
                 "--merge", args.uptrain_merge])
            out = dst + "-trained"
            shutil.rmtree(out, ignore_errors=True)
            summary = json.loads(run([args.mlkv, "train", "--init", dst, "--data", args.uptrain_data, "-o", out,
                                      "--tokens", str(args.uptrain_tokens), "--ctx", str(args.ctx or 128),
                                      "--batch", str(args.uptrain_batch), "--lr", str(args.uptrain_lr),
                                      "--warmup-ratio", "0.2", "--weight-decay", "0.01", "--beta1", "0.9",
                                      "--beta2", "0.95", "-t", str(args.threads), "-q", "--json"]).strip().splitlines()[-1])
            r = eval_loss(args.mlkv, out, args.data, out + ".json", args.limit, args.threads, args.ctx)
            row["uptrained"] = {"merge": args.uptrain_merge, "loss": r["loss"], "tokens": args.uptrain_tokens,
                                "train_summary": summary}
            shutil.rmtree(dst, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
        print(f"{row['name']:10s} {m:2d}x{g:<2d} " + "  ".join(f"{k} {v:.4f}" for k, v in row["losses"].items()),
              file=sys.stderr, flush=True)

    print(f"source: {args.model} ({L} layers x {H} heads, loss {base['loss']:.4f} nats/token = perplexity "
          f"{base['token_perplexity']:.2f} on {base['n_tokens']} tokens of {args.data})\n")
    print("| config | M x G | owners | KV bytes/token (f32) | loss pairwise | loss mean | loss owner | best |")
    print("|---|---|---|---|---|---|---|---|")
    wins = {k: 0 for k in MERGES}
    for r in rows:
        ls = r["losses"]
        shares = r["kv_layers"] < L
        best = min(MERGES, key=lambda k: ls[k]) if shares else "-"
        if shares:
            wins[best] += 1
        cells = [f"**{ls[k]:.4f}**" if k == best else f"{ls[k]:.4f}" for k in MERGES]
        owners = ",".join(map(str, r.get("owners", [])))
        print(f"| {r['name']} | {r['kv_layers']} x {r['kv_heads']} | {owners} | {r.get('kv_bytes_per_token', '')} | "
              + " | ".join(cells) + f" | {best} |")
    shared_rows = [r for r in rows if r["kv_layers"] < L]
    if shared_rows:
        means = {k: sum(r["losses"][k] for r in shared_rows) / len(shared_rows) for k in MERGES}
        print(f"\nconfigs with cross-layer sharing: {len(shared_rows)}; wins " +
              ", ".join(f"{k} {v}" for k, v in wins.items()) + "; mean loss " +
              ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    if args.uptrain_data:
        print(f"\nafter uptraining {args.uptrain_tokens} tokens (merge {args.uptrain_merge}, lr {args.uptrain_lr:g}, "
              f"warmup 0.2, cosine; the MHA row is the source uptrained the same way):\n")
        print("| config | M x G | KV bytes/token (f32) | loss after conversion | loss after uptraining |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['kv_layers']} x {r['kv_heads']} | {r.get('kv_bytes_per_token', '')} | "
                  f"{r['losses'][args.uptrain_merge]:.4f} | {r['uptrained']['loss']:.4f} |")
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "data": args.data, "limit": args.limit, "ctx": args.ctx, "base": base,
                       "rows": rows}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
