#!/usr/bin/python3
"""`mlkv convert --merge calibrated` and `--owners auto` end to end, on a model trained here in seconds on
the shipped TinyStories text (ctest `convert_calibrated`):

  never worse   for MQA, GQA and MLKV configurations the held-out loss (`mlkv eval` on the validation
                shard, disjoint from the calibration rows taken from the training shard) after
                `--merge calibrated` is at most `owner`'s, and where heads are pooled (MQA, MLKV-2 x 1) it
                wins back at least half of what `owner` loses against the source
  text / shard  a text file as calibration (tokenized with the model's tokenizer) works like a shard
  owners auto   a valid kv_source with M owners, layer 0 among them, its search cost no higher than the
                authors' rule's, reported in the JSON
  bad input     missing calibration file, too few calibration tokens, --merge calibrated without
                --calibration, --owners auto without --kv-layers, --calibration where nothing uses it,
                --owners auto with a group merge, a row longer than the model's context: exit 1 with
                `mlkv: error:` naming the problem, and nothing written

Exit 0 when all hold, 77 when the shared data is missing (ctest SKIP), 1 otherwise.

usage: test_convert_calibrated.py --mlkv build/bin/mlkv --shared ../shared --workdir DIR
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

SKIP = 77
FAILURES: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLKV_PROGRESS="0")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if ok and r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n{r.stderr.strip()[-800:]}")
    return r


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mlkv", required=True)
    p.add_argument("--shared", required=True)
    p.add_argument("--workdir", required=True)
    a = p.parse_args()
    text = os.path.join(a.shared, "data", "text", "tinystories_lower.txt")
    if not os.path.exists(text):
        print(f"SKIP: {text} not found")
        return SKIP
    wd = a.workdir
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    t0 = time.time()
    B = a.mlkv

    # A small corpus, its tokenizer, train/validation shards, and a 3-layer GPT-NeoX trained briefly.
    with open(text, encoding="utf-8") as f:
        corpus = f.read(600_000)
    small = os.path.join(wd, "small.txt")
    with open(small, "w", encoding="utf-8") as f:
        f.write(corpus)
    run([B, "tokenizer", "train", small, "--vocab", "512", "-o", os.path.join(wd, "tok")])
    data = os.path.join(wd, "data")
    run([B, "tokenize", small, "-t", os.path.join(wd, "tok"), "-o", data, "--val-fraction", "0.1",
         "--txt-docs", "blank"])
    model = os.path.join(wd, "m")
    run([B, "train", "--data", data, "-o", model, "--preset", "tiny-neox", "--layers", "3", "--embd", "64",
         "--heads", "4", "--model-ctx", "64", "--ctx", "64", "--batch", "16", "--tokens", "60000", "--lr",
         "4e-3", "--warmup-ratio", "0.05", "-t", "2", "-q"])
    train, val = os.path.join(data, "train_000.bin"), os.path.join(data, "val_000.bin")
    print(f"trained in {time.time() - t0:.1f} s")

    def loss(m: str) -> float:
        out = os.path.join(wd, os.path.basename(m) + ".eval.json")
        run([B, "eval", m, val, "--json", out, "-t", "2"])
        with open(out) as f:
            return next(iter(json.load(f)["results"].values()))["loss"]

    calib = ["--calibration", train, "--calibration-tokens", "8192"]

    def convert(name: str, args: list[str]) -> dict:
        out = os.path.join(wd, name)
        return json.loads(run([B, "convert", model, out, "--json", "--force"] + args).stdout)

    src_loss = loss(model)
    print(f"source loss {src_loss:.4f}")
    # (name, args, must be clearly better): heads pooled within layers (MQA, GQA), layers sharing.
    for name, args, clearly in [("mqa", ["--kv-heads", "1"], True),
                                ("gqa", ["--kv-heads", "2"], False),
                                ("m1g4", ["--kv-layers", "1"], False),
                                ("m2g1", ["--kv-layers", "2", "--kv-heads", "1"], True)]:
        convert(name + "-owner", args + ["--merge", "owner"])
        rep = convert(name + "-cal", args + ["--merge", "calibrated"] + calib)
        lo, lc = loss(os.path.join(wd, name + "-owner")), loss(os.path.join(wd, name + "-cal"))
        check(lc <= lo + 1e-4, f"{name}: calibrated {lc:.4f} <= owner {lo:.4f} on held-out text")
        if clearly:
            check(lo - lc >= 0.5 * (lo - src_loss) and lo > src_loss,
                  f"{name}: calibrated wins back {(lo - lc) / max(lo - src_loss, 1e-9):.0%} of owner's loss")
        cal = rep["calibration"]
        check(rep["merge"] == "calibrated" and cal["tokens"] == 8192 and cal["rows"] == 128 and
              cal["held_out_rows"] == 32 and len(cal["layers"]) == 3,
              f"{name}: the report describes the calibration ({cal['tokens']} tokens, {cal['rows']} rows)")
        check(all(l["error"] <= l["error_owner"] for l in cal["layers"]),
              f"{name}: no layer's held-out calibration error above owner's")

    # Text calibration: the model's tokenizer (copied into the model folder by training) encodes it.
    txt = os.path.join(wd, "calib.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write(corpus[:120_000])
    rep = convert("mqa-text", ["--kv-heads", "1", "--merge", "calibrated", "--calibration", txt])
    lt, lo = loss(os.path.join(wd, "mqa-text")), loss(os.path.join(wd, "mqa-owner"))
    check(rep["calibration"]["tokens"] >= 4 * 64 and lo - lt >= 0.5 * (lo - src_loss),
          f"text calibration ({rep['calibration']['tokens']} tokens): {lt:.4f} (owner {lo:.4f})")

    # --owners auto.
    for merge in ("owner", "calibrated"):
        rep = convert(f"auto-{merge}", ["--kv-layers", "2", "--owners", "auto", "--merge", merge] + calib)
        kv = rep["kv_source"]
        search = rep["calibration"]["owner_search"]
        check(len(kv) == 3 and kv[0] == 0 and len(set(kv)) == 2 and all(kv[kv[l]] == kv[l] <= l for l in range(3))
              and rep["n_kv_layers"] == 2 and search["total"] <= search["authors_rule_total"] + 1e-12,
              f"--owners auto --merge {merge}: kv_source {kv}, cost {search['total']:.4g} "
              f"(rule {search['authors_rule_total']:.4g})")

    # Bad input: exit 1, a message naming the problem, nothing written.
    tiny = os.path.join(wd, "tiny.txt")
    with open(tiny, "w") as f:
        f.write("once upon a time\n")
    bad = [
        (["--merge", "calibrated", "--calibration", os.path.join(wd, "nope.txt")], "does not exist"),
        (["--merge", "calibrated", "--calibration", tiny], "too few"),
        (["--merge", "calibrated", "--calibration", train, "--calibration-tokens", "100"], "too few"),
        (["--merge", "calibrated"], "--merge calibrated needs calibration text"),
        (["--owners", "auto", "--calibration", train], "--owners auto needs --kv-layers"),
        (["--kv-layers", "2", "--calibration", train], "--calibration is used only by"),
        (["--kv-layers", "2", "--owners", "auto", "--merge", "pairwise", "--calibration", train],
         "--owners auto needs --merge owner or calibrated"),
        (["--merge", "calibrated", "--calibration", train, "--calibration-ctx", "65"], "exceeds the model's context"),
    ]
    for args, msg in bad:
        out = os.path.join(wd, "bad-out")
        r = run([B, "convert", model, out] + args, ok=False)
        check(r.returncode == 1 and "mlkv: error:" in r.stderr and msg in r.stderr and not os.path.exists(out),
              f"convert {' '.join(args[-4:])}: exit {r.returncode}, {r.stderr.strip()[:150]!r}")
    r = run([B, "convert", model, os.path.join(wd, "bad-out"), "--calibration-tokens", "0"], ok=False)
    check(r.returncode == 2, f"--calibration-tokens 0 is a usage error (exit {r.returncode})")

    print(f"{len(FAILURES)} failure(s) in {time.time() - t0:.1f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
