#!/usr/bin/python3
"""Self-checks of the mlkv_ref reference (run: `mlkv_ref.py selftest`, or this file directly).

The reference is the suite's source of truth, so it is checked against things that do not share its
code: torch's own AdamW and bfloat16 rounding, finite differences (gradcheck), a complex-number form of
rotary, the owner table of PAPER.md, and its own invariants (fused == split layout, identity sharing
makes pre == post, cached decoding == full recompute, identity conversion is a no-op).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlkv_ref as R  # noqa: E402

F64 = torch.float64


def _model(**kw):
    """A random model (cfg, params) straight from make_model, without touching the disk."""
    hf, params = R.make_model(**kw)
    return R.config_from_hf(hf), hf, params


def _rand_tokens(n, vocab=97, seed=0):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _max_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


def check_safetensors():
    x = torch.randn(3, 5, dtype=F64) * 3
    with tempfile.TemporaryDirectory() as d:
        for dt in ("F64", "F32", "F16", "BF16"):
            p = os.path.join(d, f"{dt}.safetensors")
            R.save_safetensors(p, {"a": x, "b.c": x[0]}, dt, {"loss": "1.5"})
            t, dts, meta = R.load_safetensors(p)
            want = {"F64": x, "F32": x.float().double(), "F16": x.half().double(),
                    "BF16": x.float().to(torch.bfloat16).double()}[dt]  # torch's own rounding
            assert torch.equal(t["a"], want) and torch.equal(t["b.c"], want[0]), dt
            assert dts == {"a": dt, "b.c": dt} and meta == {"loss": "1.5"}, (dts, meta)
            with open(p, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
            assert n % 8 == 0, "header must be padded to a multiple of 8"
        # Ties round to even, as torch does.
        ties = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8)], dtype=np.float32)
        got = R.bf16_bits_to_f32(R.f32_to_bf16_bits(ties))
        want = torch.from_numpy(ties).to(torch.bfloat16).float().numpy()
        assert np.array_equal(got, want), (got, want)
        bad = os.path.join(d, "bad.safetensors")
        with open(bad, "wb") as f:
            f.write((16).to_bytes(8, "little") + b'{"a":{"dtype":')
        try:
            R.load_safetensors(bad)
            raise AssertionError("truncated file accepted")
        except (ValueError, json.JSONDecodeError):
            pass


def check_owner_rule():
    table = {6: [0, 2, 4, 6, 8, 10], 4: [0, 3, 6, 9], 2: [0, 6], 1: [0]}  # PAPER.md, l = 12
    for m, owners in table.items():
        assert R.owners_from_kv_layers(12, m) == owners, m
    assert R.resolve_kv_source(4, 2, None) == [0, 0, 2, 2]
    assert R.resolve_kv_source(5, 2, None) == [0, 0, 2, 2, 2]  # int(5/2) = 2
    assert R.resolve_kv_source(4, None, None) == [0, 1, 2, 3]
    assert R.resolve_kv_source(4, 3, [0, 1, 1, 3]) == [0, 1, 1, 3]
    for bad_src, m in (([0, 0, 1, 2], None), ([1, 1, 2, 3], None), ([0, 0, 2], None), ([0, 0, 2, 2], 3)):
        try:
            R.resolve_kv_source(4, m, bad_src)
            raise AssertionError(f"kv_source {bad_src} accepted")
        except ValueError:
            pass
    # Authors' format: a gpt_neox config with num_key_value_layers and no kv_share_rope means "pre".
    hf, _ = R.make_model("gpt_neox", 4, 32, 4, 4, kv_layers=2, authors_format=True)
    assert "kv_share_rope" not in hf and "kv_source" not in hf and R.config_from_hf(hf).share_rope == "pre"
    hf, _ = R.make_model("llama", 4, 32, 4, 4, kv_layers=2)
    assert R.config_from_hf(hf).share_rope == "post"


def check_rope():
    """Rotate-half rotary == multiplying the complex numbers (x[i] + j x[i+half]) by e^(j pos inv_freq[i])."""
    cfg, _, _ = _model(family="gpt_neox", layers=1, embd=32, heads=2, kv_heads=2, rotary_pct=0.5)
    hd, n_rot, half = cfg.n_embd_head, cfg.n_rot, cfg.n_rot // 2
    x = torch.randn(1, 7, 2, hd, dtype=F64)
    pos = torch.arange(3, 10)
    cos, sin = R.rope_cos_sin(cfg, pos)
    got = R.apply_rope(x, cos, sin)
    z = torch.complex(x[..., :half], x[..., half:n_rot])
    theta = pos[:, None].double() * torch.tensor([10000.0 ** (-2 * i / n_rot) for i in range(half)], dtype=F64)
    z = z * torch.polar(torch.ones_like(theta), theta)[None, :, None, :]
    want = torch.cat([z.real, z.imag, x[..., n_rot:]], dim=-1)
    assert torch.allclose(got, want, atol=1e-12, rtol=0), (got - want).abs().max()


def check_ops():
    """The written-out ops against torch.nn.functional and a per-element attention loop."""
    F = torch.nn.functional
    x, w, b = torch.randn(3, 4, 10, dtype=F64), torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    assert torch.allclose(R.layer_norm(x, w, b, 1e-5), F.layer_norm(x, (10,), w, b, 1e-5), atol=1e-12)
    assert torch.allclose(R.gelu(x), F.gelu(x), atol=1e-14) and torch.allclose(R.silu(x), F.silu(x), atol=1e-14)
    rms = torch.stack([x[i, j] / math.sqrt(float((x[i, j] ** 2).mean()) + 1e-6) * w
                       for i in range(3) for j in range(4)]).reshape(3, 4, 10)
    assert torch.allclose(R.rms_norm(x, w, 1e-6), rms, atol=1e-12)
    # GQA attention with a query offset (a cache), element by element.
    q, k, v = torch.randn(1, 3, 4, 5, dtype=F64), torch.randn(1, 6, 2, 5, dtype=F64), torch.randn(1, 6, 2, 5, dtype=F64)
    got = R.attention(q, k, v, torch.arange(3, 6), torch.arange(6)).reshape(1, 3, 4, 5)
    for i in range(3):
        for h in range(4):
            kh = h // 2  # 4 query heads on 2 KV heads
            s = [float(q[0, i, h] @ k[0, j, kh]) / math.sqrt(5) for j in range(3 + i + 1)]
            p = [math.exp(t - max(s)) for t in s]
            out = sum(p[j] / sum(p) * v[0, j, kh] for j in range(len(p)))
            assert torch.allclose(got[0, i, h], out, atol=1e-12), (i, h)


def check_layouts_and_sharing():
    toks = _rand_tokens(30)
    for parallel in (True, False):
        kw = dict(family="gpt_neox", layers=4, embd=32, heads=4, kv_heads=4, parallel=parallel, seed=3)
        cf, _, pf = _model(layout="fused", **kw)
        cs, _, ps = _model(layout="split", **kw)
        assert R.is_fused(pf) and not R.is_fused(ps)
        assert R.score(cf, pf, toks) == R.score(cs, ps, toks), "fused and split layouts disagree"
    for fam in ("gpt_neox", "llama"):
        # Identity sharing: pre and post are the same model, bit for bit.
        kw = dict(family=fam, layers=4, embd=32, heads=4, kv_heads=2, seed=4)
        a = R.score(*_model(share="pre", **kw)[::2], toks)
        b = R.score(*_model(share="post", **kw)[::2], toks)
        assert a == b, "identity sharing: pre != post"
        # Cross-layer sharing: the semantics must matter.
        kw["kv_layers"] = 2
        a = R.score(*_model(share="pre", **kw)[::2], toks)
        b = R.score(*_model(share="post", **kw)[::2], toks)
        assert _max_diff(a, b) > 1e-2, f"{fam}: pre and post nearly equal ({_max_diff(a, b)})"


def check_cached_equals_full():
    toks = _rand_tokens(40, seed=5)
    cases = [dict(family="gpt_neox", kv_heads=4), dict(family="gpt_neox", kv_heads=2, kv_layers=2, share="pre"),
             dict(family="gpt_neox", kv_heads=1, kv_source=[0, 1, 1, 3], share="post", parallel=False,
                  rotary_pct=1.0),
             dict(family="llama", kv_heads=2, kv_layers=1, share="pre", tied=True),
             dict(family="llama", kv_heads=4, kv_source=[0, 0, 2, 2], share="post")]
    for kw in cases:
        cfg, _, params = _model(layers=4, embd=32, heads=4, seed=6, **kw)
        full = R.score(cfg, params, toks)
        inc = R.score(cfg, params, toks, cached=True)
        # Chunked prefill: 17 tokens, then 5, then one by one.
        t = torch.tensor([toks])
        cache: dict = {}
        with torch.no_grad():
            logits = torch.cat([R.forward(cfg, params, t[:, :17], cache), R.forward(cfg, params, t[:, 17:22], cache)]
                               + [R.forward(cfg, params, t[:, i:i + 1], cache) for i in range(22, 40)], dim=1)
        chunked = R.token_logprobs(logits, t)[0].tolist()
        assert _max_diff(full, inc) < 1e-12 and _max_diff(full, chunked) < 1e-12, kw


def check_gradcheck():
    """Autograd of the float64 forward vs central finite differences, on tiny models. Every element is
    perturbed for the two sharing-heavy models; the other two use gradcheck's fast mode (a random
    projection of the Jacobian, one perturbation per tensor), which any real mismatch fails too."""
    cases = [(dict(family="gpt_neox", kv_heads=1, kv_source=[0, 0, 2], share="pre", parallel=False), False),
             (dict(family="llama", kv_heads=1, kv_layers=2, share="post", tied=True), False),
             (dict(family="gpt_neox", kv_heads=2), True),                            # MHA: fused layout
             (dict(family="llama", kv_heads=2, kv_source=[0, 0, 0], share="pre"), True)]
    for kw, fast in cases:
        cfg, _, params = _model(layers=3, embd=8, heads=2, vocab=7, ff=8, ctx=8, seed=7,
                                rotary_pct=0.5, **kw)
        tokens = torch.tensor([[1, 5, 2, 6, 3], [4, 4, 0, 6, 2]])
        names = list(params)

        def f(*ts):
            return R.loss_fn(cfg, dict(zip(names, ts)), tokens)

        inputs = tuple(params[n].clone().requires_grad_(True) for n in names)
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast), kw


def check_fused_grads():
    kw = dict(family="gpt_neox", layers=2, embd=16, heads=2, kv_heads=2, seed=8, vocab=23, ctx=16)
    cf, _, pf = _model(layout="fused", **kw)
    cs, _, ps = _model(layout="split", **kw)
    tokens = torch.tensor([_rand_tokens(9, 23, 1), _rand_tokens(9, 23, 2)])
    lf, gf = R.loss_and_grads(cf, pf, tokens)
    ls, gs = R.loss_and_grads(cs, ps, tokens)
    assert abs(lf - ls) < 1e-13
    for layer in range(2):
        a = f"gpt_neox.layers.{layer}.attention."
        for suf in ("weight", "bias"):
            want = R.fuse_qkv(cf, *(gs[f"{a}{n}.{suf}"] for n in ("query", "key", "value")))
            assert torch.allclose(gf[f"{a}query_key_value.{suf}"], want, atol=1e-13, rtol=0)
    assert torch.allclose(gf["embed_out.weight"], gs["embed_out.weight"], atol=1e-13, rtol=0)


def check_adamw_against_torch():
    """Our AdamW + schedule + decay groups == torch.optim.AdamW driven by LambdaLR, clipping included."""
    cfg, _, params = _model(family="llama", layers=2, embd=16, heads=2, kv_heads=1, kv_layers=1, vocab=31,
                            ctx=16, seed=9, tied=True)
    tokens = _rand_tokens(200, 31, 3)
    steps, lr, warmup, batch, ctx = 7, 3e-3, 2, 2, 8
    for clip in (0.0, 0.5):
        ours, log = R.train(cfg, params, tokens, steps, lr, warmup, batch, ctx, 0.01, 0.9, 0.95, 1e-8, clip)
        tp = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        groups = [{"params": [t for k, t in tp.items() if R.decays(k, t)], "weight_decay": 0.01},
                  {"params": [t for k, t in tp.items() if not R.decays(k, t)], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: R.lr_at(s, lr, warmup, steps) / lr)
        for s in range(steps):
            opt.zero_grad()
            loss = R.loss_fn(cfg, tp, R.batch_rows(tokens, s, batch, ctx))
            loss.backward()
            norm = math.sqrt(sum(float((t.grad ** 2).sum()) for t in tp.values()))
            if clip > 0 and norm > clip:  # torch's clip_grad_norm_ adds 1e-6 to the norm; we do not
                for t in tp.values():
                    t.grad *= clip / norm
            assert abs(loss.item() - log["losses"][s]) < 1e-10, (s, loss.item(), log["losses"][s])
            opt.step()
            sched.step()
        for k in params:
            assert torch.allclose(ours[k], tp[k].detach(), atol=1e-12, rtol=0), (clip, k)
        if clip > 0:
            assert max(log["grad_norms"]) > clip, "clipping never triggered: the check proves nothing"
    # The schedule's end points.
    assert R.lr_at(0, 1.0, 4, 10) == 0.25 and R.lr_at(3, 1.0, 4, 10) == 1.0 and R.lr_at(4, 1.0, 4, 10) == 1.0
    assert abs(R.lr_at(10, 1.0, 4, 10) - 0.1) < 1e-15 and R.lr_at(0, 1.0, 0, 10) == 1.0
    # Rows tile the stream in order and wrap around.
    t = list(range(23))
    assert R.batch_rows(t, 0, 2, 5).tolist() == [t[0:6], t[5:11]]
    assert R.batch_rows(t, 2, 2, 5).tolist() == [t[0:6], t[5:11]]  # 4 rows in 23 tokens: rows 4,5 wrap


def check_training_learns():
    cfg, _, params = _model(family="gpt_neox", layers=2, embd=16, heads=2, kv_heads=1, kv_layers=1, vocab=13,
                            ctx=16, seed=10)
    tokens = [i % 13 for i in range(400)]  # a periodic stream is easy to learn
    _, log = R.train(cfg, params, tokens, 40, 1e-2, 5, 4, 12)
    assert log["losses"][-1] < 0.5 * log["losses"][0], log["losses"]


def check_convert():
    toks = _rand_tokens(25, seed=11)
    for fam, layout in (("gpt_neox", "fused"), ("gpt_neox", "split"), ("llama", None)):
        cfg, hf, params = _model(family=fam, layers=4, embd=32, heads=4, kv_heads=4, seed=12, layout=layout)
        # Identity conversion keeps the model exactly.
        for merge in ("pairwise", "mean", "owner"):
            nhf, nparams = R.convert(cfg, hf, params, 4, 4, None, merge, "post")
            ncfg = R.config_from_hf(nhf)
            assert not R.is_fused(nparams) and set(nparams) == set(R.expected_shapes(ncfg, False))
            assert _max_diff(R.score(cfg, params, toks), R.score(ncfg, nparams, toks)) < 1e-12
        # MLKV-2 with 2 KV heads: check the pooled and merged numbers by hand on layer 0's keys.
        nhf, nparams = R.convert(cfg, hf, params, 2, None, [0, 0, 0, 3], "pairwise", "pre")
        ncfg = R.config_from_hf(nhf)
        assert ncfg.kv_source == [0, 0, 0, 3] and ncfg.share_rope == "pre" and nhf["num_key_value_layers"] == 2
        kname = "gpt_neox.layers.{}.attention.key.weight" if fam == "gpt_neox" else "model.layers.{}.self_attn.k_proj.weight"
        assert kname.format(1) not in nparams and kname.format(3) in nparams
        ks = [R.attn_params(cfg, params, layer)["wk"].reshape(4, 8, 32) for layer in range(3)]
        pooled = [torch.stack([k[0:2].mean(0), k[2:4].mean(0)]) for k in ks]
        want = pooled[0] / 4 + pooled[1] / 4 + pooled[2] / 2
        assert torch.allclose(nparams[kname.format(0)].reshape(2, 8, 32), want, atol=1e-14, rtol=0)
        R.score(ncfg, nparams, toks)
    # Through the CLI and the disk: convert, then score the result.
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
        assert R.main(["make", "--family", "gpt_neox", "--kv-heads", "4", "--out", src]) == 0
        assert R.main(["convert", src, dst, "--kv-heads", "1", "--kv-layers", "2", "--merge", "mean"]) == 0
        cfg, hf, params, dtype = R.load_model(dst)
        assert cfg.kv_source == [0, 0, 2, 2] and cfg.n_head_kv == 1 and dtype == "F32"


def check_disk_roundtrip():
    """make -> disk -> load keeps the exact (rounded) values for every dtype; a bad file is refused."""
    with tempfile.TemporaryDirectory() as d:
        for dt in ("F32", "BF16", "F16"):
            out = os.path.join(d, dt)
            R.main(["make", "--family", "llama", "--kv-heads", "2", "--kv-layers", "2", "--tied", "1",
                    "--dtype", dt, "--seed", "13", "--out", out])
            cfg, hf, params, dtype = R.load_model(out)
            _, ref = R.make_model("llama", 4, 32, 4, 2, kv_layers=2, tied=True, seed=13)
            cast = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dt]
            assert dtype == dt and all(torch.equal(params[k], ref[k].to(cast).double()) for k in ref)
        # Unexpected extra K/V tensors in a non-owner layer must be rejected.
        cfg, hf, params, _ = R.load_model(os.path.join(d, "F32"))
        params["model.layers.1.self_attn.k_proj.weight"] = params["model.layers.0.self_attn.k_proj.weight"]
        R.save_model(os.path.join(d, "bad"), hf, params, "F32")
        try:
            R.load_model(os.path.join(d, "bad"))
            raise AssertionError("non-owner K/V accepted")
        except ValueError:
            pass


CHECKS = [check_safetensors, check_owner_rule, check_ops, check_rope, check_layouts_and_sharing, check_cached_equals_full,
          check_fused_grads, check_adamw_against_torch, check_training_learns, check_convert,
          check_disk_roundtrip, check_gradcheck]


def run_all() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy machine
    for check in CHECKS:
        t0 = time.time()
        check()
        print(f"ok  {check.__name__:32s} {time.time() - t0:6.2f}s")
    print("selftest: all checks passed")


if __name__ == "__main__":
    run_all()
