#!/usr/bin/env python3
"""Side-by-side speed of two mlkv builds (an old one and a new one), in alternating runs.

For each measurement the two builds run one after the other, `--rounds` times, and the medians and
their ratio (new / old) are printed as a markdown table (and JSON with --json). Measurements:

  decode b1 f32 / f16   `mlkv bench --random pythia-160m --weights W --gen 64 --reps 5`: decode tok/s
  prefill 128           the same runs' prefill tok/s
  decode b16 ctx 2048   `--batch 16 --prompt 2032 --synthetic-context --gen 16 --reps 3` (context 2032..2048): decode tok/s
  ... q8_0 cache        the same with `--cache-type q8_0`
  prefill 512           `--prompt 512 --gen 1 --reps 3`: prefill tok/s
  train step            `bench/train_bench --ctx 256 --steps 3`: training tokens/s (Pythia-160M geometry)
  eval items/s          `mlkv eval MODEL piqa --limit N`: items/s (needs --eval-model, a model folder)

Usage:
  bench/ab_compare.py --old /path/old-build --new build [--rounds 5] [--eval-model DIR] [--only decode]
  bench/ab_compare.py --old build --new build --old-env MLKV_ISA=avx2 --new-env MLKV_ISA=avx512
                      (one build, two settings: the kernels' AVX2 path against the AVX-512 one)
A build folder holds bin/mlkv and bench/train_bench. Run it on a quiet machine: `mlkv bench` warns
when the load average says other work competes for the cores.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run_json(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)


def bench(build, args, env):
    return run_json([os.path.join(build, "bin", "mlkv"), "bench", "--random", "pythia-160m",
                     "--no-bandwidth", "--json"] + args, env)


def train_tok_s(build, env):
    out = subprocess.run([os.path.join(build, "bench", "train_bench"), "--ctx", "256", "--steps", "3",
                          "--threads", "2"], check=True, capture_output=True, text=True, env=env).stdout
    for line in out.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])["tokens_per_s"]
    raise RuntimeError("train_bench printed no JSON line")


def eval_items_s(build, model, limit, env):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "e.json")
        subprocess.run([os.path.join(build, "bin", "mlkv"), "eval", model, "piqa", "--limit", str(limit),
                        "--json", path], check=True, capture_output=True, env=env)
        with open(path) as f:
            return json.load(f)["results"]["piqa"]["items_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--eval-model", default="")
    ap.add_argument("--eval-limit", type=int, default=100)
    ap.add_argument("--only", default="", help="comma-separated measurement groups: decode,b16,b16q8,prefill,train,eval")
    ap.add_argument("--json", default="")
    ap.add_argument("--old-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable set for the old side's runs only (repeatable)")
    ap.add_argument("--new-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable set for the new side's runs only (repeatable)")
    a = ap.parse_args()
    base_env = dict(os.environ, MLKV_PROGRESS="0")
    side_env = {}
    for side, pairs in (("old", a.old_env), ("new", a.new_env)):
        e = dict(base_env)
        for kv in pairs:
            if "=" not in kv:
                ap.error(f"--{side}-env wants KEY=VALUE, got '{kv}'")
            k, v = kv.split("=", 1)
            e[k] = v
        side_env[side] = e
    groups = set(a.only.split(",")) if a.only else {"decode", "b16", "b16q8", "prefill", "train", "eval"}
    if not a.eval_model:
        groups.discard("eval")

    # name -> function(build, env) -> value, env being the side's environment
    def b1(w):
        return lambda b, env: bench(b, ["--weights", w, "--gen", "64", "--reps", "5"], env)
    measures = []
    if "decode" in groups:
        measures.append(("decode b1 f32 (tok/s)", b1("f32"), ["decode_tok_s", "prefill_tok_s"]))
        measures.append(("decode b1 f16 (tok/s)", b1("f16"), ["decode_tok_s"]))
    if "b16" in groups:
        measures.append(("decode b16 ctx 2048 (tok/s)", lambda b, env: bench(b, ["--batch", "16", "--prompt", "2032",
                         "--synthetic-context", "--gen", "16", "--reps", "3"], env), ["decode_tok_s"]))
    if "b16q8" in groups:
        measures.append(("decode b16 ctx 2048, q8_0 cache (tok/s)", lambda b, env: bench(b, ["--batch", "16", "--prompt",
                         "2032", "--synthetic-context", "--gen", "16", "--reps", "3", "--cache-type", "q8_0"],
                         env), ["decode_tok_s"]))
    if "prefill" in groups:
        measures.append(("prefill 512 (tok/s)", lambda b, env: bench(b, ["--prompt", "512", "--gen", "1", "--reps", "3"],
                         env), ["prefill_tok_s"]))
    if "train" in groups:
        measures.append(("train step ctx 256 (tok/s)", lambda b, env: {"v": train_tok_s(b, env)}, ["v"]))
    if "eval" in groups:
        measures.append((f"eval piqa (items/s)", lambda b, env: {"v": eval_items_s(b, a.eval_model, a.eval_limit, env)},
                         ["v"]))

    results = {}
    for name, fn, keys in measures:
        vals = {"old": {k: [] for k in keys}, "new": {k: [] for k in keys}}
        for r in range(a.rounds):
            for side, build in (("old", a.old), ("new", a.new)):
                res = fn(build, side_env[side])
                for k in keys:
                    vals[side][k].append(res[k])
            print(f"  {name} round {r + 1}: " + ", ".join(
                f"{side} {vals[side][keys[0]][-1]:.1f}" for side in ("old", "new")), file=sys.stderr)
        for k in keys:
            label = name if k in ("v", "decode_tok_s") or len(keys) == 1 else name.replace("decode b1 f32", "prefill 128")
            if k == "prefill_tok_s" and len(keys) > 1:
                label = "prefill 128 (tok/s)"
            o, n = statistics.median(vals["old"][k]), statistics.median(vals["new"][k])
            results[label] = {"old": o, "new": n, "ratio": n / o, "old_runs": vals["old"][k], "new_runs": vals["new"][k]}

    print(f"| measurement | old (median of {a.rounds}) | new (median of {a.rounds}) | new / old |")
    print("|---|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['old']:.1f} | {r['new']:.1f} | {r['ratio']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
