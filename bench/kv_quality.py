#!/usr/bin/env python3
"""Quality of the KV-cache formats, composed with sharing (issue 11): for a trained MHA model and its
MLKV-6 and MLKV-2 conversions (uptrained briefly), the held-out perplexity with each cache format and
the KL divergence of its next-token distributions from the f32 cache's (`mlkv eval --cache-type X
--kl-base f32`: mean, p99 and max of KL(f32 || X) per target, the share of targets with the same argmax).

The model: GPT-NeoX geometry, 12 layers x 4 heads, d_head 32 (the block formats q8_0 / q4_0 hold 32
values per block, so heads of 32), trained from scratch on TinyStories with `mlkv train`; MLKV-6 is
6 KV layers x 1 KV head, MLKV-2 2 x 1 (`mlkv convert --kv-layers M --kv-heads 1`, then
`mlkv train --init`). Every stage is skipped when its output exists, so a rerun only re-measures.

    bench/kv_quality.py --mlkv build/bin/mlkv --shared ../shared --workdir runs/kv_quality

Prints a markdown table for docs/BENCHMARKS.md.
"""
import argparse
import json
import os
import subprocess
import sys

FORMATS = ["f32", "f16", "bf16", "q8_0", ("q8_0+hadamard", "q8_0"), "q4_0", ("q4_0+hadamard", "q4_0"),
           ("q8_0", "q4_0")]


def run(cmd, **kw):
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["MLKV_PROGRESS"] = "0"
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr[-2000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--workdir", default="runs/kv_quality")
    ap.add_argument("--tokens", type=int, default=600_000, help="pretraining tokens of the MHA model")
    ap.add_argument("--uptrain-tokens", type=int, default=100_000)
    ap.add_argument("--windows", type=int, default=200, help="held-out windows of 128 tokens")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    w = a.workdir
    os.makedirs(w, exist_ok=True)
    text = os.path.join(a.shared, "data", "text", "tinystories_lower.txt")
    t = ["-t", a.threads]
    if not os.path.exists(f"{w}/tok/tokenizer.model"):
        run([a.mlkv, "tokenizer", "train", text, "--vocab", 1024, "-o", f"{w}/tok"])
    if not os.path.exists(f"{w}/data/meta.json"):
        run([a.mlkv, "tokenize", text, "-t", f"{w}/tok", "-o", f"{w}/data", "--val-fraction", 0.05,
             "--txt-docs", "blank"])
    models = {"MHA-48": f"{w}/mha"}
    if not os.path.exists(f"{w}/mha/model.safetensors"):
        run([a.mlkv, "train", "--data", f"{w}/data", "-o", f"{w}/mha", "--preset", "tiny-neox", "--layers", 12,
             "--embd", 128, "--heads", 4, "--ctx", 128, "--batch", 16, "--tokens", a.tokens, "--lr", 2e-3,
             "--warmup-ratio", 0.05, "--overwrite", *t])
    for name, m in (("MLKV-6", 6), ("MLKV-2", 2)):
        conv, up = f"{w}/{name}-converted", f"{w}/{name}"
        if not os.path.exists(f"{conv}/config.json"):
            run([a.mlkv, "convert", f"{w}/mha", conv, "--kv-layers", m, "--kv-heads", 1, "--force"])
        if not os.path.exists(f"{up}/model.safetensors"):
            run([a.mlkv, "train", "--init", conv, "--data", f"{w}/data", "-o", up, "--ctx", 128, "--batch", 16,
                 "--tokens", a.uptrain_tokens, "--lr", 6e-4, "--warmup-ratio", 0.2, "--overwrite", *t])
        models[name] = up
    val = f"{w}/data/val_000.bin"
    print(f"held-out: the first {a.windows} windows of 128 tokens of {val}; KL(f32 || format) in nats per "
          "target; ppl ratio = perplexity with the format / with f32")
    print()
    print("| model | cache K / V | bytes/token | perplexity | ppl ratio | mean KL | p99 KL | max KL | same top |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, path in models.items():
        for f in FORMATS:
            k, v = (f, f) if isinstance(f, str) else f
            out = run_json(a, path, val, k, v, t)
            r = next(iter(out["results"].values()))
            kl = r["kl"]
            label = k if k == v else f"{k} / {v}"
            print(f"| {name} | {label} | {out['settings']['kv_bytes_per_token']} | {r['token_perplexity']:.4f} | "
                  f"{kl['ppl_ratio']:.5f} | {kl['mean']:.2e} | {kl['p99']:.2e} | {kl['max']:.2e} | "
                  f"{100 * kl['same_top']:.2f} % |", flush=True)


def run_json(a, path, val, k, v, t):
    js = os.path.join(a.workdir, "eval.json")
    run([a.mlkv, "eval", path, "--shard", val, "--ctx", 128, "--limit", a.windows, "--cache-type-k", k,
         "--cache-type-v", v, "--kl-base", "f32", "--json", js, *t])
    with open(js) as fh:
        return json.load(fh)


if __name__ == "__main__":
    main()
