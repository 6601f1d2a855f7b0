#!/usr/bin/python3
"""End-to-end tests of `mlkv train` (ctest label `train`; `learn` is also `slow`-free but the longest).

  learn   A tiny MLKV model (4 layers, 1 KV head, 2 KV layers) trained from scratch for a few hundred
          steps on a slice of ../shared/data/text (own 512-piece tokenizer) must reach a validation loss
          well under the unigram entropy of that data: val < entropy - margin (nats/token). Both are
          computed here; the unigram figure is the cross-entropy of add-one-smoothed training-token
          frequencies on the validation tokens (the best context-free model), and its plain entropy.
  resume  Run A: 12 uninterrupted steps (shuffled rows, 2 accumulation micro-steps, checkpoint every 4).
          Run B: the same, but killed (SIGKILL, via the MLKV_TEST_CRASH_IN_CHECKPOINT hook) half-way
          through writing its 2nd checkpoint; the 1st must still load (step 4) and `--resume` must
          reproduce A's per-step losses, grad norms and final model bit for bit.
  accum   --accum 2 equals --accum 1 at the same global batch (losses within 1e-5 relative).
  mpi     `mpirun -np 2 mlkv train --batch 4` equals `mlkv train --batch 4` (one process, same global
          batch): losses within 1e-5 relative; also with accumulation on the two ranks.
  data_change  --resume after the data folder was rebuilt from a larger corpus is refused (the
          checkpoint identifies its data by content) unless --allow-data-change; the same data
          rebuilt resumes bit for bit; a changed --lr / --schedule is reported; resuming a finished
          run reports its real last loss.
  val_short  validation shorter than one row: an error for --val / --val-fraction, a warning for a
          data folder's own val shards; --eval-every without validation data is an error.
  nonfinite  a NaN gradient (MLKV_TEST_NAN_GRAD hook) stops the run before the update, naming the
          step and the tensor; --skip-nonfinite skips it (and a resume keeps AdamW's step count);
          an absurd --lr is caught at step 2 with finite weights.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter


def run(cmd, env=None, timeout=900, check=True):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise SystemExit(f"FAILED (exit {r.returncode}): {' '.join(cmd)}\nstderr: {r.stderr[-2000:]}")
    r.seconds = time.time() - t0
    return r


def write_shard(path, tokens, n_vocab, eos=-1):
    """docs/TOKENIZERS.md: 64-byte header, uint16 tokens."""
    header = b"MLKVTOKS" + struct.pack("<IIQQIi", 1, 2, len(tokens), tokens.count(eos) if eos >= 0 else 0,
                                       n_vocab, eos)
    header += b"\0" * (64 - len(header))
    with open(path, "wb") as f:
        f.write(header)
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))


def read_shard(path):
    with open(path, "rb") as f:
        blob = f.read()
    version, tb, n = struct.unpack("<IIQ", blob[8:24])
    assert blob[:8] == b"MLKVTOKS" and version == 1
    fmt = {2: "H", 4: "I"}[tb]
    return list(struct.unpack(f"<{n}{fmt}", blob[64:64 + n * tb]))


def log_records(out):
    recs = []
    with open(os.path.join(out, "train_log.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "loss" in j:
                recs.append(j)
    return recs


def synthetic_shard(workdir, n=6000, vocab=64, seed=3):
    """A token stream with structure (repeating phrases + noise), EOS between 'documents'."""
    rng = random.Random(seed)
    phrases = [[rng.randrange(1, vocab) for _ in range(rng.randint(3, 9))] for _ in range(20)]
    toks = []
    while len(toks) < n:
        for _ in range(rng.randint(2, 6)):
            toks += rng.choice(phrases)
        toks.append(0)  # EOS
    path = os.path.join(workdir, "synthetic.bin")
    write_shard(path, toks[:n], vocab, eos=0)
    return path


def rel_diff(a, b):
    return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------

def test_learn(args):
    wd = os.path.join(args.workdir, "learn")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    src = os.path.join(args.shared, "data", "text", "tinyshakespeare.txt")
    with open(src, encoding="utf-8") as f:
        text = f.read()[:args.learn_bytes]
    slice_path = os.path.join(wd, "slice.txt")
    with open(slice_path, "w", encoding="utf-8") as f:
        f.write(text)
    run([args.mlkv, "tokenizer", "train", "--vocab", "512", "-o", os.path.join(wd, "tok"), slice_path])
    shards = os.path.join(wd, "shards")
    run([args.mlkv, "tokenize", "-t", os.path.join(wd, "tok"), "-o", shards, "--val-fraction", "0.1",
         "--txt-docs", "blank", "--no-progress", slice_path])
    meta = json.load(open(os.path.join(shards, "meta.json")))
    train = sum((read_shard(os.path.join(shards, s)) for s in meta["train"]["shards"]), [])
    val = sum((read_shard(os.path.join(shards, s)) for s in meta["val"]["shards"]), [])
    V = meta["n_vocab"]
    counts = Counter(train)
    n = len(train)
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    unigram_ce = -sum(math.log((counts.get(t, 0) + 1) / (n + V)) for t in val) / len(val)
    out = os.path.join(wd, "model")
    cmd = [args.mlkv, "train", "--data", shards, "--out", out, "--preset", "llama-tiny", "--layers", "4",
           "--embd", "64", "--heads", "4", "--kv-heads", "1", "--kv-layers", "2", "--ctx", "64", "--batch", "16",
           "--steps", str(args.learn_steps), "--lr", "4e-3", "--warmup", "20", "--eval-every", "100",
           "--eval-rows", "0", "--threads", str(args.threads), "--seed", "5", "--quiet", "--json"]
    r = run(cmd)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    val_loss = summary["val_loss"]
    margin = args.learn_margin
    print(f"learn: {len(train)} train / {len(val)} val tokens (vocab {V}); unigram entropy {entropy:.4f} nats, "
          f"unigram cross-entropy on val {unigram_ce:.4f}; model val loss {val_loss:.4f} after "
          f"{summary['steps']} steps ({r.seconds:.1f}s, {summary['tokens_per_s']:.0f} tok/s)")
    # The trained folder is a model the engine reads.
    info = run([args.mlkv, "info", out, "--json"])
    assert json.loads(info.stdout)  # parses
    ok = val_loss < min(entropy, unigram_ce) - margin
    print(f"learn: val loss {val_loss:.4f} < unigram {min(entropy, unigram_ce):.4f} - {margin} : "
          f"{'ok' if ok else 'FAIL'}")
    return ok


def test_resume(args):
    wd = os.path.join(args.workdir, "resume")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    shard = synthetic_shard(wd)
    common = ["--data", shard, "--preset", "tiny-neox", "--layers", "4", "--embd", "32", "--heads", "4",
              "--kv-heads", "2", "--kv-layers", "2", "--share", "pre", "--ctx", "32", "--batch", "4",
              "--accum", "2", "--steps", "12", "--save-every", "4", "--lr", "3e-3", "--warmup", "3",
              "--eval-every", "6", "--val-fraction", "0.1", "--threads", str(args.threads), "--seed", "11",
              "--quiet"]
    a = os.path.join(wd, "a")
    run([args.mlkv, "train", "--out", a] + common)
    b = os.path.join(wd, "b")
    env = dict(os.environ, MLKV_TEST_CRASH_IN_CHECKPOINT="2")
    r = run([args.mlkv, "train", "--out", b] + common, env=env, check=False)
    ok = True
    if r.returncode != -signal.SIGKILL:
        print(f"resume: expected the run to die by SIGKILL in its 2nd checkpoint write, got exit {r.returncode}")
        return False
    tmp = [f for f in os.listdir(b) if ".tmp." in f]
    # The previous checkpoint is intact: safetensors header with state.step == 4.
    with open(os.path.join(b, "checkpoint.safetensors"), "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
    step = json.loads(header["__metadata__"]["state"])["step"]
    print(f"resume: killed mid-write (partial temp file left: {tmp}); checkpoint on disk is step {step}")
    ok &= step == 4 and len(tmp) == 1
    run([args.mlkv, "train", "--out", b, "--resume"] + common)
    ra, rb = log_records(a), log_records(b)
    la, lb = [x["loss"] for x in ra], [x["loss"] for x in rb]
    ga, gb = [x["grad_norm"] for x in ra], [x["grad_norm"] for x in rb]
    va = [x.get("val_loss") for x in ra]
    vb = [x.get("val_loss") for x in rb]
    same_model = open(os.path.join(a, "model.safetensors"), "rb").read() == open(os.path.join(b, "model.safetensors"), "rb").read()
    identical = la == lb and ga == gb and va == vb and [x["step"] for x in rb] == list(range(1, 13))
    print(f"resume: uninterrupted vs killed+resumed: {len(la)} vs {len(lb)} steps, losses identical: {la == lb}, "
          f"grad norms identical: {ga == gb}, val losses identical: {va == vb}, final model bytes identical: "
          f"{same_model}; no temp file left: {not [f for f in os.listdir(b) if '.tmp.' in f]}")
    ok &= identical and same_model and not [f for f in os.listdir(b) if ".tmp." in f]
    # Resuming a finished run is harmless; starting over without --overwrite is refused.
    r = run([args.mlkv, "train", "--out", a] + common, check=False)
    ok &= r.returncode == 1 and "--resume" in r.stderr
    return ok


def read_safetensors_f32(path):
    """{name: list of floats} of an F32 safetensors file."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__" or e["dtype"] != "F32":
            continue
        a, b = e["data_offsets"]
        out[name] = struct.unpack(f"<{(b - a) // 4}f", data[a:b])
    return out, header.get("__metadata__", {})


def checkpoint_state(out):
    _, meta = read_safetensors_f32(os.path.join(out, "checkpoint.safetensors"))
    return json.loads(meta["state"])


def tiny_model(threads, lr="3e-3"):
    return ["--preset", "llama-tiny", "--layers", "2", "--embd", "32", "--heads", "4", "--kv-heads", "2",
            "--ctx", "32", "--batch", "4", "--lr", lr, "--threads", str(threads), "--quiet"]


def test_data_change(args):
    """Resume on rebuilt data: refused unless --allow-data-change (the checkpoint identifies the
    data by content); the same data rebuilt is accepted and resumes bit for bit; a changed schedule
    is reported; resuming a finished run reports the run's real last loss."""
    wd = os.path.join(args.workdir, "data_change")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    tok = os.path.join(args.shared, "data", "models", "aidreams260K", "tok512.bin")
    with open(os.path.join(args.shared, "data", "text", "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()
    small, large = os.path.join(wd, "small.txt"), os.path.join(wd, "large.txt")
    open(small, "w", encoding="utf-8").write(text[:4000])
    open(large, "w", encoding="utf-8").write(text[:8000])
    data = os.path.join(wd, "data")

    def tokenize(src):
        run([args.mlkv, "tokenize", "-t", tok, "-o", data, "--no-progress", src])
        return json.load(open(os.path.join(data, "meta.json")))["train"]["tokens"]

    # A constant schedule: raising --steps on resume then changes nothing, so the resumed run can be
    # compared with an uninterrupted one bit for bit.
    common = ["--data", data, "--schedule", "constant"] + tiny_model(args.threads)
    ok = True
    n_small = tokenize(small)
    ref = os.path.join(wd, "ref")
    run([args.mlkv, "train", "--out", ref, "--steps", "6"] + common)
    b = os.path.join(wd, "b")
    run([args.mlkv, "train", "--out", b, "--steps", "3"] + common)
    n_large = tokenize(large)
    r = run([args.mlkv, "train", "--out", b, "--steps", "6", "--resume"] + common, check=False)
    refused = (r.returncode == 1 and "training data are not the ones the checkpoint was trained on" in r.stderr
               and "--allow-data-change" in r.stderr and checkpoint_state(b)["step"] == 3
               and len(log_records(b)) == 3)
    print(f"data_change: {n_small} -> {n_large} training tokens, resume refused: {refused} "
          f"(exit {r.returncode}: {r.stderr.strip()[-300:]!r})")
    ok &= refused
    c = os.path.join(wd, "c")
    shutil.copytree(b, c)
    r = run([args.mlkv, "train", "--out", c, "--steps", "6", "--resume", "--allow-data-change"] + common, check=False)
    allowed = r.returncode == 0 and "--allow-data-change" in r.stderr and len(log_records(c)) == 6
    print(f"data_change: with --allow-data-change: exit {r.returncode}, {len(log_records(c))} steps logged: "
          f"{'ok' if allowed else 'FAIL ' + r.stderr[-300:]}")
    ok &= allowed
    # The same data rebuilt (new files, same tokens): accepted, and the resumed run is the
    # uninterrupted one bit for bit.
    tokenize(small)
    d = os.path.join(wd, "d")
    shutil.copytree(b, d)
    run([args.mlkv, "train", "--out", b, "--steps", "6", "--resume"] + common)
    same = ([x["loss"] for x in log_records(b)] == [x["loss"] for x in log_records(ref)] and
            open(os.path.join(b, "model.safetensors"), "rb").read() == open(os.path.join(ref, "model.safetensors"), "rb").read())
    print(f"data_change: the same data rebuilt: resumed run identical to the uninterrupted one: {same}")
    ok &= same
    # A changed learning rate and schedule on resume: applied, and reported (stderr and log).
    r = run([args.mlkv, "train", "--out", d, "--steps", "6", "--resume", "--schedule", "linear", "--data", data]
            + tiny_model(args.threads, lr="1e-3"), check=False)
    # (--steps 3 -> 6 is reported too: it changes the schedule, except a constant one.)
    rec = [json.loads(x) for x in open(os.path.join(d, "train_log.jsonl")) if '"event"' in x][-1]
    reported = (r.returncode == 0 and "--lr 0.003 -> 0.001" in r.stderr and '--schedule "constant" -> "linear"' in r.stderr
                and rec.get("changed", {}).get("--lr") == [0.003, 0.001])
    print(f"data_change: changed --lr/--schedule on resume reported: {reported} ({r.stderr.strip()[:200]!r})")
    ok &= reported
    # Resuming the finished run: its real last loss and validation loss, not 0.
    r = run([args.mlkv, "train", "--out", ref, "--steps", "6", "--resume", "--json"] + common)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    last = log_records(ref)[-1]["loss"]
    finished = summary["steps"] == 6 and summary["loss"] == last
    print(f"data_change: resuming the finished run reports loss {summary['loss']} (last logged {last}): {finished}")
    ok &= finished
    return ok


def test_val_short(args):
    """Validation shorter than one row is an error when asked for (--val, --val-fraction), a warning
    for a data folder's own val shards; --eval-every without validation data is an error."""
    wd = os.path.join(args.workdir, "val_short")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    shard = synthetic_shard(wd)
    val7 = os.path.join(wd, "val7.bin")
    write_shard(val7, [1, 2, 3, 4, 5, 6, 0], 64, eos=0)
    common = tiny_model(args.threads) + ["--steps", "2"]
    ok = True
    short = "fewer than one row of 33"
    cases = [
        (["--data", shard, "--val", val7], 1, ["the validation data of --val", short]),
        (["--data", shard, "--val-fraction", "0.0017"], 1, ["--val-fraction 0.0017 holds out 10 tokens", short]),
        (["--data", shard, "--eval-every", "1"], 1, ["no validation data"]),
        (["--data", shard, "--val", val7, "--val-fraction", "0.1"], 2, ["excludes"]),
    ]
    for i, (extra, code, needles) in enumerate(cases):
        r = run([args.mlkv, "train", "--out", os.path.join(wd, f"o{i}")] + common + extra, check=False)
        good = r.returncode == code and all(n in r.stderr for n in needles)
        print(f"val_short: {' '.join(extra[2:])}: exit {r.returncode}, {r.stderr.strip()[:160]!r}: {'ok' if good else 'FAIL'}")
        ok &= good
    # A data folder whose own val shard is short: trains, with a warning.
    folder = os.path.join(wd, "folder")
    os.makedirs(folder)
    shutil.copy(shard, os.path.join(folder, "train_000.bin"))
    shutil.copy(val7, os.path.join(folder, "val_000.bin"))
    r = run([args.mlkv, "train", "--out", os.path.join(wd, "of"), "--data", folder] + common, check=False)
    good = r.returncode == 0 and "warning" in r.stderr and "fewer than one row of 33" in r.stderr
    print(f"val_short: data folder with a 7-token val shard: exit {r.returncode}, warned: {good}")
    return ok and good


def test_nonfinite(args):
    """A non-finite gradient never reaches the weights: the run stops naming the step and the first
    tensor (or, with --skip-nonfinite, skips the step and goes on; a resume keeps AdamW's count)."""
    wd = os.path.join(args.workdir, "nonfinite")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    shard = synthetic_shard(wd)
    tensor = "model.layers.1.self_attn.o_proj.weight"
    env = dict(os.environ, MLKV_TEST_NAN_GRAD=f"3:{tensor}")
    common = ["--data", shard] + tiny_model(args.threads) + ["--save-every", "1", "--schedule", "constant"]
    ok = True

    def finite_model(out):
        w, _ = read_safetensors_f32(os.path.join(out, "model.safetensors"))
        return all(math.isfinite(v) for t in w.values() for v in t)

    stop = os.path.join(wd, "stop")
    r = run([args.mlkv, "train", "--out", stop, "--steps", "5"] + common, env=env, check=False)
    good = (r.returncode == 1 and "step 3" in r.stderr and tensor in r.stderr and "not updated" in r.stderr
            and "--clip 1 cannot bound" in r.stderr and checkpoint_state(stop)["step"] == 2 and finite_model(stop))
    print(f"nonfinite: NaN gradient at step 3 stops the run: exit {r.returncode}, checkpoint step "
          f"{checkpoint_state(stop)['step']}, {r.stderr.strip()[-260:]!r}: {'ok' if good else 'FAIL'}")
    ok &= good
    skip = os.path.join(wd, "skip")
    r = run([args.mlkv, "train", "--out", skip, "--steps", "5", "--skip-nonfinite", "1", "--json"] + common, env=env,
            check=False)
    recs = log_records(skip)
    good = (r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["skipped_steps"] == 1
            and [x.get("skipped", False) for x in recs] == [False, False, True, False, False]
            and recs[2]["grad_norm"] is None and all(math.isfinite(x["loss"]) for x in recs if x is not recs[2])
            and finite_model(skip))
    print(f"nonfinite: --skip-nonfinite 1: exit {r.returncode}, skipped flags {[x.get('skipped', False) for x in recs]}: "
          f"{'ok' if good else 'FAIL ' + r.stderr[-300:]}")
    ok &= good
    # Skipped steps do not count for AdamW: a run resumed after the skip continues it bit for bit.
    part = os.path.join(wd, "part")
    run([args.mlkv, "train", "--out", part, "--steps", "4", "--skip-nonfinite", "1"] + common, env=env)
    run([args.mlkv, "train", "--out", part, "--steps", "5", "--skip-nonfinite", "1", "--resume"] + common, env=env)
    same = [x["loss"] for x in log_records(part)] == [x["loss"] for x in recs]
    print(f"nonfinite: resumed after a skipped step, identical to the uninterrupted run: {same}")
    ok &= same
    # A real divergence (an absurd learning rate): caught at step 2, before any NaN weight.
    div = os.path.join(wd, "div")
    r = run([args.mlkv, "train", "--out", div, "--steps", "4", "--data", shard, "--save-every", "1"]
            + tiny_model(args.threads, lr="1e30"), check=False)
    good = r.returncode == 1 and "step 2" in r.stderr and "not updated" in r.stderr and finite_model(div)
    print(f"nonfinite: --lr 1e30 stops at step 2 with finite weights: {good} ({r.stderr.strip()[-200:]!r})")
    return ok and good


def test_accum(args):
    wd = os.path.join(args.workdir, "accum")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    shard = synthetic_shard(wd)
    common = ["--data", shard, "--preset", "llama-tiny", "--layers", "2", "--embd", "32", "--heads", "4",
              "--kv-heads", "1", "--ctx", "32", "--batch", "8", "--steps", "6", "--lr", "3e-3",
              "--threads", str(args.threads), "--quiet"]
    outs = {}
    for acc in (1, 2, 4):
        o = os.path.join(wd, f"acc{acc}")
        run([args.mlkv, "train", "--out", o, "--accum", str(acc)] + common)
        outs[acc] = [x["loss"] for x in log_records(o)]
    e2, e4 = rel_diff(outs[2], outs[1]), rel_diff(outs[4], outs[1])
    print(f"accum: losses with --accum 2 / 4 vs 1 at global batch 8: max relative difference {e2:.2e} / {e4:.2e}")
    return e2 <= 1e-5 and e4 <= 1e-5


def test_mpi(args):
    wd = os.path.join(args.workdir, "mpi")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    shard = synthetic_shard(wd)
    common = ["--data", shard, "--preset", "tiny-neox", "--layers", "4", "--embd", "32", "--heads", "4",
              "--kv-heads", "1", "--kv-layers", "2", "--ctx", "32", "--steps", "8", "--lr", "3e-3",
              "--warmup", "2", "--eval-every", "4", "--val-fraction", "0.1", "--threads", "1", "--quiet"]
    mpirun = [args.mpirun, "-np", "2", "--oversubscribe"]
    if os.geteuid() == 0:
        mpirun.append("--allow-run-as-root")
    ok = True
    for batch, accum in ((4, 1), (8, 2)):
        one = os.path.join(wd, f"one_b{batch}")
        two = os.path.join(wd, f"two_b{batch}_a{accum}")
        run([args.mlkv, "train", "--out", one, "--batch", str(batch)] + common)
        r = run(mpirun + [args.mlkv, "train", "--out", two, "--batch", str(batch), "--accum", str(accum)] + common)
        r1, r2 = log_records(one), log_records(two)
        l1, l2 = [x["loss"] for x in r1], [x["loss"] for x in r2]
        v1 = [x["val_loss"] for x in r1 if "val_loss" in x]
        v2 = [x["val_loss"] for x in r2 if "val_loss" in x]
        e, ev = rel_diff(l2, l1), rel_diff(v2, v1)
        world = json.loads(open(os.path.join(two, "train_log.jsonl")).readline())["world"]
        print(f"mpi: 2 ranks (batch {batch}, accum {accum}) vs 1 process (batch {batch}): {len(l2)} steps, "
              f"world {world}, max relative loss difference {e:.2e}, val {ev:.2e}")
        ok &= world == 2 and len(l1) == len(l2) == 8 and e <= 1e-5 and ev <= 1e-5
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("test", choices=["learn", "resume", "accum", "mpi", "data_change", "val_short", "nonfinite"])
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--threads", type=int, default=1, help="per process (tiny models: 1 is as fast and immune to a loaded machine)")
    ap.add_argument("--learn-bytes", type=int, default=400_000)
    ap.add_argument("--learn-steps", type=int, default=200)
    ap.add_argument("--learn-margin", type=float, default=1.0, help="nats/token below the unigram figure")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.test in ("learn", "data_change") and not os.path.isdir(os.path.join(args.shared, "data")):
        print(f"SKIP: train_{args.test} reads ../shared/data, which is not at {args.shared}")
        return 77
    ok = {"learn": test_learn, "resume": test_resume, "accum": test_accum, "mpi": test_mpi,
          "data_change": test_data_change, "val_short": test_val_short, "nonfinite": test_nonfinite}[args.test](args)
    print(f"train_{args.test}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
