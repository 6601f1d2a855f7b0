#!/usr/bin/python3
"""Decode throughput of PyTorch (python3-torch 1.13, float32, CPU) on Pythia-160M's geometry, written
the usual way (nn.Linear layers, a KV cache of concatenated tensors per layer, torch.inference_mode),
side by side with `mlkv bench` on the same geometry, threads and prompt.

    torch_decode_bench.py --mlkv build/bin/mlkv [--threads 2] [--prompt 128] [--gen 32] [--rounds 3]

Alternates torch and mlkv `--rounds` times and prints the medians and their ratio as a markdown row.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, E, H, n_rot, ff):
        super().__init__()
        self.H, self.d, self.n_rot = H, E // H, n_rot
        self.ln1, self.ln2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.qkv, self.o = nn.Linear(E, 3 * E), nn.Linear(E, E)
        self.up, self.down = nn.Linear(E, ff), nn.Linear(ff, E)

    def rope(self, x, cos, sin):
        r, rest = x[..., : self.n_rot], x[..., self.n_rot:]
        half = self.n_rot // 2
        rot = torch.cat([-r[..., half:], r[..., :half]], dim=-1)
        return torch.cat([r * cos + rot * sin, rest], dim=-1)

    def forward(self, x, cos, sin, cache):
        B, S, E = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, S, 3, self.H, self.d).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        if cache:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(self.d))
        if S > 1:
            T = k.shape[2]
            mask = torch.full((S, T), float("-inf")).triu(T - S + 1)
            scores = scores + mask
        a = torch.softmax(scores, dim=-1) @ v
        a = self.o(a.transpose(1, 2).reshape(B, S, E))
        return x + a + self.down(F.gelu(self.up(self.ln2(x)))), (k, v)


class Model(nn.Module):
    def __init__(self, V=50304, E=768, L=12, H=12, ctx=2048):
        super().__init__()
        d = E // H
        self.n_rot = d // 4
        self.embed = nn.Embedding(V, E)
        self.blocks = nn.ModuleList([Block(E, H, self.n_rot, 4 * E) for _ in range(L)])
        self.lnf = nn.LayerNorm(E)
        self.out = nn.Linear(E, V, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.n_rot, 2).float() / self.n_rot))
        f = torch.outer(torch.arange(ctx).float(), inv)
        emb = torch.cat([f, f], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, ids, pos0, caches):
        x = self.embed(ids)
        S = ids.shape[1]
        cos, sin = self.cos[pos0 : pos0 + S], self.sin[pos0 : pos0 + S]
        new = []
        for b, c in zip(self.blocks, caches):
            x, kv = b(x, cos, sin, c)
            new.append(kv)
        return self.out(self.lnf(x[:, -1])), new


def torch_run(model, prompt, gen):
    ids = torch.randint(0, 50304, (1, prompt))
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits, caches = model(ids, 0, [None] * len(model.blocks))
        t1 = time.perf_counter()
        tok = logits.argmax(-1, keepdim=True)
        for i in range(gen):
            logits, caches = model(tok, prompt + i, caches)
            tok = logits.argmax(-1, keepdim=True)
        t2 = time.perf_counter()
    return prompt / (t1 - t0), gen / (t2 - t1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--weights", default="f32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Model().eval()
    torch_run(model, 16, 4)  # warm-up
    tp, td, mp, md = [], [], [], []
    for _ in range(a.rounds):
        p, d = torch_run(model, a.prompt, a.gen)
        tp.append(p)
        td.append(d)
        r = subprocess.run([a.mlkv, "bench", "--random", "pythia-160m", "--prompt", str(a.prompt), "--gen",
                            str(a.gen), "--reps", "1", "--threads", str(a.threads), "--weights", a.weights,
                            "--no-bandwidth", "--json"], capture_output=True, text=True, check=True)
        j = json.loads(r.stdout)
        mp.append(j["prefill_tok_s"])
        md.append(j["decode_tok_s"])
    med = statistics.median
    print(f"torch  prefill {med(tp):7.1f} tok/s  decode {med(td):6.1f} tok/s   (runs: {', '.join(f'{x:.1f}' for x in td)})")
    print(f"mlkv   prefill {med(mp):7.1f} tok/s  decode {med(md):6.1f} tok/s   (runs: {', '.join(f'{x:.1f}' for x in md)})")
    print(f"| {a.threads} | {a.prompt} | {med(tp):.1f} | {med(mp):.1f} | {med(mp) / med(tp):.2f}x | "
          f"{med(td):.1f} | {med(md):.1f} | {med(md) / med(td):.2f}x |")


if __name__ == "__main__":
    main()
