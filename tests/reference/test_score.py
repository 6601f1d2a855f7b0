#!/usr/bin/python3
"""Compare the engine's `mlkv score` with the PyTorch reference over a matrix of tiny random models.

For every case: write a model with mlkv_ref.make_model (fixed seed), draw two token sequences (a random
length in [20, 40] and the model's full context, 64), and compare the reference's float64 log-probs with
`mlkv score DIR --tokens ... --json` (full-sequence pass) and with `--cached` (token-by-token decoding)
by max absolute difference. Prints a table, the largest difference per dtype and overall, and exits 1
with the failing cases listed when any difference exceeds --tol or the engine fails.

--pre-post runs the sharing-semantics sanity test instead: for cross-layer sharing, "pre" and "post" must
give clearly different log-probs (reference and engine); for identity sharing they must be identical.

Without --mlkv only the reference runs (full pass vs its own cached pass), for working on the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlkv_ref as R  # noqa: E402

L, E, H, VOCAB, CTX = 4, 32, 4, 97, 64


def build_matrix() -> list[dict]:
    """The cases: name -> make_model kwargs plus the file dtype.

    Core: {gpt_neox, llama} x {MHA, GQA 4/2, MQA, MLKV m=L/2, MLKV m=1, irregular kv_source} x {pre, post}
    x {F32, BF16}. The secondary axes (NeoX parallel/sequential residual and rotary_pct 0.25/1.0, Llama
    tied/untied, NeoX fused/split layout for MHA) are spread over the core cases so that each value meets
    every sharing scheme, then a few extras: the authors' format, F16, kv_source written together with
    num_key_value_layers, layer counts where the owner rule's float division matters, other head sizes.
    """
    schemes = {
        "gpt_neox": [("mha", dict(kv_heads=4)), ("gqa", dict(kv_heads=2)), ("mqa", dict(kv_heads=1)),
                     ("mlkv-half", dict(kv_heads=4, kv_layers=2)), ("mlkv-1", dict(kv_heads=1, kv_layers=1)),
                     ("src0113", dict(kv_heads=2, kv_source=[0, 1, 1, 3]))],
        "llama": [("mha", dict(kv_heads=4)), ("gqa", dict(kv_heads=2)), ("mqa", dict(kv_heads=1)),
                  ("mlkv-half", dict(kv_heads=2, kv_layers=2)), ("mlkv-1", dict(kv_heads=4, kv_layers=1)),
                  ("src0101", dict(kv_heads=2, kv_source=[0, 1, 0, 1]))],
    }
    cases = []
    for fam, fam_schemes in schemes.items():
        for s, (sname, skw) in enumerate(fam_schemes):
            for p, share in enumerate(("pre", "post")):
                for d, dtype in enumerate(("F32", "BF16")):
                    kw = dict(family=fam, layers=L, embd=E, heads=H, vocab=VOCAB, ctx=CTX, share=share, **skw)
                    tag = []
                    if "kv_source" in skw and d == 1:  # also write num_key_value_layers (must agree)
                        kw["kv_layers"] = len(set(skw["kv_source"]))
                        tag.append("+m")
                    if fam == "gpt_neox":
                        kw["parallel"] = (s + p + d) % 2 == 0
                        kw["rotary_pct"] = 0.25 if (s + d) % 2 == 0 else 1.0
                        tag += ["par" if kw["parallel"] else "seq", f"rot{kw['rotary_pct']:g}"]
                        if sname == "mha":
                            kw["layout"] = "fused" if (p + d) % 2 == 0 else "split"
                            tag.append(kw["layout"])
                    else:
                        kw["tied"] = (s + p + d) % 2 == 1
                        tag.append("tied" if kw["tied"] else "untied")
                    cases.append(dict(name=f"{fam}/{sname}/{share}/{'-'.join(tag)}", dtype=dtype, kw=kw))
    neox = dict(family="gpt_neox", layers=L, embd=E, heads=H, vocab=VOCAB, ctx=CTX)
    llama = dict(family="llama", layers=L, embd=E, heads=H, vocab=VOCAB, ctx=CTX)
    extras = [
        # The MLKV authors' checkpoints: num_key_value_layers only, which means pre-RoPE sharing.
        ("gpt_neox/authors-m2/par-rot0.25", "F32", dict(neox, kv_heads=4, kv_layers=2, authors_format=True)),
        ("gpt_neox/authors-m1-g1/par-rot0.25", "BF16", dict(neox, kv_heads=1, kv_layers=1, authors_format=True)),
        ("gpt_neox/authors-m2-g2/seq-rot1", "F32", dict(neox, kv_heads=2, kv_layers=2, authors_format=True,
                                                         parallel=False, rotary_pct=1.0)),
        # F16 files.
        ("gpt_neox/mlkv-half-g2/pre/par-rot0.25", "F16", dict(neox, kv_heads=2, kv_layers=2, share="pre")),
        ("llama/mqa/post/tied", "F16", dict(llama, kv_heads=1, tied=True)),
        # kv_source spelled out for the m=L/2 map, together with num_key_value_layers.
        ("llama/src0022+m/post/untied", "F32", dict(llama, kv_heads=4, kv_source=[0, 0, 2, 2], kv_layers=2,
                                                    share="post")),
        ("gpt_neox/src0022/pre/seq-rot0.25", "BF16", dict(neox, kv_heads=2, kv_source=[0, 0, 2, 2], share="pre",
                                                          parallel=False)),
        # Layer counts where the owner rule's float division matters: L=6, m=4 -> owners 0,1,3,4;
        # L=5, m=2 -> owners 0,2.
        ("gpt_neox/L6-m4/pre/par-rot0.25", "F32", dict(neox, layers=6, kv_heads=2, kv_layers=4, share="pre")),
        ("gpt_neox/L6-m4/post/par-rot0.25", "BF16", dict(neox, layers=6, kv_heads=2, kv_layers=4, share="post")),
        ("llama/L5-m2/pre/untied", "F32", dict(llama, layers=5, kv_heads=1, kv_layers=2, share="pre")),
        # Other widths: Llama E=48 with 6 heads on 3 KV heads; NeoX E=64 head size 16.
        ("llama/E48-h6-g3-m3/post/tied", "F32", dict(llama, embd=48, heads=6, kv_heads=3, kv_layers=3,
                                                     share="post", tied=True)),
        ("gpt_neox/E64-mha/fused/par-rot0.25", "BF16", dict(neox, embd=64, kv_heads=4, layout="fused")),
        ("gpt_neox/E64-mlkv-half/pre/seq-rot0.5", "F32", dict(neox, embd=64, kv_heads=4, kv_layers=2, share="pre",
                                                              parallel=False, rotary_pct=0.5)),
        # rope_scaling. llama3 with original context 128: of the 4 frequency pairs of a head of 8, the
        # wavelengths 6.3, 62.8, 628, 6283 fall in the kept, blended, scaled, scaled bands.
        ("llama/rope-llama3-m2/post/untied", "F32", dict(llama, kv_heads=2, kv_layers=2, share="post", rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128})),
        ("gpt_neox/rope-linear4-m2/pre/par-rot1", "F32", dict(neox, kv_heads=1, kv_layers=2, share="pre",
                                                              rotary_pct=1.0,
                                                              rope_scaling={"type": "linear", "factor": 4.0})),
        # Llama with biases: mlp_bias (gate, up, down) and attention_bias (q, k, v, o), alone and both.
        ("llama/mlp-bias-m2/pre/untied", "F32", dict(llama, kv_heads=2, kv_layers=2, share="pre", mlp_bias=True)),
        ("llama/attn-bias-gqa/post/tied", "BF16", dict(llama, kv_heads=2, tied=True, attention_bias=True)),
        ("llama/both-bias-mlkv1/pre/untied", "F32", dict(llama, kv_heads=1, kv_layers=1, share="pre",
                                                          attention_bias=True, mlp_bias=True)),
    ]
    cases += [dict(name=n, dtype=dt, kw=kw) for n, dt, kw in extras]
    for i, c in enumerate(cases):
        c["seed"] = 1000 + i
    return cases


def run_engine(mlkv: str, model_dir: str, tokens: list[int], cached: bool, threads: int = 0) -> list[float]:
    """`mlkv score DIR --tokens "..." [--cached] --json [--threads N]` -> the logprobs (raises RuntimeError)."""
    cmd = [mlkv, "score", model_dir, "--tokens", " ".join(map(str, tokens))] + (["--cached"] if cached else [])
    cmd += ["--json"] + (["--threads", str(threads)] if threads > 0 else [])
    # Tiny models on a shared 2-core machine: OpenMP threads that spin while waiting turn a 20 ms run into
    # seconds when ctest or a build runs alongside, so let them sleep instead (unless the caller chose).
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out: {' '.join(cmd)}")
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n    stderr: {r.stderr.strip()[-600:]}")
    out = r.stdout.strip()
    for text in [out] + out.splitlines()[::-1]:  # the whole output, else its last JSON line
        try:
            return [float(x) for x in json.loads(text)["logprobs"]]
        except (ValueError, KeyError, TypeError):
            continue
    raise RuntimeError(f"no {{\"logprobs\": [...]}} on stdout of {' '.join(cmd)}: {out[-300:]!r}")


def max_abs_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        raise RuntimeError(f"length mismatch: engine {len(b)} values, reference {len(a)}")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def make_case(case: dict, workdir: str) -> tuple[str, R.Config, dict]:
    d = os.path.join(workdir, case["name"].replace("/", "_"))
    hf, params = R.make_model(seed=case["seed"], **case["kw"])
    R.save_model(d, hf, params, case["dtype"])
    cfg, _, loaded, _ = R.load_model(d)  # the reference scores exactly the values in the file
    return d, cfg, loaded


def run_score(args) -> int:
    cases = [c for c in build_matrix() if not args.filter or args.filter in c["name"]]
    print(f"{len(cases)} cases; engine: {args.mlkv or '(none: reference full vs cached only)'} "
          f"(--threads {','.join(map(str, args.threads))} in turn); tol {args.tol:g}")
    print(f"{'case':48s} {'dtype':5s} {'n':>3s} {'full':>9s} {'cached':>9s}  {'n':>3s} {'full':>9s} {'cached':>9s}")
    failures, worst, worst_by_dtype = [], 0.0, {}
    t0 = time.time()
    for ci, case in enumerate(cases):
        d, cfg, params = make_case(case, args.workdir)
        rng = random.Random(case["seed"])
        seqs = [[rng.randrange(cfg.n_vocab) for _ in range(rng.randint(20, 40))],
                [rng.randrange(cfg.n_vocab) for _ in range(cfg.n_ctx)]]
        cells, bad = [], []
        for si, toks in enumerate(seqs):
            ref = R.score(cfg, params, toks)
            threads = args.threads[(ci + si) % len(args.threads)]
            cells.append(f"{len(toks):3d}")
            for cached in (False, True):
                try:
                    got = run_engine(args.mlkv, d, toks, cached, threads) if args.mlkv else R.score(cfg, params, toks, cached)
                    diff = max_abs_diff(ref, got)
                except RuntimeError as e:
                    cells.append(f"{'ERROR':>9s}")
                    bad.append(f"n={len(toks)} {'cached' if cached else 'full'}: {e}")
                    continue
                worst = max(worst, diff)
                worst_by_dtype[case["dtype"]] = max(worst_by_dtype.get(case["dtype"], 0.0), diff)
                cells.append(f"{diff:9.2e}")
                if not diff <= args.tol:  # also catches NaN
                    bad.append(f"n={len(toks)} {'cached' if cached else 'full'}: max |diff| {diff:.3e} > {args.tol:g}")
        print(f"{case['name']:48s} {case['dtype']:5s} {cells[0]} {cells[1]} {cells[2]}  {cells[3]} {cells[4]} "
              f"{cells[5]}{'  FAIL' if bad else ''}", flush=True)
        failures += [f"{case['name']} [{case['dtype']}] {b}" for b in bad]
    per_dtype = ", ".join(f"{k} {v:.3e}" for k, v in sorted(worst_by_dtype.items()))
    print(f"max |diff| overall: {worst:.3e} (per dtype: {per_dtype}); bound {args.tol:g}; "
          f"{time.time() - t0:.1f}s")
    if failures:
        print(f"\nFAILED: {len(failures)} comparison(s) of {len(cases)} cases:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print("reference_score: all cases within bound")
    return 0


def run_pre_post(args) -> int:
    """pre vs post sharing: different for cross-layer sharing, identical for identity sharing."""
    pairs = [("gpt_neox/mlkv-half", dict(family="gpt_neox", kv_heads=2, kv_layers=2), True),
             ("llama/src0022", dict(family="llama", kv_heads=4, kv_source=[0, 0, 2, 2]), True),
             ("gpt_neox/mlkv-1-rot1", dict(family="gpt_neox", kv_heads=1, kv_layers=1, rotary_pct=1.0), True),
             ("gpt_neox/gqa-identity", dict(family="gpt_neox", kv_heads=2), False),
             ("llama/mha-identity", dict(family="llama", kv_heads=4), False)]
    rng = random.Random(7)
    toks = [rng.randrange(VOCAB) for _ in range(32)]
    failures = []
    print(f"{'case':28s} {'who':9s} {'max |pre - post|':>17s}  expect")
    for name, kw, should_differ in pairs:
        out = {}
        for share in ("pre", "post"):
            case = dict(name=f"prepost/{name}/{share}", dtype="F32", seed=77,
                        kw=dict(layers=L, embd=E, heads=H, vocab=VOCAB, ctx=CTX, share=share, **kw))
            d, cfg, params = make_case(case, args.workdir)
            out[("reference", share)] = R.score(cfg, params, toks)
            if args.mlkv:
                for cached in (False, True):
                    who = "engine" + ("/c" if cached else "")
                    try:
                        out[(who, share)] = run_engine(args.mlkv, d, toks, cached, args.threads[0])
                    except RuntimeError as e:
                        failures.append(f"{name} {who} {share}: {e}")
        for who in sorted({w for w, _ in out}):
            if (who, "pre") not in out or (who, "post") not in out:
                continue
            diff = max_abs_diff(out[(who, "pre")], out[(who, "post")])
            ok = diff > 1e-2 if should_differ else diff == 0.0
            print(f"{name:28s} {who:9s} {diff:17.3e}  {'> 1e-2' if should_differ else '== 0'}{'' if ok else '  FAIL'}")
            if not ok:
                failures.append(f"{name} {who}: max |pre - post| = {diff:.3e}, expected "
                                f"{'> 1e-2 (the semantics must matter)' if should_differ else 'exactly 0 (identity sharing)'}")
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print("reference_pre_post_differ: ok")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlkv", default=None, help="path of the mlkv binary (omit: reference only)")
    ap.add_argument("--workdir", required=True, help="scratch folder for the generated models")
    ap.add_argument("--tol", type=float, default=1e-4, help="max allowed |engine - reference| log-prob")
    ap.add_argument("--filter", default=None, help="run only cases whose name contains this")
    ap.add_argument("--threads", default="1,2",
                    help="engine --threads values, cycled over the sequences (0: the engine's default). One "
                         "thread keeps tiny models fast on a loaded machine; two exercise the threaded paths")
    ap.add_argument("--pre-post", action="store_true", help="run the pre/post sharing sanity test instead")
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(1)  # the reference's tensors are tiny: threads only add contention
    if args.mlkv and not os.access(args.mlkv, os.X_OK):
        print(f"error: mlkv binary {args.mlkv} not found or not executable", file=sys.stderr)
        return 2
    os.makedirs(args.workdir, exist_ok=True)
    return run_pre_post(args) if args.pre_post else run_score(args)


if __name__ == "__main__":
    sys.exit(main())
