#!/usr/bin/python3
"""End-to-end tests of `mlkv train --teacher` (knowledge distillation; docs/TRAINING.md).

  identity  --distill-alpha 1 trains exactly as plain training: the same per-step losses and the
            same model.safetensors bytes after N steps (uptraining with --init, and from scratch
            with --accum 2); the log still carries the CE and KL parts (kl > 0: the teacher ran).
  errors    bad input is a clear error and a non-zero exit: a teacher with another vocabulary size,
            --distill-alpha outside [0, 1], --distill-temp <= 0, a distillation option without
            --teacher, a teacher folder that does not exist, --ctx beyond the teacher's context.
  resume    a distilled run stopped and resumed equals the uninterrupted one bit for bit; a resume
            without the teacher, with another teacher or on a plain run with --teacher is refused;
            the same teacher copied elsewhere is accepted; a changed --distill-alpha / -temp is
            applied and reported (stderr and the log's resume record) like --lr.
  parallel  distilled runs with --accum 2 and on two MPI ranks (each rank runs the teacher on its
            own rows) give the one-process losses, CE and KL (1e-5 relative; MPI only with --mpirun).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train_cli import log_records, rel_diff, run, synthetic_shard  # noqa: E402


def geometry(threads, kv_heads="4", layers="2"):
    return ["--preset", "llama-tiny", "--layers", layers, "--embd", "32", "--heads", "4", "--kv-heads", kv_heads,
            "--ctx", "32", "--threads", str(threads), "--quiet"]


def models(args, wd):
    """A synthetic shard (vocabulary 64), a teacher (MHA, 3 layers, context 32, trained 30 steps), a student
    (MQA, 2 layers, 2 steps: as good as random) and a teacher with a vocabulary of 80."""
    shard = synthetic_shard(wd)
    teacher, student, wide = (os.path.join(wd, x) for x in ("teacher", "student", "wide"))
    run([args.mlkv, "train", "--data", shard, "--out", teacher, "--batch", "8", "--steps", "30", "--lr", "1e-2",
         "--seed", "1", "--model-ctx", "32"] + geometry(args.threads, layers="3"))
    run([args.mlkv, "train", "--data", shard, "--out", student, "--batch", "4", "--steps", "2", "--seed", "2"]
        + geometry(args.threads, kv_heads="1"))
    run([args.mlkv, "train", "--data", shard, "--out", wide, "--batch", "4", "--steps", "1", "--vocab", "80"]
        + geometry(args.threads))
    return shard, teacher, student, wide


def model_bytes(out):
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
        return f.read()


def fresh(args, name):
    wd = os.path.join(args.workdir, name)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    return wd


def test_identity(args):
    wd = fresh(args, "identity")
    shard, teacher, student, _ = models(args, wd)
    ok = True
    runs = [("--init", ["--init", student, "--data", shard, "--batch", "4", "--ctx", "32", "--lr", "3e-3",
                        "--threads", str(args.threads), "--quiet"]),
            ("from scratch, --accum 2", ["--data", shard, "--batch", "8", "--accum", "2", "--lr", "3e-3", "--seed", "4"]
             + geometry(args.threads, kv_heads="2"))]
    for what, common in runs:
        common = common + ["--steps", "8", "--warmup", "2"]
        plain, dist = os.path.join(wd, "plain"), os.path.join(wd, "alpha1")
        run([args.mlkv, "train", "--out", plain, "--overwrite"] + common)
        run([args.mlkv, "train", "--out", dist, "--overwrite", "--teacher", teacher, "--distill-alpha", "1",
             "--distill-temp", "2"] + common)
        rp, rd = log_records(plain), log_records(dist)
        same_loss = [x["loss"] for x in rp] == [x["loss"] for x in rd]
        same_norm = [x["grad_norm"] for x in rp] == [x["grad_norm"] for x in rd]
        same_model = model_bytes(plain) == model_bytes(dist)
        parts = all(x["ce"] == x["loss"] and x["kl"] > 0 for x in rd) and not any("kl" in x for x in rp)
        print(f"identity ({what}): alpha 1 vs plain, {len(rd)} steps: losses identical {same_loss}, grad norms "
              f"identical {same_norm}, model bytes identical {same_model}; log has ce == loss and kl > 0 "
              f"({rd[0]['kl']:.4f} -> {rd[-1]['kl']:.4f}): {parts}")
        ok &= len(rd) == 8 and same_loss and same_norm and same_model and parts
    # And alpha < 1 does change the training (the KL term reaches the weights).
    half = os.path.join(wd, "half")
    run([args.mlkv, "train", "--out", half, "--teacher", teacher] + runs[0][1] + ["--steps", "8", "--warmup", "2"])
    rh = log_records(half)
    differs = model_bytes(half) != model_bytes(os.path.join(wd, "plain")) and rh[-1]["kl"] < rh[0]["kl"]
    print(f"identity: alpha 0.5 trains another model, KL {rh[0]['kl']:.4f} -> {rh[-1]['kl']:.4f}: {differs}")
    return ok and differs


def test_errors(args):
    wd = fresh(args, "errors")
    shard, teacher, student, wide = models(args, wd)
    base = ["--data", shard, "--init", student, "--steps", "2", "--batch", "4", "--ctx", "32",
            "--threads", str(args.threads), "--quiet"]
    cases = [
        ("teacher with another vocabulary", ["--teacher", wide], 1,
         ["--teacher", "vocabulary of 80 ids", "the student 64"]),
        ("alpha above 1", ["--teacher", teacher, "--distill-alpha", "1.5"], 2, ["--distill-alpha", "1.5", "[0, 1]"]),
        ("alpha below 0", ["--teacher", teacher, "--distill-alpha", "-0.1"], 2, ["--distill-alpha", "-0.1"]),
        ("alpha not a number", ["--teacher", teacher, "--distill-alpha", "nan"], 2, ["--distill-alpha", "nan"]),
        ("temperature 0", ["--teacher", teacher, "--distill-temp", "0"], 2, ["--distill-temp", "> 0"]),
        ("temperature below 0", ["--teacher", teacher, "--distill-temp", "-1"], 2, ["--distill-temp", "-1"]),
        ("alpha without --teacher", ["--distill-alpha", "0.5"], 2, ["--distill-alpha", "--teacher"]),
        ("temperature without --teacher", ["--distill-temp", "2"], 2, ["--distill-temp", "--teacher"]),
        ("missing teacher folder", ["--teacher", os.path.join(wd, "nope")], 1, ["--teacher", "nope"]),
        ("--ctx beyond the teacher's context", ["--teacher", teacher, "--ctx", "48"], 1,
         ["--ctx 48", "context of --teacher", "32 positions"]),
    ]
    ok = True
    for i, (what, extra, code, needles) in enumerate(cases):
        out = os.path.join(wd, f"o{i}")
        cmd = [args.mlkv, "train", "--out", out] + base + extra
        if "--ctx" in extra:  # (the student's context is 32 as well: one from scratch with 64 reaches the check)
            g = geometry(args.threads)
            del g[g.index("--ctx"):g.index("--ctx") + 2]
            cmd = [args.mlkv, "train", "--out", out, "--data", shard, "--steps", "2", "--batch", "4",
                   "--model-ctx", "64"] + g + extra
        r = run(cmd, check=False)
        said = r.stderr.strip()
        good = r.returncode == code and all(n in said for n in needles) and not os.path.exists(
            os.path.join(out, "model.safetensors"))
        print(f"errors: {what}: exit {r.returncode}, {said[:200]!r}: {'ok' if good else 'FAIL'}")
        ok &= good
    return ok


def test_resume(args):
    wd = fresh(args, "resume")
    shard, teacher, student, _ = models(args, wd)
    # A constant schedule: raising --steps on resume changes nothing, so a resumed run can be compared
    # with an uninterrupted one bit for bit.
    base = ["--init", student, "--data", shard, "--batch", "4", "--ctx", "32", "--lr", "3e-3", "--schedule",
            "constant", "--threads", str(args.threads), "--quiet"]
    distil = ["--teacher", teacher, "--distill-temp", "2"]
    ok = True
    ref, b = os.path.join(wd, "ref"), os.path.join(wd, "b")
    run([args.mlkv, "train", "--out", ref, "--steps", "6"] + base + distil)
    run([args.mlkv, "train", "--out", b, "--steps", "3"] + base + distil)
    snapshot = os.path.join(wd, "b3")
    shutil.copytree(b, snapshot)
    run([args.mlkv, "train", "--out", b, "--steps", "6", "--resume"] + base + distil)
    rr, rb = log_records(ref), log_records(b)
    same = ([(x["loss"], x["ce"], x["kl"]) for x in rr] == [(x["loss"], x["ce"], x["kl"]) for x in rb]
            and model_bytes(ref) == model_bytes(b))
    print(f"resume: distilled run stopped at 3 and resumed to 6 == uninterrupted (losses, ce, kl, model bytes): {same}")
    ok &= same

    def attempt(name, extra, code, needles, start=snapshot):
        d = os.path.join(wd, name.replace(" ", "_").replace("/", ""))
        shutil.copytree(start, d)
        r = run([args.mlkv, "train", "--out", d, "--steps", "6", "--resume"] + base + extra, check=False)
        good = r.returncode == code and all(n in r.stderr for n in needles)
        print(f"resume: {name}: exit {r.returncode}, {r.stderr.strip()[-220:]!r}: {'ok' if good else 'FAIL'}")
        return good, d

    good, _ = attempt("without the teacher", [], 1, ["distils from --teacher", teacher])
    ok &= good
    # Another teacher with the same vocabulary: the student itself.
    good, _ = attempt("another teacher", ["--teacher", student, "--distill-temp", "2"], 1,
                      ["is not the teacher", teacher])
    ok &= good
    moved = os.path.join(wd, "teacher_copy")
    shutil.copytree(teacher, moved)
    good, d = attempt("the same teacher copied elsewhere", ["--teacher", moved, "--distill-temp", "2"], 0,
                      ["same hash"])
    same = [x["loss"] for x in log_records(d)] == [x["loss"] for x in rr]
    print(f"resume: ... and it continues the run bit for bit: {same}")
    ok &= good and same
    good, d = attempt("a changed --distill-alpha and --distill-temp",
                      ["--teacher", teacher, "--distill-alpha", "0.7", "--distill-temp", "3"], 0,
                      ["--distill-alpha 0.5 -> 0.7", "--distill-temp 2.0 -> 3.0"])
    rec = [json.loads(x) for x in open(os.path.join(d, "train_log.jsonl")) if '"event"' in x][-1]
    logged = rec.get("changed", {}).get("--distill-alpha") == [0.5, 0.7] and rec["options"]["distill_temp"] == 3.0
    print(f"resume: ... recorded in the log's resume record: {logged}")
    ok &= good and logged
    plain = os.path.join(wd, "plain")
    run([args.mlkv, "train", "--out", plain, "--steps", "3"] + base)
    good, _ = attempt("a plain run resumed with --teacher", distil, 1, ["trained without a teacher"], start=plain)
    ok &= good
    return ok


def test_parallel(args):
    wd = fresh(args, "parallel")
    shard, teacher, student, _ = models(args, wd)
    common = ["--init", student, "--data", shard, "--ctx", "32", "--steps", "5", "--lr", "3e-3", "--teacher", teacher,
              "--distill-alpha", "0.3", "--distill-temp", "2", "--eval-every", "5", "--val-fraction", "0.1",
              "--quiet"]

    def values(out):
        rec = log_records(out)
        return [x["loss"] for x in rec], [x["ce"] for x in rec], [x["kl"] for x in rec], \
            [x["val_loss"] for x in rec if "val_loss" in x]

    ok = True
    one = os.path.join(wd, "one")
    run([args.mlkv, "train", "--out", one, "--batch", "8", "--threads", str(args.threads)] + common)
    ref = values(one)
    variants = [("--accum 2", [args.mlkv, "train", "--out", os.path.join(wd, "accum"), "--batch", "8", "--accum", "2",
                               "--threads", str(args.threads)] + common)]
    if args.mpirun:
        mpirun = [args.mpirun, "-np", "2", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        variants.append(("2 MPI ranks x --accum 2", mpirun + [args.mlkv, "train", "--out", os.path.join(wd, "mpi"),
                                                               "--batch", "8", "--accum", "2", "--threads", "1"]
                         + common))
    for what, cmd in variants:
        run(cmd)
        got = values(cmd[cmd.index("--out") + 1])
        errs = [rel_diff(g, r) for g, r in zip(got, ref)]
        good = all(len(g) == len(r) for g, r in zip(got, ref)) and max(errs) <= 1e-5
        print(f"parallel: {what} vs one process (batch 8): relative differences loss {errs[0]:.2e}, ce {errs[1]:.2e}, "
              f"kl {errs[2]:.2e}, val {errs[3]:.2e}: {'ok' if good else 'FAIL'}")
        ok &= good
    if not args.mpirun:
        print("parallel: no MPI launcher given (--mpirun): the two-rank run was not tried")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("test", choices=["identity", "errors", "resume", "parallel"])
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpirun", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    ok = {"identity": test_identity, "errors": test_errors, "resume": test_resume,
          "parallel": test_parallel}[args.test](args)
    print(f"distill_{args.test}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
