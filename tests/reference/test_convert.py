#!/usr/bin/python3
"""Check `mlkv convert` against the independent PyTorch implementation of the conversion (mlkv_ref.convert).

For every case of a matrix (both families, fused and split GPT-NeoX layouts, MHA and GQA sources, F32 and
BF16 files, G and M by the authors' rule or an explicit kv_source, the pairwise / mean / owner merges, pre
and post sharing): write a random source with mlkv_ref.make_model, convert it with the engine
(`mlkv convert`) and with the reference (mlkv_ref.convert, float64), then compare

  weights    max |engine tensor - reference tensor| over every tensor (same names, same shapes, same config)
  ref lp     the reference's float64 log-probs of the engine's converted folder vs of the reference's
             converted folder: isolates the conversion (bound --tol, default 1e-5)
  engine lp  `mlkv score` of the engine's folder vs the reference's log-probs of its own folder: end to end,
             including the engine's f32 forward (bound --tol-e2e, default 1e-4, as test_score.py)

Identity conversions (G = n_head, M = n_layer) must give the engine's log-probs of the source exactly (fused
-> split included). Conversions that cannot be done must exit 1 with "mlkv: error:" and leave no output.
Widening with zero output weights must keep the log-probs; the parameter report must add up.

Exit status 0 when every check passes; 1 lists the failures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlkv_ref as R  # noqa: E402

L, E, H, VOCAB, CTX = 4, 32, 4, 97, 64


def cases() -> list[dict]:
    """name, source kwargs for make_model, dtype, convert kwargs (kv_heads, kv_layers, kv_source, merge, share)."""
    neox_fused = dict(family="gpt_neox", layers=L, embd=E, heads=H, kv_heads=H, layout="fused", parallel=True,
                      rotary_pct=0.25)
    neox_split = dict(family="gpt_neox", layers=L, embd=E, heads=H, kv_heads=H, layout="split", parallel=False,
                      rotary_pct=1.0)
    llama = dict(family="llama", layers=L, embd=E, heads=H, kv_heads=H)
    llama_tied_gqa = dict(family="llama", layers=L, embd=E, heads=H, kv_heads=2, tied=True)
    neox6 = dict(family="gpt_neox", layers=6, embd=E, heads=H, kv_heads=H, parallel=True, rotary_pct=0.5)
    llama6 = dict(family="llama", layers=6, embd=48, heads=6, kv_heads=6)
    out = []

    def add(name, src, dtype, **conv):
        out.append(dict(name=name, src=src, dtype=dtype, conv=conv))

    # Identity: G = n_head, M = n_layer (every merge is the identity).
    add("neox-fused/identity", neox_fused, "F32", kv_heads=H, kv_layers=L, merge="pairwise")
    add("neox-split/identity", neox_split, "BF16", kv_heads=H, kv_layers=L, merge="mean")
    add("llama/identity", llama, "F32", kv_heads=H, kv_layers=L, merge="owner")
    # GQA / MQA inside layers only.
    add("neox-fused/gqa2", neox_fused, "F32", kv_heads=2, merge="pairwise")
    add("llama/mqa", llama, "BF16", kv_heads=1, merge="pairwise")
    # MLKV: every merge, both sharing semantics, both families.
    for merge in ("pairwise", "mean", "owner"):
        for share in ("post", "pre"):
            add(f"neox-fused/m2g2/{merge}/{share}", neox_fused, "F32", kv_heads=2, kv_layers=2, merge=merge, share=share)
            add(f"llama/m2g4/{merge}/{share}", llama, "F32", kv_heads=4, kv_layers=2, merge=merge, share=share)
    # Groups of 4 layers (pairwise weights 1/8, 1/8, 1/4, 1/2) and of 3 (1/4, 1/4, 1/2).
    add("neox-split/m1g1/pairwise", neox_split, "F32", kv_heads=1, kv_layers=1, merge="pairwise", share="pre")
    add("llama/m1g2/mean", llama, "BF16", kv_heads=2, kv_layers=1, merge="mean")
    add("neox6/m2g1/pairwise", neox6, "F32", kv_heads=1, kv_layers=2, merge="pairwise")
    add("neox6/m4g2/mean (owners 0,1,3,4)", neox6, "BF16", kv_heads=2, kv_layers=4, merge="mean", share="pre")
    add("llama6-h6/m3g3/pairwise", llama6, "F32", kv_heads=3, kv_layers=3, merge="pairwise")
    # Irregular maps and a GQA, tied source.
    add("neox-fused/src0113/pairwise", neox_fused, "F32", kv_heads=4, kv_source=[0, 1, 1, 3], merge="pairwise")
    add("llama-gqa-tied/src0002/mean", llama_tied_gqa, "F32", kv_heads=1, kv_source=[0, 0, 0, 3], merge="mean")
    add("llama-gqa-tied/m2g2/owner", llama_tied_gqa, "BF16", kv_heads=2, kv_layers=2, merge="owner", share="pre")
    return out


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # tiny models on a busy 2-core machine: no spinning
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n    stderr: {r.stderr.strip()[-600:]}")
    return r


def engine_convert(mlkv: str, src: str, dst: str, conv: dict, extra: list[str] | None = None) -> dict:
    cmd = [mlkv, "convert", src, dst, "--json"]
    if conv.get("kv_heads"):
        cmd += ["--kv-heads", str(conv["kv_heads"])]
    if conv.get("kv_layers"):
        cmd += ["--kv-layers", str(conv["kv_layers"])]
    if conv.get("kv_source"):
        cmd += ["--kv-source", ",".join(map(str, conv["kv_source"]))]
    cmd += ["--merge", conv.get("merge", "pairwise"), "--share", conv.get("share", "post")] + (extra or [])
    return json.loads(run(cmd).stdout)


def engine_score(mlkv: str, model: str, toks: list[int]) -> list[float]:
    r = run([mlkv, "score", model, "--tokens", " ".join(map(str, toks)), "--json", "--threads", "1"])
    return [float(x) for x in json.loads(r.stdout)["logprobs"]]


def max_abs_diff(a, b) -> float:
    if len(a) != len(b):
        raise RuntimeError(f"length mismatch {len(a)} vs {len(b)}")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def check_cases(args, failures: list[str]) -> dict:
    worst = {"weights": 0.0, "ref_lp": 0.0, "engine_lp": 0.0}
    print(f"{'case':40s} {'dtype':5s} {'weights':>9s} {'ref lp':>9s} {'engine lp':>9s}")
    for i, case in enumerate(cases()):
        d = os.path.join(args.workdir, f"c{i:02d}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        hf, params = R.make_model(seed=500 + i, vocab=VOCAB, ctx=CTX, **case["src"])
        src = os.path.join(d, "src")
        R.save_model(src, hf, params, case["dtype"])
        conv = case["conv"]
        bad = []
        try:
            engine_convert(args.mlkv, src, os.path.join(d, "engine"), conv)
        except RuntimeError as e:
            failures.append(f"{case['name']}: engine convert failed: {e}")
            print(f"{case['name']:40s} {case['dtype']:5s} ERROR")
            continue
        cfg, hf_loaded, p, dtype = R.load_model(src)
        new_hf, new = R.convert(cfg, hf_loaded, p, conv.get("kv_heads"), conv.get("kv_layers"), conv.get("kv_source"),
                                conv.get("merge", "pairwise"), conv.get("share", "post"))
        R.save_model(os.path.join(d, "ref"), new_hf, new, dtype)
        ecfg, _, ep, _ = R.load_model(os.path.join(d, "engine"))
        rcfg, _, rp, _ = R.load_model(os.path.join(d, "ref"))
        for field in ("n_head_kv", "kv_source", "share_rope", "n_ff", "n_layer", "n_rot", "tied"):
            if getattr(ecfg, field) != getattr(rcfg, field):
                bad.append(f"config {field}: engine {getattr(ecfg, field)} vs reference {getattr(rcfg, field)}")
        if set(ep) != set(rp):
            bad.append(f"tensor names differ: engine-only {sorted(set(ep) - set(rp))}, "
                       f"reference-only {sorted(set(rp) - set(ep))}")
        w_diff = max((float((ep[k] - rp[k]).abs().max()) for k in ep if k in rp), default=0.0)
        rng = random.Random(i)
        toks = [rng.randrange(VOCAB) for _ in range(rng.randint(30, 60))]
        ref_lp = R.score(rcfg, rp, toks)
        ref_of_engine = R.score(ecfg, ep, toks)
        lp_diff = max_abs_diff(ref_lp, ref_of_engine)
        try:
            e2e = max_abs_diff(ref_lp, engine_score(args.mlkv, os.path.join(d, "engine"), toks))
        except RuntimeError as e:
            bad.append(f"engine score failed: {e}")
            e2e = float("nan")
        if not lp_diff <= args.tol:
            bad.append(f"reference log-probs of the engine's conversion differ by {lp_diff:.3e} > {args.tol:g}")
        if not e2e <= args.tol_e2e:
            bad.append(f"engine log-probs differ from the reference conversion by {e2e:.3e} > {args.tol_e2e:g}")
        if conv.get("kv_heads") == case["src"]["heads"] and conv.get("kv_layers") == case["src"]["layers"]:
            # Identity: exactly the source (fused -> split included).
            same = engine_score(args.mlkv, src, toks) == engine_score(args.mlkv, os.path.join(d, "engine"), toks)
            if not same:
                bad.append("identity conversion changed the engine's log-probs")
            if w_diff != 0.0:
                bad.append(f"identity conversion changed weights by {w_diff:.3e}")
        worst["weights"] = max(worst["weights"], w_diff)
        worst["ref_lp"] = max(worst["ref_lp"], lp_diff)
        worst["engine_lp"] = max(worst["engine_lp"], e2e) if e2e == e2e else worst["engine_lp"]
        print(f"{case['name']:40s} {case['dtype']:5s} {w_diff:9.2e} {lp_diff:9.2e} {e2e:9.2e}"
              f"{'  FAIL' if bad else ''}", flush=True)
        failures += [f"{case['name']}: {b}" for b in bad]
    return worst


def check_errors(args, failures: list[str]) -> None:
    """Impossible conversions: exit 1 (a misspelt option value: 2), a clear message, nothing written."""
    d = os.path.join(args.workdir, "errors")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    hf, params = R.make_model("llama", L, E, H, H, seed=1, vocab=VOCAB, ctx=CTX)
    R.save_model(os.path.join(d, "mha"), hf, params, "F32")
    hf, params = R.make_model("gpt_neox", L, E, H, H, kv_layers=2, seed=2, vocab=VOCAB, ctx=CTX)
    R.save_model(os.path.join(d, "shared"), hf, params, "F32")
    mha, shared = os.path.join(d, "mha"), os.path.join(d, "shared")
    bad_cases = [
        ("G not dividing n_head", mha, ["--kv-heads", "3"], "does not divide the number of attention heads"),
        ("M > n_layer", mha, ["--kv-layers", "5"], "out of range"),
        ("owners not starting at 0", mha, ["--owners", "1,3"], "must start at layer 0"),
        ("owner past the last layer", mha, ["--owners", "0,4"], "names layer 4"),
        ("kv_source pointing forward", mha, ["--kv-source", "0,2,2,3"], "points forward"),
        ("source already shares", shared, ["--kv-heads", "2"], "already shares K/V across layers"),
        ("two layer options", mha, ["--kv-layers", "2", "--owners", "0,2"], "at most one of"),
        ("unknown merge", mha, ["--merge", "sum"], "--merge: must be"),  # a usage error: exit 2
        ("missing source", os.path.join(d, "nope"), [], "neither a model folder"),
    ]
    for name, src, extra, needle in bad_cases:
        dst = os.path.join(d, "out")
        r = run([args.mlkv, "convert", src, dst] + extra, check=False)
        usage = needle.startswith("--")  # CLI11's "<option>: <why>" (exit 2)
        ok = (r.returncode == (2 if usage else 1) and (usage or "mlkv: error:" in r.stderr) and needle in r.stderr
              and not os.path.exists(dst))
        leftovers = [f for f in os.listdir(d) if f.startswith(".out.tmp")]
        print(f"error: {name:32s} exit {r.returncode}  {r.stderr.strip()[:90]}{'' if ok and not leftovers else '  FAIL'}")
        if not ok or leftovers:
            failures.append(f"error case '{name}': exit {r.returncode}, stderr {r.stderr.strip()!r}, "
                            f"output exists {os.path.exists(dst)}, temporaries {leftovers}")
    # An existing non-empty destination is refused without --force; --force replaces a model folder.
    dst = os.path.join(d, "dst")
    run([args.mlkv, "convert", mha, dst, "--kv-heads", "2"])
    r = run([args.mlkv, "convert", mha, dst, "--kv-heads", "1"], check=False)
    if r.returncode != 1 or "exists and is not empty" not in r.stderr:
        failures.append(f"existing destination not refused: {r.stderr.strip()!r}")
    run([args.mlkv, "convert", mha, dst, "--kv-heads", "1", "--force"])
    if R.load_model(dst)[0].n_head_kv != 1:
        failures.append("--force did not replace the destination")


def check_widen(args, failures: list[str]) -> None:
    """--widen-mlp zero keeps the function; the parameter report adds up; copy changes the function."""
    d = os.path.join(args.workdir, "widen")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for fam in ("gpt_neox", "llama"):
        hf, params = R.make_model(fam, L, E, H, H, seed=7, vocab=VOCAB, ctx=CTX)
        src = os.path.join(d, fam)
        R.save_model(src, hf, params, "F32")
        conv = dict(kv_heads=1, kv_layers=2, merge="mean")
        plain = engine_convert(args.mlkv, src, src + "-plain", conv)
        zero = engine_convert(args.mlkv, src, src + "-zero", conv, ["--widen-mlp", "zero"])
        copy = engine_convert(args.mlkv, src, src + "-copy", conv, ["--widen-mlp", "copy"])
        toks = [random.Random(3).randrange(VOCAB) for _ in range(40)]
        lp_plain = engine_score(args.mlkv, src + "-plain", toks)
        d_zero = max_abs_diff(lp_plain, engine_score(args.mlkv, src + "-zero", toks))
        d_copy = max_abs_diff(lp_plain, engine_score(args.mlkv, src + "-copy", toks))
        # The reference reads the widened folder too (its n_ff comes from config.json).
        cfg, _, p, _ = R.load_model(src + "-zero")
        cfg_p, _, pp, _ = R.load_model(src + "-plain")
        d_ref = max_abs_diff(R.score(cfg, p, toks), R.score(cfg_p, pp, toks))
        per_neuron = 3 * E if fam == "llama" else 2 * E + 1
        added = (zero["n_ff_after"] - zero["n_ff_before"]) * per_neuron * L
        print(f"widen {fam:9s} params {zero['params_before']} -> {zero['params_after_kv_drop']} -> "
              f"{zero['params_after']} (n_ff {zero['n_ff_before']} -> {zero['n_ff_after']}); "
              f"|zero - plain| engine {d_zero:.2e} reference {d_ref:.2e}; |copy - plain| {d_copy:.2e}")
        if not (d_zero <= 1e-5 and d_ref <= 1e-9):
            failures.append(f"widen zero ({fam}) changed the log-probs: engine {d_zero:.3e}, reference {d_ref:.3e}")
        if not d_copy > 1e-4:
            failures.append(f"widen copy ({fam}) did not change the function ({d_copy:.3e})")
        if zero["params_after"] != zero["params_after_kv_drop"] + added or \
                abs(zero["params_after"] - zero["params_before"]) > per_neuron * L // 2 or \
                plain["params_after"] != plain["params_after_kv_drop"] or copy["n_ff_after"] != zero["n_ff_after"]:
            failures.append(f"widen ({fam}): parameter report does not add up: {zero}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlkv", required=True, help="path of the mlkv binary")
    ap.add_argument("--workdir", required=True, help="scratch folder")
    ap.add_argument("--tol", type=float, default=1e-5, help="bound on |reference lp of engine conversion - of reference conversion|")
    ap.add_argument("--tol-e2e", type=float, default=1e-4, help="bound on |engine lp - reference lp| (f32 forward)")
    args = ap.parse_args()
    if not os.access(args.mlkv, os.X_OK):
        print(f"error: mlkv binary {args.mlkv} not found or not executable", file=sys.stderr)
        return 2
    torch_threads = R.torch.get_num_threads()
    R.torch.set_num_threads(1)
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    failures: list[str] = []
    worst = check_cases(args, failures)
    check_errors(args, failures)
    check_widen(args, failures)
    R.torch.set_num_threads(torch_threads)
    print(f"max |diff|: weights {worst['weights']:.3e}, reference log-probs {worst['ref_lp']:.3e} (bound {args.tol:g}), "
          f"engine log-probs {worst['engine_lp']:.3e} (bound {args.tol_e2e:g}); {time.time() - t0:.1f}s")
    if failures:
        print(f"\nFAILED: {len(failures)} check(s):", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print("reference_convert: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
