#!/usr/bin/python3
"""mlkv_ref: the independent PyTorch reference for the mlkv engine (the test suite's source of truth).

What it is: a small, from-scratch float64 implementation of the two model families the engine runs
(GPT-NeoX/Pythia and Llama) with general cross-layer KV sharing (MLKV), read from and written to
Hugging Face layout (config.json + model.safetensors). It also holds the reference for gradients,
AdamW training and the MHA -> GQA/MLKV conversion recipe of PAPER.md.

What it is not: fast, or a copy of any other implementation. Every op is written out so it can be read
against the maths; gradients come from torch autograd on that forward (checked by gradcheck in
`selftest`). Nothing here shares code with the C++ engine.

CLI (see README.md next to this file):
    mlkv_ref.py make    --family gpt_neox|llama ... --out DIR      random tiny model
    mlkv_ref.py score   DIR --tokens "1 2 3"                      {"logprobs": [...]}
    mlkv_ref.py grads   DIR --tokens "1 2 3; 4 5 6" --out G.safetensors
    mlkv_ref.py train   DIR --tokens-file F --steps N ... --out DIR2
    mlkv_ref.py convert SRC DST --kv-heads G --kv-layers M ...
    mlkv_ref.py selftest
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

F64 = torch.float64

# Checkpoints and configs (safetensors, config.json, tensor layouts) live in mlkv_ref_io.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlkv_ref_io import *  # noqa: E402,F401,F403
from mlkv_ref_io import _neox_attn  # noqa: E402,F401

# ==================================================================================================
# The forward pass, every op written out.
# ==================================================================================================

def linear(x, w, b=None):
    """x [..., in] @ w[out, in]^T (+ b[out])."""
    y = x @ w.transpose(0, 1)
    return y if b is None else y + b


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def gelu(x):
    """Exact (erf) GELU, HF's "gelu"."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x):
    return x * torch.sigmoid(x)


def scale_inv_freq(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """config.json rope_scaling. linear: frequencies / factor. llama3: by wavelength 2 pi / f against
    the original context L0: longer than L0 / low_freq_factor -> f / factor; shorter than
    L0 / high_freq_factor -> f; in between a linear blend in s = (L0 / wavelength - low) / (high - low)
    of f / factor (weight 1 - s) and f (weight s)."""
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        return inv_freq / factor
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    L0 = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    s = ((L0 / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    blended = (1 - s) * inv_freq / factor + s * inv_freq
    return torch.where(wavelength > L0 / low, inv_freq / factor,
                       torch.where(wavelength < L0 / high, inv_freq, blended))


def rope_cos_sin(cfg: Config, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, n_rot] for integer positions pos [T]: inv_freq[i] = base^(-2i/n_rot),
    angle = pos * inv_freq[i], duplicated as cat(freqs, freqs) for the rotate-half layout."""
    half = cfg.n_rot // 2
    inv_freq = cfg.rope_base ** (-(2.0 * torch.arange(half, dtype=F64)) / cfg.n_rot)  # [half]
    inv_freq = scale_inv_freq(inv_freq, cfg.rope_scaling)
    ang = pos.to(F64)[:, None] * inv_freq[None, :]                                    # [T, half]
    ang = torch.cat([ang, ang], dim=-1)                                               # [T, n_rot]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary on the first n_rot dims of each head; the rest pass through.
    x [B, T, n_heads, hd], cos/sin [T, n_rot]."""
    n_rot = cos.shape[-1]
    xr, xpass = x[..., :n_rot], x[..., n_rot:]
    x1, x2 = xr[..., : n_rot // 2], xr[..., n_rot // 2:]
    rotated_half = torch.cat([-x2, x1], dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([xr * c + rotated_half * s, xpass], dim=-1)


def attention(q, k, v, pos_q, pos_k):
    """Causal softmax attention. q [B,Tq,H,hd]; k, v [B,Tk,G,hd] with G | H, query head h reading KV
    head h // (H/G) (repeat-interleave, as HF repeat_kv). Returns [B, Tq, H*hd]."""
    B, Tq, H, hd = q.shape
    rep = H // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    future = pos_k[None, :] > pos_q[:, None]                                # [Tq, Tk]
    scores = scores.masked_fill(future[None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, Tq, H * hd)


def _norm(cfg: Config, params: dict, prefix: str, x):
    if cfg.family == "llama":
        return rms_norm(x, params[prefix + ".weight"], cfg.norm_eps)
    return layer_norm(x, params[prefix + ".weight"], params[prefix + ".bias"], cfg.norm_eps)


def _mlp(cfg: Config, params: dict, layer: int, x):
    if cfg.family == "llama":
        p = f"model.layers.{layer}.mlp."
        b = params.get if cfg.mlp_bias else (lambda name: None)  # biases with mlp_bias
        gate = linear(x, params[p + "gate_proj.weight"], b(p + "gate_proj.bias"))
        up = linear(x, params[p + "up_proj.weight"], b(p + "up_proj.bias"))
        return linear(silu(gate) * up, params[p + "down_proj.weight"], b(p + "down_proj.bias"))
    p = f"gpt_neox.layers.{layer}.mlp."
    h = gelu(linear(x, params[p + "dense_h_to_4h.weight"], params[p + "dense_h_to_4h.bias"]))
    return linear(h, params[p + "dense_4h_to_h.weight"], params[p + "dense_4h_to_h.bias"])


def forward(cfg: Config, params: dict, tokens: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    """Logits [B, T, V] for tokens [B, T] (int64).

    cache: None for a plain full-sequence pass. For incremental decoding pass the same dict across
    calls (start with {}): it holds, per OWNER layer, k_pre (keys before rotary), k_post (after rotary)
    and v, each [B, T_so_far, G, hd], plus "pos" = number of tokens already seen. Storing both key forms
    keeps the reference obviously right for both sharing semantics; the engine stores only what it needs.
    """
    B, T = tokens.shape
    H, G, hd = cfg.n_head, cfg.n_head_kv, cfg.n_embd_head
    cache = {} if cache is None else cache
    pos0 = cache.get("pos", 0)
    pos_q = torch.arange(pos0, pos0 + T)
    pos_k = torch.arange(0, pos0 + T)
    cos, sin = rope_cos_sin(cfg, pos_q)

    embed = params["model.embed_tokens.weight" if cfg.family == "llama" else "gpt_neox.embed_in.weight"]
    x = embed[tokens]                                                         # [B, T, E]
    pre = "model.layers." if cfg.family == "llama" else "gpt_neox.layers."
    for layer in range(cfg.n_layer):
        w = attn_params(cfg, params, layer)
        h = _norm(cfg, params, f"{pre}{layer}.input_layernorm", x)
        q = apply_rope(linear(h, w["wq"], w["bq"]).reshape(B, T, H, hd), cos, sin)   # queries always rotated
        if cfg.owns_kv(layer):
            # The owner computes K/V from its own normed input; values are never rotated.
            k_pre = linear(h, w["wk"], w["bk"]).reshape(B, T, G, hd)
            v = linear(h, w["wv"], w["bv"]).reshape(B, T, G, hd)
            new = {"k_pre": k_pre, "k_post": apply_rope(k_pre, cos, sin), "v": v}
            old = cache.get(layer)
            cache[layer] = new if old is None else {n: torch.cat([old[n], new[n]], dim=1) for n in new}
        src = cfg.kv_source[layer]
        kv = cache[src]
        # The owner always attends with its rotated keys. A consumer uses the owner's rotated keys
        # ("post") or its unrotated ones ("pre", the authors' training semantics), never rotating them.
        k = kv["k_post"] if (src == layer or cfg.share_rope == "post") else kv["k_pre"]
        a = linear(attention(q, k, kv["v"], pos_q, pos_k), w["wo"], w["bo"])
        if cfg.parallel_residual:
            x = x + a + _mlp(cfg, params, layer, _norm(cfg, params, f"{pre}{layer}.post_attention_layernorm", x))
        else:
            x = x + a
            x = x + _mlp(cfg, params, layer, _norm(cfg, params, f"{pre}{layer}.post_attention_layernorm", x))
    cache["pos"] = pos0 + T

    if cfg.family == "llama":
        x = _norm(cfg, params, "model.norm", x)
        out_w = params["model.embed_tokens.weight"] if cfg.tied else params["lm_head.weight"]
    else:
        x = _norm(cfg, params, "gpt_neox.final_layer_norm", x)
        out_w = params["gpt_neox.embed_in.weight"] if cfg.tied else params["embed_out.weight"]
    return linear(x, out_w)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[:, i+1] | tokens[:, :i+1]) -> [B, T-1]."""
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    return lp.gather(-1, tokens[:, 1:, None])[..., 0]


def score(cfg: Config, params: dict, tokens: list[int], cached: bool = False) -> list[float]:
    """n-1 next-token log-probs of one sequence, float64. cached=True feeds one token at a time through
    the KV cache (a self-check of the incremental path; the default is plain full-sequence attention)."""
    _check_tokens(cfg, [tokens])
    t = torch.tensor([tokens], dtype=torch.int64)
    with torch.no_grad():
        if not cached:
            logits = forward(cfg, params, t)
        else:
            cache: dict = {}
            logits = torch.cat([forward(cfg, params, t[:, i:i + 1], cache) for i in range(t.shape[1])], dim=1)
    return token_logprobs(logits, t)[0].tolist()


def _check_tokens(cfg: Config, rows: list[list[int]]) -> None:
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("token rows must be non-empty and of equal length")
    if len(rows[0]) > cfg.n_ctx:
        raise ValueError(f"{len(rows[0])} tokens exceed max_position_embeddings {cfg.n_ctx}")
    bad = [t for r in rows for t in r if not 0 <= t < cfg.n_vocab]
    if bad:
        raise ValueError(f"token ids {bad[:5]} out of range [0, {cfg.n_vocab})")


# ==================================================================================================
# Loss, gradients, AdamW training.
# ==================================================================================================

def loss_fn(cfg: Config, params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all B*(T-1) next-token predictions of tokens [B, T]."""
    return -token_logprobs(forward(cfg, params, tokens), tokens).mean()


def loss_and_grads(cfg: Config, params: dict, tokens: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """float64 loss and d loss / d param for every parameter (file names, file layout)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss = loss_fn(cfg, leaves, tokens)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.item(), {k: g.detach() for k, g in zip(leaves, grads)}


def lr_at(step: int, lr: float, warmup: int, steps: int, min_ratio: float = 0.1) -> float:
    """Learning rate of step s in [0, N): linear warmup lr*(s+1)/W for s < W, then cosine decay from lr
    to min_ratio*lr: lr_min + (lr - lr_min) * 0.5 * (1 + cos(pi * (s - W) / max(1, N - W)))."""
    if step < warmup:
        return lr * (step + 1) / warmup
    lr_min = min_ratio * lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_rows(tokens: list[int], step: int, batch: int, ctx: int) -> torch.Tensor:
    """The B rows of step s, each ctx+1 tokens (inputs = row[:ctx], targets = row[1:]).
    Row r = s*B + b (b in [0, B)) starts at (r mod R) * ctx, with R = (len(tokens) - 1) // ctx rows in the
    file: consecutive rows tile the file in order (sharing one boundary token), wrapping around."""
    n_rows = (len(tokens) - 1) // ctx
    if n_rows < 1:
        raise ValueError(f"token file has {len(tokens)} tokens, need at least ctx+1 = {ctx + 1}")
    rows = []
    for b in range(batch):
        start = ((step * batch + b) % n_rows) * ctx
        rows.append(tokens[start:start + ctx + 1])
    return torch.tensor(rows, dtype=torch.int64)


def decays(name: str, t: torch.Tensor) -> bool:
    """Weight decay applies to matrices and embeddings (2-D), never to norm weights or biases (1-D)."""
    return t.dim() >= 2


def train(cfg: Config, params: dict, tokens: list[int], steps: int, lr: float, warmup: int, batch: int,
          ctx: int, weight_decay: float = 0.01, beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8,
          clip: float = 1.0, min_lr_ratio: float = 0.1) -> tuple[dict, dict]:
    """AdamW with decoupled weight decay, global-norm clipping and the lr_at schedule, in float64.
    Returns (new params, log {"losses", "lrs", "grad_norms"}). losses[s] is the loss of step s's batch
    at the parameters before step s's update; grad_norms[s] is the global norm before clipping."""
    if ctx > cfg.n_ctx:
        raise ValueError(f"ctx {ctx} exceeds max_position_embeddings {cfg.n_ctx}")
    p = {k: v.detach().clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p.items()}
    log = {"losses": [], "lrs": [], "grad_norms": []}
    for s in range(steps):
        rows = batch_rows(tokens, s, batch, ctx)
        bad = rows[(rows < 0) | (rows >= cfg.n_vocab)]
        if bad.numel():
            raise ValueError(f"token ids {bad[:5].tolist()} out of range [0, {cfg.n_vocab})")
        loss, g = loss_and_grads(cfg, p, rows)
        norm = math.sqrt(sum(float((x * x).sum()) for x in g.values()))
        scale = clip / norm if (clip > 0 and norm > clip) else 1.0
        lr_s = lr_at(s, lr, warmup, steps, min_lr_ratio)
        t = s + 1
        for k in p:
            gk = g[k] * scale
            m[k] = beta1 * m[k] + (1 - beta1) * gk
            v2[k] = beta2 * v2[k] + (1 - beta2) * gk * gk
            m_hat = m[k] / (1 - beta1 ** t)
            v_hat = v2[k] / (1 - beta2 ** t)
            wd = weight_decay if decays(k, p[k]) else 0.0
            # Decoupled decay: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), with p the old value.
            p[k] = p[k] - lr_s * (m_hat / (torch.sqrt(v_hat) + eps) + wd * p[k])
        log["losses"].append(loss)
        log["lrs"].append(lr_s)
        log["grad_norms"].append(norm)
    return p, log


# ==================================================================================================
# Conversion: MHA -> GQA / MLKV (PAPER.md recipe).
# ==================================================================================================

def pool_heads(w: torch.Tensor, n_from: int, n_to: int) -> torch.Tensor:
    """Mean-pool KV heads over contiguous groups: w [n_from*hd, ...] -> [n_to*hd, ...]."""
    if n_from % n_to:
        raise ValueError(f"cannot pool {n_from} KV heads into {n_to}")
    hd = w.shape[0] // n_from
    rest = w.shape[1:]
    return w.reshape(n_to, n_from // n_to, hd, *rest).mean(dim=1).reshape(n_to * hd, *rest)


def merge_layers(ws: list[torch.Tensor], how: str) -> torch.Tensor:
    """Merge one owner group's K (or V) tensors, given in layer order starting with the owner."""
    if how == "owner":
        return ws[0]
    if how == "mean":
        return torch.stack(ws).mean(dim=0)
    if how == "pairwise":  # the authors' running average: later layers weigh more (1/4, 1/4, 1/2)
        acc = ws[0]
        for w in ws[1:]:
            acc = (acc + w) / 2
        return acc
    raise ValueError(f"unknown merge {how!r}")


def convert(cfg: Config, hf: dict, params: dict, kv_heads: int | None, kv_layers: int | None,
            kv_source: list[int] | None, merge: str = "pairwise", share: str = "post") -> tuple[dict, dict]:
    """Returns (new HF config dict, new params in split layout). The source must own KV in every layer."""
    if cfg.kv_source != list(range(cfg.n_layer)):
        raise ValueError("convert needs a source whose every layer owns its KV")
    G = cfg.n_head_kv if kv_heads is None else kv_heads
    if cfg.n_head % G or cfg.n_head_kv % G:
        raise ValueError(f"--kv-heads {G} must divide the source's {cfg.n_head_kv} KV heads")
    src = resolve_kv_source(cfg.n_layer, kv_layers, kv_source)
    if share not in ("pre", "post"):
        raise ValueError("--share must be pre or post")

    # 1-2: split (if fused) and mean-pool heads, per layer, for weights and biases.
    pooled = []  # per layer: {"wk","bk","wv","bv"} (biases None for llama without attention_bias)
    for layer in range(cfg.n_layer):
        a = attn_params(cfg, params, layer)
        pooled.append({n: None if a[n] is None else pool_heads(a[n], cfg.n_head_kv, G)
                       for n in ("wk", "bk", "wv", "bv")})
    # 3: merge each owner's group across layers, in layer order from the owner.
    merged = {}
    for o in sorted(set(src)):
        group = [layer for layer in range(cfg.n_layer) if src[layer] == o]
        merged[o] = {n: None if pooled[o][n] is None else merge_layers([pooled[x][n] for x in group], merge)
                     for n in ("wk", "bk", "wv", "bv")}

    new_hf = dict(hf)
    new_hf.update(num_key_value_heads=G, num_key_value_layers=len(merged), kv_source=src, kv_share_rope=share)
    new_cfg = config_from_hf(new_hf)
    out = {}
    for name in expected_shapes(new_cfg, fused=False):  # canonical order; 4: non-owner K/V dropped
        out[name] = None
    for layer in range(cfg.n_layer):
        a = attn_params(cfg, params, layer)
        if cfg.family == "llama":
            p = f"model.layers.{layer}.self_attn."
            names = {"wq": p + "q_proj.weight", "wk": p + "k_proj.weight", "wv": p + "v_proj.weight"}
            if cfg.attn_bias:
                names.update(bq=p + "q_proj.bias", bk=p + "k_proj.bias", bv=p + "v_proj.bias")
        else:
            p = _neox_attn(layer)
            names = {"wq": p + "query.weight", "bq": p + "query.bias", "wk": p + "key.weight",
                     "bk": p + "key.bias", "wv": p + "value.weight", "bv": p + "value.bias"}
        for n, fname in names.items():
            if n in ("wq", "bq"):
                out[fname] = a[n]
            elif layer in merged:
                out[fname] = merged[layer][n]
    for name in out:
        if out[name] is None:
            out[name] = params[name]  # untouched tensors (embeddings, norms, MLP, output projections)
    return new_hf, out


# ==================================================================================================
# make: random tiny models.
# ==================================================================================================

def make_model(family: str, layers: int, embd: int, heads: int, kv_heads: int, kv_layers: int | None = None,
               kv_source: list[int] | None = None, share: str | None = None, parallel: bool = True,
               rotary_pct: float = 0.25, tied: bool = False, layout: str | None = None, vocab: int = 97,
               ff: int | None = None, ctx: int = 64, seed: int = 0, authors_format: bool = False,
               rope_base: float = 10000.0, rope_scaling: dict | None = None, attention_bias: bool = False,
               mlp_bias: bool = False) -> tuple[dict, dict]:
    """Returns (HF config dict, params). The random draw depends only on the model's shapes and seed,
    never on layout or dtype, so the fused and split files of one seed hold the same model."""
    ff = 4 * embd if ff is None else ff
    hf: dict = {"model_type": family, "vocab_size": vocab, "hidden_size": embd, "intermediate_size": ff,
                "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                "max_position_embeddings": ctx, "tie_word_embeddings": tied}
    if family == "gpt_neox":
        hf.update(architectures=["GPTNeoXForCausalLM"], rotary_pct=rotary_pct, rotary_emb_base=rope_base,
                  layer_norm_eps=1e-5, use_parallel_residual=parallel, hidden_act="gelu",
                  bos_token_id=0, eos_token_id=0)
    elif family == "llama":
        hf.update(architectures=["LlamaForCausalLM"], rms_norm_eps=1e-6, rope_theta=rope_base, hidden_act="silu",
                  attention_bias=attention_bias, mlp_bias=mlp_bias, bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(f"unknown family {family!r}")
    if rope_scaling is not None:
        hf["rope_scaling"] = rope_scaling
    if authors_format:
        if kv_layers is None or kv_source is not None or share is not None:
            raise ValueError("--authors-format takes --kv-layers only (no --kv-source, no --share)")
        hf["num_key_value_layers"] = kv_layers
    else:
        if kv_layers is not None:
            hf["num_key_value_layers"] = kv_layers
        if kv_source is not None:
            hf["kv_source"] = list(kv_source)
    cfg = config_from_hf(hf)
    identity = cfg.kv_source == list(range(layers))
    if not authors_format and (share is not None or not identity):
        hf["kv_share_rope"] = share or "post"
    cfg = config_from_hf(hf)
    if layout is None:
        layout = "fused" if fused_is_legal(cfg) else "split"
    if layout not in ("fused", "split") or (layout == "fused" and not fused_is_legal(cfg)):
        raise ValueError(f"layout {layout!r} not possible here (fused needs MHA gpt_neox, every layer owning KV)")
    if family == "llama" and layout == "fused":
        raise ValueError("llama has no fused layout")

    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return (torch.randn(*shape, generator=gen) * std + mean).to(F64)

    # Large enough weights that attention is far from uniform and rotary visibly matters.
    std = {"embed": 0.5, "q": 0.25, "k": 0.25, "v": 0.3, "o": 0.2, "fc": 0.2, "proj": 0.2, "out": 0.3}
    params: dict = {}
    for name, shape in expected_shapes(cfg, fused=False).items():
        if len(shape) == 1:
            is_norm_w = "layernorm.weight" in name or "norm.weight" in name
            params[name] = normal(shape, 0.1, 1.0) if is_norm_w else normal(shape, 0.1)
            continue
        kind = ("embed" if "embed" in name and name != "embed_out.weight" else
                "out" if name in ("embed_out.weight", "lm_head.weight") else
                "q" if ("query" in name or "q_proj" in name) else
                "k" if ("key" in name or "k_proj" in name) else
                "v" if ("value" in name or "v_proj" in name) else
                "o" if ("dense.weight" in name and "attention" in name) or "o_proj" in name else
                "proj" if ("4h_to_h" in name or "down_proj" in name) else "fc")
        params[name] = normal(shape, std[kind])
    if layout == "fused":
        for layer in range(layers):
            a = _neox_attn(layer)
            for suffix in ("weight", "bias"):
                q, k, v = (params.pop(f"{a}{n}.{suffix}") for n in ("query", "key", "value"))
                params[f"{a}query_key_value.{suffix}"] = fuse_qkv(cfg, q, k, v)
        params = {n: params[n] for n in expected_shapes(cfg, fused=True)}
    return hf, params


# ==================================================================================================
# CLI
# ==================================================================================================

def parse_tokens(s: str) -> list[list[int]]:
    """'1 2 3' -> [[1,2,3]]; '1 2 3; 4 5 6' -> two rows. Commas also separate tokens."""
    rows = [r.replace(",", " ").split() for r in s.split(";")]
    return [[int(t) for t in r] for r in rows if r]


def _int_list(s: str | None) -> list[int] | None:
    return None if s is None else [int(x) for x in s.replace(",", " ").split()]


def cmd_make(a) -> None:
    hf, params = make_model(a.family, a.layers, a.embd, a.heads, a.kv_heads if a.kv_heads else a.heads,
                            a.kv_layers, _int_list(a.kv_source), a.share, bool(a.parallel_residual),
                            a.rotary_pct, bool(a.tied), a.layout, a.vocab, a.ff, a.ctx, a.seed,
                            a.authors_format, a.rope_base,
                            json.loads(a.rope_scaling) if a.rope_scaling else None,
                            bool(a.attention_bias), bool(a.mlp_bias))
    save_model(a.out, hf, params, a.dtype)


def cmd_score(a) -> None:
    cfg, _, params, _ = load_model(a.model)
    rows = parse_tokens(a.tokens)
    if len(rows) != 1:
        raise ValueError("score takes one token sequence")
    print(json.dumps({"logprobs": score(cfg, params, rows[0], cached=a.cached)}))


def cmd_grads(a) -> None:
    cfg, _, params, _ = load_model(a.model)
    rows = parse_tokens(a.tokens)
    _check_tokens(cfg, rows)
    if len(rows[0]) < 2:
        raise ValueError("need at least 2 tokens per row")
    loss, grads = loss_and_grads(cfg, params, torch.tensor(rows, dtype=torch.int64))
    save_safetensors(a.out, grads, a.dtype, {"loss": repr(loss)})
    print(json.dumps({"loss": loss}))


def read_token_file(path: str) -> list[int]:
    """Whitespace-separated integer token ids (any line layout)."""
    with open(path) as f:
        return [int(t) for t in f.read().split()]


def cmd_train(a) -> None:
    cfg, hf, params, _ = load_model(a.model)
    new, log = train(cfg, params, read_token_file(a.tokens_file), a.steps, a.lr, a.warmup, a.batch, a.ctx,
                     a.weight_decay, a.beta1, a.beta2, a.eps, a.clip, a.min_lr_ratio)
    if a.out:
        save_model(a.out, hf, new, a.out_dtype)
    print(json.dumps(log))


def cmd_convert(a) -> None:
    cfg, hf, params, dtype = load_model(a.src)
    new_hf, new = convert(cfg, hf, params, a.kv_heads, a.kv_layers, _int_list(a.kv_source), a.merge, a.share)
    save_model(a.dst, new_hf, new, a.dtype or dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mlkv_ref.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("make", help="write a random tiny model (config.json + model.safetensors)")
    m.add_argument("--family", choices=["gpt_neox", "llama"], required=True)
    m.add_argument("--layers", type=int, default=4)
    m.add_argument("--embd", type=int, default=32)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    m.add_argument("--kv-layers", type=int, default=None, help="num_key_value_layers (authors' owner rule)")
    m.add_argument("--kv-source", default=None, help="explicit layer->owner map, e.g. 0,0,2,2")
    m.add_argument("--share", choices=["post", "pre"], default=None, help="kv_share_rope (default post)")
    m.add_argument("--parallel-residual", type=int, choices=[0, 1], default=1)
    m.add_argument("--rotary-pct", type=float, default=0.25)
    m.add_argument("--rope-base", type=float, default=10000.0)
    m.add_argument("--rope-scaling", default=None, help='config.json rope_scaling as JSON, e.g. {"rope_type": "linear", "factor": 4}')
    m.add_argument("--tied", type=int, choices=[0, 1], default=0)
    m.add_argument("--attention-bias", type=int, choices=[0, 1], default=0, help="llama: q/k/v/o biases")
    m.add_argument("--mlp-bias", type=int, choices=[0, 1], default=0, help="llama: gate/up/down biases")
    m.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="F32")
    m.add_argument("--layout", choices=["fused", "split"], default=None,
                   help="gpt_neox qkv layout (default: fused when legal, else split)")
    m.add_argument("--vocab", type=int, default=97)
    m.add_argument("--ff", type=int, default=None, help="intermediate_size (default 4*embd)")
    m.add_argument("--ctx", type=int, default=64)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--authors-format", action="store_true",
                   help="num_key_value_layers only, no kv_source, no kv_share_rope (gpt_neox: means pre)")
    m.add_argument("--out", required=True)
    m.set_defaults(fn=cmd_make)

    s = sub.add_parser("score", help="print {\"logprobs\": [...]} for one token sequence")
    s.add_argument("model")
    s.add_argument("--tokens", required=True)
    s.add_argument("--cached", action="store_true", help="one token at a time through the KV cache")
    s.set_defaults(fn=cmd_score)

    g = sub.add_parser("grads", help="loss and every parameter's gradient -> safetensors")
    g.add_argument("model")
    g.add_argument("--tokens", required=True, help='"1 2 3" or rows of equal length "1 2 3; 4 5 6"')
    g.add_argument("--out", required=True)
    g.add_argument("--dtype", choices=["F32", "F64"], default="F32")
    g.set_defaults(fn=cmd_grads)

    t = sub.add_parser("train", help="AdamW training reference; prints {\"losses\": [...], ...}")
    t.add_argument("model")
    t.add_argument("--tokens-file", required=True, help="whitespace-separated token ids")
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--lr", type=float, default=6e-4)
    t.add_argument("--warmup", type=int, default=0)
    t.add_argument("--min-lr-ratio", type=float, default=0.1)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--ctx", type=int, required=True)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--eps", type=float, default=1e-8)
    t.add_argument("--clip", type=float, default=1.0, help="global grad-norm clip (0: off)")
    t.add_argument("--out", default=None, help="write the trained model to this folder")
    t.add_argument("--out-dtype", choices=["F32", "F64", "BF16", "F16"], default="F32")
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("convert", help="MHA -> GQA/MLKV conversion (PAPER.md recipe)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--kv-heads", type=int, default=None)
    c.add_argument("--kv-layers", type=int, default=None)
    c.add_argument("--kv-source", default=None)
    c.add_argument("--merge", choices=["pairwise", "mean", "owner"], default="pairwise")
    c.add_argument("--share", choices=["post", "pre"], default="post")
    c.add_argument("--dtype", choices=["F32", "BF16", "F16", "F64"], default=None, help="default: source's")
    c.set_defaults(fn=cmd_convert)

    st = sub.add_parser("selftest", help="check the reference against itself, torch and finite differences")
    st.set_defaults(fn=lambda a: __import__("mlkv_ref_selftest").run_all())

    a = ap.parse_args(argv)
    try:
        a.fn(a)
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"mlkv_ref.py {a.cmd}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
