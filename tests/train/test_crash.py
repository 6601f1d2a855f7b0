#!/usr/bin/python3
"""Crash consistency of every `mlkv` command that writes files (ctest `crash_consistency`).

Each command is first run to completion (its reference output and its duration T), then started
again several times and killed with SIGKILL after a seeded random delay in [0, 1.1 T]. After each
kill the destination must be absent (or, when it replaced an earlier output, that earlier output)
or complete and loadable - never half written:

  convert          DST absent / the previous DST, or a model folder `mlkv info` reads whose
                   model.safetensors is the reference's, byte for byte.
  tokenize         --out absent / the previous output, or meta.json + every shard it lists, equal
                   to the reference's.
  train            checkpoint.safetensors absent or whole (header, size, a step in range), the
                   model folder, when it has a config.json, scores tokens, and the log plots; one
                   killed run resumed to the end equals the uninterrupted run bit for bit.
  tokenizer train  DIR/tokenizer.model absent or a tokenizer that round-trips text.

usage: test_crash.py --mlkv build/bin/mlkv --workdir DIR --shared ../shared [--kills N] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def run(cmd, check_rc=True):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check_rc and r.returncode != 0:
        raise SystemExit(f"FAILED (exit {r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r


def timed(cmd):
    t0 = time.time()
    run(cmd)
    return time.time() - t0


def killed_at(cmd, delay):
    """Starts cmd, SIGKILLs it after `delay` seconds (if still running); True when it was killed."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True


def read(path):
    with open(path, "rb") as f:
        return f.read()


def kill_points(rng, seconds, n):
    return sorted(rng.uniform(0.0, 1.1 * seconds) for _ in range(n))


# ------------------------------------------------------------------------------------------------

def test_convert(args, rng, wd):
    src = os.path.join(args.shared, "data", "models", "aidreams260K", "aidreams260K.bin")
    ref_old, ref_new = os.path.join(wd, "ref_old"), os.path.join(wd, "ref_new")
    run([args.mlkv, "convert", src, ref_old, "--kv-heads", "2"])
    t = timed([args.mlkv, "convert", src, ref_new, "--kv-heads", "1", "--kv-layers", "2"])
    old, new = read(os.path.join(ref_old, "model.safetensors")), read(os.path.join(ref_new, "model.safetensors"))
    for replace in (False, True):
        states = []
        for i, delay in enumerate(kill_points(rng, t, args.kills)):
            dst = os.path.join(wd, f"dst_{int(replace)}_{i}")
            cmd = [args.mlkv, "convert", src, dst, "--kv-heads", "1", "--kv-layers", "2"]
            if replace:
                shutil.copytree(ref_old, dst)
                cmd.append("--force")
            was_killed = killed_at(cmd, delay)
            if not os.path.exists(dst):
                state = "absent"
                good = not replace
            else:
                st = read(os.path.join(dst, "model.safetensors")) if os.path.exists(os.path.join(dst, "model.safetensors")) else b""
                state = "new" if st == new else "old" if st == old else "partial"
                good = (state == "new" or (replace and state == "old")) and \
                    run([args.mlkv, "info", dst, "--json"], check_rc=False).returncode == 0
            states.append(state)
            check(good, f"convert{' --force' if replace else ''} killed at {delay * 1000:.0f} ms "
                        f"(killed: {was_killed}): destination {state}")
        # The next conversion to the same place removes what the killed ones left behind.
        dst = os.path.join(wd, f"dst_{int(replace)}_0")
        run([args.mlkv, "convert", src, dst, "--kv-heads", "1", "--kv-layers", "2", "--force"])
        stale = [f for f in os.listdir(wd) if f.startswith(f".dst_{int(replace)}_0.tmp.")]
        check(not stale, f"convert: no temporary folder of a killed run left next to a rewritten DST ({stale})")
        print(f"convert{' --force' if replace else ''}: states after kills: {states}")


def shard_folder(path):
    """(meta, {shard name: bytes}) of a complete tokenize output; raises when incomplete."""
    meta = json.load(open(os.path.join(path, "meta.json")))
    files = {}
    for split in ("train", "val"):
        for name in meta[split]["shards"]:
            files[name] = read(os.path.join(path, name))
            n = struct.unpack("<Q", files[name][16:24])[0]
            tb = struct.unpack("<I", files[name][12:16])[0]
            assert len(files[name]) == 64 + n * tb
    return meta, files


def test_tokenize(args, rng, wd):
    tok = os.path.join(args.shared, "data", "tokenizers", "gpt2")
    text = open(os.path.join(args.shared, "data", "text", "tinyshakespeare.txt"), encoding="utf-8").read()
    small, big = os.path.join(wd, "small.txt"), os.path.join(wd, "big.txt")
    open(small, "w", encoding="utf-8").write(text[:50_000])
    open(big, "w", encoding="utf-8").write(text[:400_000])
    base = [args.mlkv, "tokenize", "-t", tok, "--val-fraction", "0.1", "--no-progress", "--shard-tokens", "20000",
            "--threads", "1"]
    ref_old, ref_new = os.path.join(wd, "ref_old"), os.path.join(wd, "ref_new")
    run(base + ["-o", ref_old, small])
    t = timed(base + ["-o", ref_new, big])
    old, new = shard_folder(ref_old), shard_folder(ref_new)
    for replace in (False, True):
        states = []
        for i, delay in enumerate(kill_points(rng, t, args.kills)):
            out = os.path.join(wd, f"out_{int(replace)}_{i}")
            if replace:
                shutil.copytree(ref_old, out)
            was_killed = killed_at(base + ["-o", out, big], delay)
            if not os.path.exists(out):
                state, good = "absent", not replace
            else:
                try:
                    got = shard_folder(out)
                    state = "new" if got == new else "old" if got == old else "other"
                except (OSError, ValueError, KeyError, AssertionError, struct.error):
                    state = "partial"
                extra = set(os.listdir(out)) - {"meta.json"} - set(got[1]) if state in ("new", "old") else set()
                good = (state == "new" or (replace and state == "old")) and not extra
            states.append(state)
            check(good, f"tokenize{' over an earlier output' if replace else ''} killed at {delay * 1000:.0f} ms "
                        f"(killed: {was_killed}): --out {state}")
        print(f"tokenize{' (replace)' if replace else ''}: states after kills: {states}")


def checkpoint_ok(path, steps):
    """A whole checkpoint: header parses, the file is exactly as long as it says, step in range."""
    blob = read(path)
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    step = json.loads(header["__metadata__"]["state"])["step"]
    return len(blob) == 8 + hlen + end and 1 <= step <= steps, step


def test_train(args, rng, wd):
    shard = os.path.join(wd, "data.bin")
    r = random.Random(3)
    toks = [r.randrange(1, 64) for _ in range(4000)]
    header = b"MLKVTOKS" + struct.pack("<IIQQIi", 1, 2, len(toks), 0, 64, 0)
    with open(shard, "wb") as f:
        f.write(header + b"\0" * (64 - len(header)) + struct.pack(f"<{len(toks)}H", *toks))
    steps = 24
    common = ["--data", shard, "--preset", "llama-tiny", "--layers", "2", "--embd", "32", "--heads", "4",
              "--ctx", "32", "--batch", "4", "--steps", str(steps), "--save-every", "1", "--lr", "3e-3",
              "--threads", "1", "--quiet"]
    ref = os.path.join(wd, "ref")
    t = timed([args.mlkv, "train", "--out", ref] + common)
    resumable = None
    for i, delay in enumerate(kill_points(rng, t, args.kills)):
        out = os.path.join(wd, f"run_{i}")
        was_killed = killed_at([args.mlkv, "train", "--out", out] + common, delay)
        ck = os.path.join(out, "checkpoint.safetensors")
        what, good = "absent", True
        if os.path.exists(ck):
            try:
                good, step = checkpoint_ok(ck, steps)
                what = f"step {step}"
            except (ValueError, KeyError, struct.error) as e:
                good, what = False, f"unreadable ({e})"
            if good and was_killed and resumable is None:
                resumable = out
        if os.path.exists(os.path.join(out, "config.json")):
            sc = run([args.mlkv, "score", out, "--tokens", "1 2 3 4", "--json"], check_rc=False)
            good &= sc.returncode == 0
            what += f", model folder {'loads' if sc.returncode == 0 else 'BROKEN: ' + sc.stderr.strip()[:120]}"
        if os.path.exists(os.path.join(out, "train_log.jsonl")):  # its last line may be cut
            pl = run([args.mlkv, "plot", out, "-o", os.path.join(wd, f"plot_{i}.svg")], check_rc=False)
            good &= pl.returncode == 0
            what += f", log {'plots' if pl.returncode == 0 else 'BROKEN: ' + pl.stderr.strip()[:120]}"
        check(good, f"train killed at {delay * 1000:.0f} ms (killed: {was_killed}): checkpoint {what}")
    if resumable:
        run([args.mlkv, "train", "--out", resumable, "--resume"] + common)
        same = read(os.path.join(resumable, "model.safetensors")) == read(os.path.join(ref, "model.safetensors"))
        check(same, f"train: a killed run resumed to the end equals the uninterrupted run ({resumable})")


def test_tokenizer_train(args, rng, wd):
    corpus = os.path.join(wd, "corpus.txt")
    open(corpus, "w", encoding="utf-8").write(
        open(os.path.join(args.shared, "data", "text", "kjv.txt"), encoding="utf-8").read()[:150_000])
    t = timed([args.mlkv, "tokenizer", "train", "--vocab", "400", "--threads", "1", "-o", os.path.join(wd, "ref"), corpus])
    text = "In the beginning God created the heaven and the earth. 日本 ü"
    for i, delay in enumerate(kill_points(rng, t, args.kills)):
        out = os.path.join(wd, f"tok_{i}")
        was_killed = killed_at([args.mlkv, "tokenizer", "train", "--vocab", "400", "--threads", "1", "-o", out, corpus],
                               delay)
        model = os.path.join(out, "tokenizer.model")
        if not os.path.exists(model):
            state, good = "absent", True
        else:
            enc = run([args.mlkv, "tokenizer", "encode", "-t", out, text], check_rc=False)
            dec = subprocess.run([args.mlkv, "tokenizer", "decode", "-t", out], input=enc.stdout, capture_output=True,
                                 text=True)
            good = enc.returncode == 0 and dec.returncode == 0 and dec.stdout == text
            state = "complete" if good else f"BROKEN ({enc.stderr.strip()[:120]})"
        check(good, f"tokenizer train killed at {delay * 1000:.0f} ms (killed: {was_killed}): tokenizer.model {state}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--kills", type=int, default=8, help="kills per command and scenario")
    ap.add_argument("--seed", type=int, default=20261201)
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.shared, "data", "tokenizers")):
        print("shared data missing: skipped")
        return 0
    shutil.rmtree(args.workdir, ignore_errors=True)
    for name, fn in [("convert", test_convert), ("tokenize", test_tokenize), ("train", test_train),
                     ("tokenizer_train", test_tokenizer_train)]:
        wd = os.path.join(args.workdir, name)
        os.makedirs(wd)
        fn(args, random.Random(f"{args.seed}-{name}"), wd)
    if FAILURES:
        print(f"crash_consistency: {len(FAILURES)} failure(s)")
        return 1
    print("crash_consistency: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
