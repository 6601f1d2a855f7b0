#!/usr/bin/python3
"""Knowledge distillation vs an independent PyTorch computation (float64; ctest reference_distill).

The objective of `mlkv train --teacher` (docs/TRAINING.md, "Distillation") per next-token position:

    alpha * CE(student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

written here the way PyTorch users write it (Hinton et al. 2015; torch.nn.functional):

    F.cross_entropy(s, y) * alpha
      + F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean",
                 log_target=True) * (1 - alpha) * T * T

with s, t the student's and teacher's logits of every position ([B * ctx, V]) from mlkv_ref.forward
(the teacher under torch.no_grad), and the gradients from autograd. Two parts:

grads  `mlkv_train_grads STUDENT --teacher TEACHER --alpha A --temp T` (the engine's training graph)
       against the reference: the objective, its CE and KL parts, and every student gradient
       (normalised error: max |engine - reference| / max |reference| per tensor). The f32 path must be
       within --loss-tol / --tol; the double path within the f32 rounding of the written gradients.
train  6 AdamW steps of `mlkv train --init STUDENT --teacher TEACHER --no-shuffle` against the same
       steps in float64 here: every step's objective, CE, KL (relative) and pre-clip grad norm, and
       the final parameters (normalised).

Students and teachers differ in geometry (MLKV / GQA students of MHA teachers, another width, another
family), as a converted model and its source do; they share the vocabulary.

Bounds (llm.c's lesson: just above what was measured, not a loose uniform one). Measured on AVX2
(2026-12): f32 objective / CE / KL <= 6.7e-8 relative, gradients <= 2.5e-6 normalised; 6 AdamW steps:
per-step values <= 9e-8, parameters 7.1e-6. Bounds: 1e-6, 2e-5 and 1e-4.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlkv_ref as R  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from test_train import comparable, normalised_err, split_fused, write_shard  # noqa: E402

VOCAB, CTX = 97, 64

# name, student kwargs, teacher kwargs, alpha, T
CASES = [
    ("neox mlkv-half-g2/pre <- mha", dict(family="gpt_neox", layers=4, embd=32, heads=4, kv_heads=2, kv_layers=2,
                                          share="pre"),
     dict(family="gpt_neox", layers=4, embd=32, heads=4, kv_heads=4), 0.5, 1.0),
    ("llama mlkv-1-g1/post/tied <- gqa E48", dict(family="llama", layers=4, embd=32, heads=4, kv_heads=1, kv_layers=1,
                                                  share="post", tied=True),
     dict(family="llama", layers=3, embd=48, heads=6, kv_heads=3), 0.3, 2.0),
    ("llama gqa-g2 <- neox mha (T 0.5)", dict(family="llama", layers=2, embd=32, heads=4, kv_heads=2),
     dict(family="gpt_neox", layers=3, embd=32, heads=4, kv_heads=4, parallel=False), 0.0, 0.5),
    ("neox mqa/seq <- neox mha (alpha 0.9)", dict(family="gpt_neox", layers=3, embd=32, heads=4, kv_heads=1,
                                                  parallel=False),
     dict(family="gpt_neox", layers=3, embd=32, heads=4, kv_heads=4), 0.9, 4.0),
]


def make(d: str, kw: dict, seed: int) -> tuple[R.Config, dict]:
    full = dict(vocab=VOCAB, ctx=CTX)
    full.update(kw)
    hf, params = R.make_model(seed=seed, **full)
    R.save_model(d, hf, params, "F32")
    cfg, _, loaded, _ = R.load_model(d)
    return cfg, loaded


def objective(scfg, sparams, tcfg, tparams, rows: torch.Tensor, alpha: float, T: float):
    """(objective, ce, kl) as float64 tensors; the student's graph is kept for autograd."""
    s = R.forward(scfg, sparams, rows)[:, :-1].reshape(-1, scfg.n_vocab)
    with torch.no_grad():
        t = R.forward(tcfg, tparams, rows)[:, :-1].reshape(-1, tcfg.n_vocab)
    ce = F.cross_entropy(s, rows[:, 1:].reshape(-1))
    kl = F.kl_div(F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1), reduction="batchmean",
                  log_target=True)
    return alpha * ce + (1 - alpha) * T * T * kl, ce, kl


def grads_of(scfg, sparams, tcfg, tparams, rows, alpha, T):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in sparams.items()}
    loss, ce, kl = objective(scfg, leaves, tcfg, tparams, rows, alpha, T)
    g = torch.autograd.grad(loss, list(leaves.values()))
    return (loss.item(), ce.item(), kl.item()), {k: x.detach() for k, x in zip(leaves, g)}


def run(cmd: list[str], timeout: int = 300) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n    stderr: {r.stderr.strip()[-800:]}")
    return r.stdout


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def part_grads(args, case, i) -> tuple[list[str], float]:
    name, skw, tkw, alpha, T = case
    d = os.path.join(args.workdir, f"grads{i}")
    scfg, sp = make(os.path.join(d, "student"), skw, 300 + i)
    tcfg, tp = make(os.path.join(d, "teacher"), tkw, 400 + i)
    rng = random.Random(500 + i)
    B, n = 3, 17
    rows = [[rng.randrange(VOCAB) for _ in range(n)] for _ in range(B)]
    (loss, ce, kl), ref = grads_of(scfg, sp, tcfg, tp, torch.tensor(rows, dtype=torch.int64), alpha, T)
    ref = split_fused(scfg, ref)
    failures, worst = [], 0.0
    tok = "; ".join(" ".join(map(str, r)) for r in rows)
    cols = []
    for prec in ("f32", "f64"):
        out = os.path.join(d, f"grads_{prec}.safetensors")
        cmd = [args.grads_tool, os.path.join(d, "student"), "--tokens", tok, "--out", out, "--teacher",
               os.path.join(d, "teacher"), "--alpha", str(alpha), "--temp", str(T)]
        if prec == "f64":
            cmd.append("--double")
        try:
            got_loss = json.loads(run(cmd).strip().splitlines()[-1])
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            failures.append(f"{name} [{prec}]: {e}")
            continue
        got, _, _ = R.load_safetensors(out)
        if set(got) != set(ref):
            failures.append(f"{name} [{prec}]: gradient names differ: {sorted(set(ref) ^ set(got))}")
            continue
        errs = {k: normalised_err(got[k], ref[k]) for k in ref}
        wname = max(errs, key=errs.get)
        lerr = max(rel(got_loss["loss"], loss), rel(got_loss["ce"], ce), rel(got_loss["kl"], kl))
        cols.append((prec, lerr, errs[wname], wname))
        # f32: the engine's float path; f64: the double path, whose gradients are written as f32.
        ltol, gtol = (args.loss_tol, args.tol) if prec == "f32" else (1e-10, 1.2e-7)
        if prec == "f32":
            worst = max(worst, lerr, errs[wname])
        if not lerr <= ltol:
            failures.append(f"{name} [{prec}]: objective/ce/kl relative error {lerr:.3e} > {ltol:g}")
        if not errs[wname] <= gtol:
            failures.append(f"{name} [{prec}]: gradient {wname} normalised error {errs[wname]:.3e} > {gtol:g}")
    line = "  ".join(f"{p}: loss {le:.2e} grad {ge:.2e}" for p, le, ge, _ in cols)
    print(f"{name:40s} a {alpha:<4g} T {T:<4g} obj {loss:.4f} ce {ce:.4f} kl {kl:.4f}  {line}", flush=True)
    return failures, worst


def part_train(args) -> tuple[list[str], float]:
    """6 AdamW steps with distillation: mlkv train vs float64 here (same schedule as test_train)."""
    name, skw, tkw, alpha, T = CASES[0][0], CASES[0][1], CASES[0][2], 0.4, 1.5
    steps, batch, ctx = 6, 2, 16
    hp = dict(lr=3e-3, warmup=2, min_lr_ratio=0.1, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, clip=1.0)
    d = os.path.join(args.workdir, "train")
    scfg, sp = make(os.path.join(d, "student"), skw, 61)
    tcfg, tp = make(os.path.join(d, "teacher"), tkw, 62)
    rng = random.Random(63)
    tokens = [rng.randrange(VOCAB) for _ in range(200)]
    shard = os.path.join(d, "tokens.bin")
    write_shard(shard, tokens, VOCAB)

    # float64 reference
    p = {k: v.detach().clone() for k, v in sp.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p.items()}
    ref_log = []
    for s in range(steps):
        rows = R.batch_rows(tokens, s, batch, ctx)
        (loss, ce, kl), g = grads_of(scfg, p, tcfg, tp, rows, alpha, T)
        norm = math.sqrt(sum(float((x * x).sum()) for x in g.values()))
        scale = hp["clip"] / norm if norm > hp["clip"] else 1.0
        lr_s = R.lr_at(s, hp["lr"], hp["warmup"], steps, hp["min_lr_ratio"])
        t = s + 1
        for k in p:
            gk = g[k] * scale
            m[k] = hp["beta1"] * m[k] + (1 - hp["beta1"]) * gk
            v2[k] = hp["beta2"] * v2[k] + (1 - hp["beta2"]) * gk * gk
            m_hat, v_hat = m[k] / (1 - hp["beta1"] ** t), v2[k] / (1 - hp["beta2"] ** t)
            wd = hp["weight_decay"] if R.decays(k, p[k]) else 0.0
            p[k] = p[k] - lr_s * (m_hat / (torch.sqrt(v_hat) + hp["eps"]) + wd * p[k])
        ref_log.append(dict(loss=loss, ce=ce, kl=kl, grad_norm=norm))

    out = os.path.join(d, "trained")
    cmd = [args.mlkv, "train", "--init", os.path.join(d, "student"), "--teacher", os.path.join(d, "teacher"),
           "--distill-alpha", str(alpha), "--distill-temp", str(T), "--data", shard, "--out", out, "--overwrite",
           "--no-shuffle", "--steps", str(steps), "--batch", str(batch), "--ctx", str(ctx), "--lr", str(hp["lr"]),
           "--warmup", str(hp["warmup"]), "--min-lr-ratio", str(hp["min_lr_ratio"]),
           "--weight-decay", str(hp["weight_decay"]), "--beta1", str(hp["beta1"]), "--beta2", str(hp["beta2"]),
           "--adam-eps", str(hp["eps"]), "--clip", str(hp["clip"]), "--threads", "1", "--quiet"]
    try:
        run(cmd)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return [f"train: {e}"], 0.0
    with open(os.path.join(out, "train_log.jsonl")) as f:
        recs = [j for j in map(json.loads, f) if "loss" in j]
    failures = []
    if len(recs) != steps:
        return [f"train: {len(recs)} log records, expected {steps}"], 0.0
    errs = {key: max(rel(r[key], x[key]) for r, x in zip(recs, ref_log)) for key in ("loss", "ce", "kl", "grad_norm")}
    _, _, trained, _ = R.load_model(out)
    p = split_fused(scfg, p)
    p_errs = {k: normalised_err(*comparable(scfg, k, trained[k], p[k])) for k in trained}
    p_worst = max(p_errs, key=p_errs.get)
    p_err = p_errs[p_worst]
    print(f"\ntrain ({steps} AdamW steps, {name}, alpha {alpha}, T {T}): relative errors "
          + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()) + f"; parameters {p_err:.2e}; "
          f"objective {ref_log[0]['loss']:.4f} -> {ref_log[-1]['loss']:.4f}, kl {ref_log[0]['kl']:.4f} -> "
          f"{ref_log[-1]['kl']:.4f} (worst parameter {p_worst})", flush=True)
    for k, v in errs.items():
        if not v <= args.loss_tol:
            failures.append(f"train: {k} differs by {v:.3e} (relative) > {args.loss_tol:g}")
    if not p_err <= args.param_tol:
        failures.append(f"train: trained parameters differ by {p_err:.3e} (normalised) > {args.param_tol:g}")
    if not ref_log[-1]["kl"] < ref_log[0]["kl"]:
        failures.append("train: the KL to the teacher did not fall over the steps")
    return failures, max(errs.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--grads-tool", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--loss-tol", type=float, default=1e-6, help="bound on relative objective / CE / KL error")
    ap.add_argument("--tol", type=float, default=2e-5, help="bound on normalised gradient error")
    ap.add_argument("--param-tol", type=float, default=1e-4, help="bound on trained-parameter error")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    failures, worst = [], 0.0
    print(f"{'grads: student <- teacher':40s}")
    for i, case in enumerate(CASES):
        f, w = part_grads(args, case, i)
        failures += f
        worst = max(worst, w)
    f, w = part_train(args)
    failures += f
    worst = max(worst, w)
    print(f"\nlargest f32 error: {worst:.3e}; {time.time() - t0:.1f}s")
    if failures:
        print(f"\nFAILED ({len(failures)}):", file=sys.stderr)
        for x in failures:
            print("  " + x, file=sys.stderr)
        return 1
    print("reference_distill: all within bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
