#!/usr/bin/python3
"""Training vs the independent PyTorch reference (mlkv_ref.py, float64).

Two parts, each over tiny random models of both families with cross-layer KV sharing:

grads  The loss and every parameter gradient from the engine's training graph
       (`mlkv_train_grads`, src/train) against `mlkv_ref.loss_and_grads`, on B rows of T tokens.
       Error per tensor = max |engine - reference| / max |reference| (normalised); the case's error
       is the largest over its tensors. The float path must be within --tol (1e-4); the double path
       (`--double`, the finite-difference-checked one) is printed to show the float error is rounding.

train  10 AdamW steps: `mlkv train --init DIR --no-shuffle ...` against `mlkv_ref.train` with the same
       token file (written as a token shard), schedule, clipping and weight decay. Compares every
       step's loss (relative), lr and pre-clip grad norm, and the final parameters (normalised).

Prints one row per case and exits 1 listing every comparison above its bound.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlkv_ref as R  # noqa: E402
import torch  # noqa: E402

L, E, H, VOCAB, CTX = 4, 32, 4, 97, 64

GRAD_CASES = [
    # name, make_model kwargs
    ("gpt_neox/mlkv-half-g2/pre/par", dict(family="gpt_neox", kv_heads=2, kv_layers=2, share="pre")),
    ("gpt_neox/mlkv-half-g4/post/seq-rot1", dict(family="gpt_neox", kv_heads=4, kv_layers=2, share="post",
                                                 parallel=False, rotary_pct=1.0)),
    ("gpt_neox/mlkv-1-g1/post/par", dict(family="gpt_neox", kv_heads=1, kv_layers=1, share="post")),
    ("gpt_neox/mlkv-1-g1/pre/seq", dict(family="gpt_neox", kv_heads=1, kv_layers=1, share="pre", parallel=False)),
    ("gpt_neox/src0113-g2/pre/par", dict(family="gpt_neox", kv_heads=2, kv_source=[0, 1, 1, 3], share="pre")),
    ("gpt_neox/authors-m2", dict(family="gpt_neox", kv_heads=4, kv_layers=2, authors_format=True)),
    ("gpt_neox/mha/fused", dict(family="gpt_neox", kv_heads=4, layout="fused")),
    ("llama/mlkv-half-g2/post/untied", dict(family="llama", kv_heads=2, kv_layers=2, share="post")),
    ("llama/mlkv-half-g2/pre/tied", dict(family="llama", kv_heads=2, kv_layers=2, share="pre", tied=True)),
    ("llama/mlkv-1-g4/pre/untied", dict(family="llama", kv_heads=4, kv_layers=1, share="pre")),
    ("llama/mlkv-1-g1/post/tied", dict(family="llama", kv_heads=1, kv_layers=1, share="post", tied=True)),
    ("llama/gqa-g2/post", dict(family="llama", kv_heads=2)),
    ("llama/E48-h6-g3-m3/post/tied", dict(family="llama", embd=48, heads=6, kv_heads=3, kv_layers=3, share="post",
                                          tied=True)),
    # Llama biases: gate/up/down (mlp_bias) and q/k/v/o (attention_bias).
    ("llama/mlp-attn-bias-m2/pre/untied", dict(family="llama", kv_heads=2, kv_layers=2, share="pre",
                                              mlp_bias=True, attention_bias=True)),
]

TRAIN_CASES = [
    ("gpt_neox/mlkv-half-g2/pre/par", dict(family="gpt_neox", kv_heads=2, kv_layers=2, share="pre")),
    ("gpt_neox/mlkv-1-g1/post/seq", dict(family="gpt_neox", kv_heads=1, kv_layers=1, share="post", parallel=False)),
    ("llama/mlkv-half-g2/post/tied", dict(family="llama", kv_heads=2, kv_layers=2, share="post", tied=True)),
    ("llama/mlkv-1-g2/pre/untied", dict(family="llama", kv_heads=2, kv_layers=1, share="pre")),
    ("llama/mlp-bias-gqa/post/tied", dict(family="llama", kv_heads=2, share="post", tied=True, mlp_bias=True)),
]


def make(name: str, kw: dict, seed: int, workdir: str) -> tuple[str, R.Config, dict]:
    d = os.path.join(workdir, name.replace("/", "_"))
    full = dict(layers=L, embd=E, heads=H, vocab=VOCAB, ctx=CTX)
    full.update(kw)
    hf, params = R.make_model(seed=seed, **full)
    R.save_model(d, hf, params, "F32")
    cfg, _, loaded, _ = R.load_model(d)
    return d, cfg, loaded


def split_fused(cfg: R.Config, grads: dict) -> dict:
    """Reference grads of a fused-qkv model under the split names the engine uses."""
    out = {}
    for k, v in grads.items():
        if k.endswith("attention.query_key_value.weight") or k.endswith("attention.query_key_value.bias"):
            base, suffix = k.rsplit(".query_key_value.", 1)
            q, kk, vv = R.split_qkv(cfg, v)
            out[f"{base}.query.{suffix}"], out[f"{base}.key.{suffix}"], out[f"{base}.value.{suffix}"] = q, kk, vv
        else:
            out[k] = v
    return out


def normalised_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    scale = float(ref.abs().max())
    return float((got.to(torch.float64) - ref).abs().max()) / max(scale, 1e-30)


def run(cmd: list[str], timeout: int = 300) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n    stderr: {r.stderr.strip()[-800:]}")
    return r.stdout


def part_grads(args) -> tuple[list[str], float]:
    failures, worst_all = [], 0.0
    print(f"{'grads: case':44s} {'loss rel':>9s} {'f32 grad':>9s} {'worst tensor':44s} {'f64 grad':>9s}")
    for i, (name, kw) in enumerate(GRAD_CASES):
        if args.filter and args.filter not in name:
            continue
        d, cfg, params = make(name, kw, 500 + i, args.workdir)
        rng = random.Random(900 + i)
        B, T = 3, 17
        rows = [[rng.randrange(cfg.n_vocab) for _ in range(T)] for _ in range(B)]
        ref_loss, ref = R.loss_and_grads(cfg, params, torch.tensor(rows, dtype=torch.int64))
        ref = split_fused(cfg, ref)
        tok = "; ".join(" ".join(map(str, r)) for r in rows)
        results = {}
        for prec in ("f32", "f64"):
            out = os.path.join(d, f"grads_{prec}.safetensors")
            cmd = [args.grads_tool, d, "--tokens", tok, "--out", out] + (["--double"] if prec == "f64" else [])
            try:
                loss = json.loads(run(cmd).strip().splitlines()[-1])["loss"]
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                failures.append(f"{name} [{prec}]: {e}")
                continue
            got, _, _ = R.load_safetensors(out)
            missing = sorted(set(ref) - set(got))
            extra = sorted(set(got) - set(ref))
            if missing or extra:
                failures.append(f"{name} [{prec}]: gradient names differ: missing {missing}, extra {extra}")
                continue
            errs = {k: normalised_err(got[k], ref[k]) for k in ref}
            worst = max(errs, key=errs.get)
            results[prec] = (abs(loss - ref_loss) / abs(ref_loss), errs[worst], worst)
        if "f32" not in results:
            continue
        lrel, gerr, wname = results["f32"]
        f64 = results.get("f64", (0, float("nan"), ""))[1]
        worst_all = max(worst_all, gerr, lrel)
        print(f"{name:44s} {lrel:9.2e} {gerr:9.2e} {wname[-44:]:44s} {f64:9.2e}", flush=True)
        if not lrel <= args.tol:
            failures.append(f"{name}: loss relative error {lrel:.3e} > {args.tol:g}")
        if not gerr <= args.tol:
            failures.append(f"{name}: gradient {wname} normalised error {gerr:.3e} > {args.tol:g}")
        # The double path's gradients are stored as F32: its error is the F32 rounding (~6e-8).
        if "f64" in results and not results["f64"][1] <= 1.2e-7:
            failures.append(f"{name}: double-path gradient {results['f64'][2]} error {results['f64'][1]:.3e} > 1.2e-7")
    return failures, worst_all


def comparable(cfg: R.Config, name: str, got: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops the GPT-NeoX key-bias entries outside the rotary dims before comparing trained parameters.

    Their gradient is exactly zero (adding the same q . b_k to every score of a softmax row changes
    nothing), so float64 leaves them alone while float32 rounding noise (~1e-9) becomes a full-size
    AdamW step (noise / (|noise| + eps)): a property of any float32 trainer, not a disagreement."""
    if not name.endswith("attention.key.bias"):
        return got, ref
    hd = cfg.n_embd_head
    keep = [h * hd + i for h in range(got.shape[0] // hd) for i in range(cfg.n_rot)]
    if not keep:
        return got[:0], ref[:0]
    return got[keep], ref[keep]


def write_shard(path: str, tokens: list[int], n_vocab: int) -> None:
    """docs/TOKENIZERS.md format: 64-byte header, uint16 tokens, no EOS (random streams)."""
    header = b"MLKVTOKS" + struct.pack("<IIQQIi", 1, 2, len(tokens), 0, n_vocab, -1)
    header += b"\0" * (64 - len(header))
    with open(path, "wb") as f:
        f.write(header)
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))


def part_train(args) -> tuple[list[str], float]:
    failures, worst_all = [], 0.0
    steps, batch, ctx = 10, 2, 16
    hp = dict(lr=3e-3, warmup=3, min_lr_ratio=0.1, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, clip=1.0)
    print(f"\n{'train (10 AdamW steps): case':44s} {'loss rel':>9s} {'lr rel':>9s} {'gnorm rel':>9s} {'params':>9s}"
          f"  losses (first, last)")
    for i, (name, kw) in enumerate(TRAIN_CASES):
        if args.filter and args.filter not in name:
            continue
        d, cfg, params = make("train_" + name, kw, 700 + i, args.workdir)
        rng = random.Random(40 + i)
        tokens = [rng.randrange(cfg.n_vocab) for _ in range(200)]  # 12 rows of 16: the 20 rows wrap
        tok_file = os.path.join(d, "tokens.txt")
        with open(tok_file, "w") as f:
            f.write(" ".join(map(str, tokens)) + "\n")
        shard = os.path.join(d, "tokens.bin")
        write_shard(shard, tokens, cfg.n_vocab)
        new, log = R.train(cfg, params, tokens, steps, hp["lr"], hp["warmup"], batch, ctx, hp["weight_decay"],
                           hp["beta1"], hp["beta2"], hp["eps"], hp["clip"], hp["min_lr_ratio"])
        out = os.path.join(d, "trained")
        cmd = [args.mlkv, "train", "--init", d, "--data", shard, "--out", out, "--overwrite", "--no-shuffle",
               "--steps", str(steps), "--batch", str(batch), "--ctx", str(ctx), "--lr", str(hp["lr"]),
               "--warmup", str(hp["warmup"]), "--min-lr-ratio", str(hp["min_lr_ratio"]),
               "--weight-decay", str(hp["weight_decay"]), "--beta1", str(hp["beta1"]), "--beta2", str(hp["beta2"]),
               "--adam-eps", str(hp["eps"]), "--clip", str(hp["clip"]), "--threads", "1", "--quiet"]
        try:
            run(cmd)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            failures.append(f"{name}: {e}")
            continue
        recs = []
        with open(os.path.join(out, "train_log.jsonl")) as f:
            for line in f:
                j = json.loads(line)
                if "loss" in j:
                    recs.append(j)
        if len(recs) != steps:
            failures.append(f"{name}: {len(recs)} log records, expected {steps}")
            continue

        def rel(a, b):
            return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b))
        l_err = rel([r["loss"] for r in recs], log["losses"])
        lr_err = rel([r["lr"] for r in recs], log["lrs"])
        g_err = rel([r["grad_norm"] for r in recs], log["grad_norms"])
        _, _, trained, _ = R.load_model(out)
        ref_new = split_fused(cfg, new)
        p_err = max(normalised_err(*comparable(cfg, k, trained[k], ref_new[k])) for k in trained)
        worst_all = max(worst_all, l_err)
        print(f"{name:44s} {l_err:9.2e} {lr_err:9.2e} {g_err:9.2e} {p_err:9.2e}  "
              f"{log['losses'][0]:.4f} -> {log['losses'][-1]:.4f}", flush=True)
        if not l_err <= args.tol:
            failures.append(f"{name}: step losses differ by {l_err:.3e} (relative) > {args.tol:g}")
        if not lr_err <= 1e-6:
            failures.append(f"{name}: learning rates differ by {lr_err:.3e} (relative) > 1e-6")
        if not g_err <= args.tol:
            failures.append(f"{name}: grad norms differ by {g_err:.3e} (relative) > {args.tol:g}")
        if not p_err <= args.param_tol:
            failures.append(f"{name}: trained parameters differ by {p_err:.3e} (normalised) > {args.param_tol:g}")
    return failures, worst_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlkv", required=True, help="the mlkv binary")
    ap.add_argument("--grads-tool", required=True, help="the mlkv_train_grads binary")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--tol", type=float, default=1e-4, help="bound on relative loss / normalised gradient error")
    ap.add_argument("--param-tol", type=float, default=1e-3, help="bound on trained-parameter error after 10 steps")
    ap.add_argument("--filter", default=None)
    ap.add_argument("--part", choices=["grads", "train", "all"], default="all")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    failures, worst = [], 0.0
    if args.part in ("grads", "all"):
        f, w = part_grads(args)
        failures += f
        worst = max(worst, w)
    if args.part in ("train", "all"):
        f, w = part_train(args)
        failures += f
        worst = max(worst, w)
    print(f"\nlargest error: {worst:.3e} (bound {args.tol:g}); {time.time() - t0:.1f}s")
    if failures:
        print(f"\nFAILED ({len(failures)}):", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print("reference_train: all within bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
