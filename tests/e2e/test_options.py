#!/usr/bin/env python3
"""Every numeric option of every `mlkv` subcommand has an allowed range (ctest `e2e_options`).

1. Walks `mlkv <subcommand> --help`: every option of a numeric type (INT, UINT, FLOAT) must carry a
   range check (CLI11 shows it after the type, "INT:>= 1") or be listed in ANY_VALUE (a seed).
   A numeric option added later without a range makes this fail.
2. Gives each one values outside its range (negative, zero where 0 is not allowed, above the top,
   NaN, inf, not a number): exit 2 (usage error) and a message naming the option, the value and
   the allowed range - never exit 0 with the value applied or silently read as "not given".
3. Range rules that depend on other options are checked in the command: exit 1 with
   "mlkv: error:" naming the options (e.g. --warmup beyond --steps).
4. Every text option that names one of a set of things (a KV-cache format, a weight format, a
   device, a strategy, a preset: NAMED) refuses a misspelt, wrongly cased or empty value the same
   way: exit 2 with "<option>: " and what is allowed, before anything loads. Every other text
   option is listed in FREE_TEXT (paths, prompts, lists), so an enumerated option added later
   without a check makes this fail.

usage: test_options.py --mlkv build/bin/mlkv --workdir DIR
"""
import argparse
import os
import re
import struct
import subprocess
import sys

FAILURES = []

# Subcommands with numeric options, and the arguments that make the rest of the line valid.
SUBCOMMANDS = {
    "info": ["MODEL"],
    "score": ["MODEL"],
    "generate": ["MODEL"],
    "bench": [],
    "serve": ["MODEL"],
    "eval": ["MODEL"],
    "tokenize": ["-t", "TOK", "-o", "OUT", "IN.txt"],
    "tokenizer train": ["--vocab", "300", "-o", "OUT", "IN.txt"],
    "tokenizer encode": ["-t", "TOK"],
    "tokenizer decode": ["-t", "TOK"],
    "tokenizer info": ["-t", "TOK"],
    "train": ["--data", "DATA", "--out", "OUT"],
    "plot": ["RUN", "-o", "OUT.svg"],
    "convert": ["SRC", "DST"],
}

# Numeric options that take any value of their type (none: a seed, too, refuses -1, which an
# unsigned option would otherwise read as 2^64 - 1).
ANY_VALUE = set()

# Bad values per range (the range as CLI11's help shows it).
BAD = {
    ">= 0": ["-1", "nan", "abc"],
    ">= 1": ["0", "-3", "inf"],
    "> 0": ["0", "-1e-3", "nan", "inf"],
    ">= 260": ["259", "0"],
    "in [0, 1]": ["-0.1", "1.5", "nan"],
    "in [0, 1)": ["-0.1", "1", "inf"],
    "in (0, 1]": ["0", "1.01", "nan"],
    "in [0, 65535]": ["-1", "65536"],
    "in [0, 2^64 - 1]": ["-1", "18446744073709551616", "1.5", "abc"],
    "INT in [0 - 2147483647]": ["-5"],
    "in [1, 4096]": ["0", "4097", "-1"],
    "in [0, 4096]": ["-1", "4097"],
    "in [0, 86400]": ["-1", "86401", "nan"],
}

OPTION = re.compile(r"^(?:-\w,)?(--[a-z][a-z0-9-]*)\s+(INT|UINT|FLOAT)\b(.*)$")


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def numeric_options(mlkv, sub):
    r = run([mlkv, *sub.split(), "--help"])
    assert r.returncode == 0, r.stderr
    opts = []
    for line in r.stdout.splitlines():
        m = OPTION.match(re.split(r"\s{2,}", line.strip())[0])
        if not m:
            continue
        # After the type: ":<range>", then "=<default>", " REQUIRED", " Excludes: ...".
        rest = re.split(r" REQUIRED| Excludes:| Needs:", m.group(3))[0]
        rng = re.split(r"(?<![<>])=", rest[1:] if rest.startswith(":") else "")[0]
        opts.append((m.group(1), m.group(2), rng.strip()))
    return opts


# Text options that name one of a set of things, with a valid value (whose other case must fail too).
NAMED = {
    "--cache-type": "q8_0", "--cache-type-k": "q8_0", "--cache-type-v": "f16", "--weights": "bf16",
    "--device": "cpu", "--kl-base": "f32", "--sweep-cache": "f16", "--random": "tiny-neox",
    "--preset": None, "--share": "post", "--schedule": "cosine", "--dtype": "f16", "--precision": "bf16",
    "--merge": "mean", "--widen-mlp": "copy", "--calibration-stream": "source", "--template": "plain",
    "--model-type": "unigram", "--chat-template": "chatml",
}
# Text options whose value is free: paths, text, token ids, lists and maps checked in the command.
FREE_TEXT = {
    "--kv-budget", "--tokenizer", "-t", "--out", "-o", "--txt-docs", "--text-field", "--text", "--shard",
    "--task", "--eval-dir", "--json", "--tokens", "--prompt", "-p", "--host", "--model-name", "--api-key",
    "--data-root", "--configs", "--labels", "--title", "--data", "--init", "--teacher", "--kv-source",
    "--val", "--owners", "--calibration", "--sweep-configs", "--sweep-out",
}
TEXT_OPTION = re.compile(r"^((?:-\w,)?--[\w-]+|-\w)\s+TEXT")


def named_options(mlkv, wd):
    walked = 0
    for sub, rest in {**SUBCOMMANDS, "reproduce": ["--out", "OUT"]}.items():
        r = run([mlkv, *sub.split(), "--help"])
        for line in r.stdout.splitlines():
            m = TEXT_OPTION.match(line.strip())
            if not m:
                continue
            names = m.group(1).split(",")
            name = names[-1]
            if any(n in FREE_TEXT for n in names):
                continue
            check(name in NAMED, f"{sub} {name}: a text option in neither NAMED nor FREE_TEXT")
            good = NAMED.get(name)
            bad = ["bogus", ""] + ([good.upper()] if good and good.upper() != good else [])
            for value in bad:
                dst = os.path.join(wd, "never-written")
                args = [x if x not in ("OUT", "DST") else dst for x in rest]
                r2 = run([mlkv, *sub.split(), *args, name, value])
                said = r2.stderr.splitlines()[0] if r2.stderr else ""
                ok = (r2.returncode == 2 and said.startswith(f"{name}: ") and (value in said or "empty" in said)
                      and not os.path.exists(dst))
                check(ok, f"{sub} {name} {value!r}: exit {r2.returncode}, {said!r}")
                walked += 1
    check(walked > 60, f"{walked} misspelt names walked")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    walked = 0
    for sub, rest in SUBCOMMANDS.items():
        for name, typ, rng in numeric_options(a.mlkv, sub):
            if (sub, name) in ANY_VALUE:
                check(rng == "", f"{sub} {name} ({typ}): any value")
                continue
            check(rng in BAD, f"{sub} {name} ({typ}) has a range: {rng!r}")
            for value in BAD.get(rng, []):
                dst = os.path.join(a.workdir, "never-written")
                args = [x if x not in ("OUT", "DST") else dst for x in rest]
                r = run([a.mlkv, *sub.split(), *args, f"{name}={value}"])
                said = r.stderr.splitlines()[0] if r.stderr else ""
                ok = (r.returncode == 2 and said.startswith(f"{name}: ") and value in said and ("range" in said or "allowed" in said)
                      and not os.path.exists(dst))
                check(ok, f"{sub} {name}={value}: exit {r.returncode}, {said!r}")
                walked += 1
    check(walked > 100, f"{walked} bad values walked")
    named_options(a.mlkv, a.workdir)

    # 0 meant "not given" for convert's --kv-heads: an explicit 0 no longer writes an unconverted copy.
    dst = os.path.join(a.workdir, "convert-out")
    r = run([a.mlkv, "convert", "SRC", dst, "--kv-heads", "0"])
    check(r.returncode == 2 and "--kv-heads: 0 is out of range (allowed: >= 1)" in r.stderr
          and not os.path.exists(dst), f"convert --kv-heads 0: exit {r.returncode}, {r.stderr.strip()[:80]!r}")
    # Options that exclude each other, and ranges that depend on other options.
    for args, code, needle in [
        (["train", "--data", "D", "--out", "O", "--steps", "5", "--tokens", "100"], 2, "--steps excludes --tokens"),
        (["train", "--data", "D", "--out", "O", "--warmup", "3", "--warmup-ratio", "0.1"], 2, "excludes"),
        (["train", "--data", "D", "--out", "O", "--val", "V", "--val-fraction", "0.1"], 2, "excludes"),
        (["train", "--data", "D", "--out", "O", "--resume", "--overwrite"], 2, "excludes"),
        (["train", "--data", "D", "--out", "O", "--allow-data-change"], 2, "requires --resume"),
    ]:
        r = run([a.mlkv, *args])
        check(r.returncode == code and needle in r.stderr, f"{' '.join(args[4:])}: exit {r.returncode}, "
                                                            f"{r.stderr.strip()[:100]!r}")
    # A range that depends on another option is checked in the command (exit 1).
    shard = os.path.join(a.workdir, "shard.bin")
    toks = [i % 50 for i in range(400)]
    header = b"MLKVTOKS" + struct.pack("<IIQQIi", 1, 2, len(toks), 0, 64, -1)
    with open(shard, "wb") as f:
        f.write(header + b"\0" * (64 - len(header)) + struct.pack(f"<{len(toks)}H", *toks))
    r = run([a.mlkv, "train", "--data", shard, "--out", os.path.join(a.workdir, "run"), "--preset", "llama-tiny",
             "--layers", "1", "--embd", "16", "--heads", "2", "--ctx", "16", "--steps", "5", "--warmup", "10"])
    check(r.returncode == 1 and "mlkv: error: train: --warmup must be in [0, steps = 5]" in r.stderr,
          f"train --warmup 10 --steps 5: exit {r.returncode}, {r.stderr.strip()[:100]!r}")
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("every numeric option is range-checked, every named value checked")


if __name__ == "__main__":
    main()
