#!/usr/bin/env python3
"""End-to-end tests of the `mlkv` CLI: KV-cache bytes reported by `info`, seeded generation, EOS ids
(a list of them in config.json or generation_config.json: any one ends a generation), and bad input -
each must give exit status 1 with a one-line "mlkv: error: ..." naming the problem, never a crash
(signal) or a traceback. Models come from the independent reference's `make` verb, eos_model.py's
chosen-continuation model, and the shared aidreams260K llama2.c model converted with `mlkv convert`.

usage: test_cli.py --mlkv build/bin/mlkv --workdir DIR [--shared SHARED]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

import eos_model

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "reference", "mlkv_ref.py")
SHARED = os.environ.get("MLKV_SHARED_DIR", os.path.join(HERE, "..", "..", "..", "shared"))
FAILURES = []


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def make_model(out, *args):
    r = run([sys.executable, REF, "make", "--out", out, *args])
    if r.returncode != 0:
        raise SystemExit(f"reference make failed: {r.stderr}")
    return out


def expect_error(mlkv, args, needle, what):
    r = run([mlkv, *args])
    # The error line, after at most warnings (bench warns of a busy machine first).
    lines = [l for l in r.stderr.splitlines() if not l.startswith("mlkv: warning:")]
    ok = (r.returncode == 1 and bool(lines) and lines[0].startswith("mlkv: error:") and needle in r.stderr
          and "Traceback" not in r.stderr)
    check(ok, f"{what}: exit {r.returncode}, stderr {r.stderr.strip()[:160]!r}")


def expect_usage(mlkv, args, needle, what):
    """A usage error: exit 2 and CLI11's "<option>: <why>" line naming the option, before anything loads."""
    r = run([mlkv, *args])
    check(r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr,
          f"{what}: exit {r.returncode}, stderr {r.stderr.strip()[:160]!r}")


def read_st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def write_st(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def test_info_bytes(mlkv, wd):
    for name, args in [("mha", []), ("gqa", ["--kv-heads", "2"]), ("mqa", ["--kv-heads", "1"]),
                       ("mlkv-half", ["--kv-heads", "1", "--kv-layers", "2"]),
                       ("mlkv-1", ["--kv-heads", "1", "--kv-layers", "1"])]:
        d = make_model(os.path.join(wd, "info-" + name), "--family", "llama", "--layers", "4",
                       "--embd", "32", "--heads", "4", *args)
        for ctx, batch, ct in [(64, 1, "f32"), (100, 3, "f16")]:
            r = run([mlkv, "info", d, "--ctx", str(ctx), "--batch", str(batch), "--cache-type", ct, "--json"])
            j = json.loads(r.stdout)
            m, g, dh = j["n_kv_layers"], j["n_head_kv"], j["n_embd_head"]
            el = 4 if ct == "f32" else 2
            want = 2 * batch * ctx * m * g * dh * el
            check(j["kv_cache_bytes"] == want and j["kv_bytes_per_token"] == 2 * m * g * dh * el,
                  f"info {name} ctx={ctx} batch={batch} {ct}: {j['kv_cache_bytes']} == 2*b*s*m*g*d*e = {want}")
        r = run([mlkv, "info", d])
        check(r.returncode == 0 and "kv_source" in r.stdout, f"info {name} text output")
        # A memory budget holds floor(budget / (ctx * bytes per token)) sequences.
        for budget, nbytes in [("1M", 1 << 20), ("2.5MiB", int(2.5 * (1 << 20))), ("3MB", 3_000_000), ("777777", 777777)]:
            r = run([mlkv, "info", d, "--ctx", "64", "--kv-budget", budget, "--json"])
            j = json.loads(r.stdout)
            want = nbytes // (64 * j["kv_bytes_per_token"])
            check(j["kv_budget_bytes"] == nbytes and j["sequences_in_budget"] == want,
                  f"info {name} --kv-budget {budget}: {j.get('sequences_in_budget')} sequences == {want}")


def test_cache_types(mlkv, wd):
    """Every KV cache format and key/value mix: info's exact bytes (element bytes + scales), a
    cached score that runs, eval reporting the format, and a clear error where a block format does
    not divide the head."""
    row = {"f32": lambda d: 4 * d, "f16": lambda d: 2 * d, "bf16": lambda d: 2 * d,
           "q8_0": lambda d: 34 * d // 32, "q4_0": lambda d: 18 * d // 32}
    d = make_model(os.path.join(wd, "ct-mlkv"), "--family", "llama", "--layers", "4", "--embd", "128",
                   "--heads", "4", "--kv-heads", "1", "--kv-layers", "2")
    for args, k, v in [(["--cache-type", "q8_0"], "q8_0", "q8_0"), (["--cache-type", "q4_0"], "q4_0", "q4_0"),
                       (["--cache-type", "bf16"], "bf16", "bf16"),
                       (["--cache-type-k", "q8_0", "--cache-type-v", "f16"], "q8_0", "f16"),
                       (["--cache-type", "q4_0", "--cache-type-k", "f32"], "f32", "q4_0"),
                       (["--cache-type", "q8_0/bf16"], "q8_0", "bf16")]:
        r = run([mlkv, "info", d, "--ctx", "64", "--batch", "2", *args, "--json"])
        j = json.loads(r.stdout) if r.returncode == 0 else {}
        m, g, dh = j.get("n_kv_layers", 0), j.get("n_head_kv", 0), j.get("n_embd_head", 0)
        want = m * g * (row[k](dh) + row[v](dh))
        check(r.returncode == 0 and j["kv_bytes_per_token"] == want and j["kv_cache_bytes"] == 2 * 64 * want,
              f"info {' '.join(args)}: {j.get('kv_bytes_per_token')} bytes per token == {want}")
        r = run([mlkv, "score", d, "--tokens", "1 2 3 4 5 6", "--cached", *args, "--json"])
        ok = r.returncode == 0 and len(json.loads(r.stdout)["logprobs"]) == 5
        check(ok, f"score --cached {' '.join(args)}: exit {r.returncode} {r.stderr.strip()[:120]}")
    small = make_model(os.path.join(wd, "ct-small"), "--family", "llama", "--layers", "2", "--embd", "32",
                       "--heads", "4")
    for cmd in (["info", small], ["score", small, "--tokens", "1 2 3", "--cached"],
                ["generate", small, "--tokens", "1 2", "-n", "2"]):
        expect_error(mlkv, [*cmd, "--cache-type-k", "q8_0"], "multiple of 32",
                     f"{cmd[0]} with q8_0 keys on a head of 8")
    expect_usage(mlkv, ["info", d, "--cache-type-v", "q5_1"], "--cache-type-v: must be one of",
                 "an unknown value format")
    # -k / -v take one format: a pair there would silently lose a half; an empty value would read
    # as "not given" (f32).
    for opt in ("--cache-type-k", "--cache-type-v"):
        expect_usage(mlkv, ["info", d, opt, "q8_0/f16"], "takes one format", f"a KEYS/VALUES pair in {opt}")
    for opt in ("--cache-type", "--cache-type-k", "--cache-type-v"):
        r = run([mlkv, "info", d, opt, ""])  # a usage error (CLI11's exit code 2), naming the option
        check(r.returncode == 2 and f"{opt}: empty" in r.stderr, f"an empty {opt}: exit {r.returncode}, "
              f"stderr {r.stderr.strip()[:120]!r}")
    expect_usage(mlkv, ["info", d, "--cache-type-v", "q4_0+hadamard"], "keys only", "rotated values")
    # A cache too large to address is an error, not a wrapped negative size.
    expect_error(mlkv, ["info", d, "--ctx", "2147483647", "--batch", "2147483647"], "more than can be addressed",
                 "a cache of 2^31 x 2^31 positions")


def test_real_model_cache_formats(mlkv, wd, shared):
    """The shipped real model converted to MLKV-2 (2 KV layers) decodes the same 32 greedy tokens with
    f16 and bf16 caches as with f32. q8_0/q4_0 do not apply: its head size is 16, and their blocks
    of 32 lie along the head (the refusal is checked in test_cache_types)."""
    src = os.path.join(shared, "data", "models", "aidreams260K", "aidreams260K.bin")
    if not os.path.exists(src):
        print("skip real-model cache formats: no " + src)
        return
    d = os.path.join(wd, "aidreams-mlkv2")
    shutil.rmtree(d, ignore_errors=True)
    r = run([mlkv, "convert", src, d, "--kv-layers", "2"])
    check(r.returncode == 0, f"convert aidreams260K to MLKV-2: exit {r.returncode} {r.stderr[:200]}")
    toks = {}
    for ct in ("f32", "f16", "bf16"):
        r = run([mlkv, "generate", d, "--tokens", "1 45 67 89", "-n", "32", "--ignore-eos",
                 "--cache-type", ct, "--json"])
        toks[ct] = json.loads(r.stdout)["results"][0]["tokens"] if r.returncode == 0 else None
    for ct in ("f16", "bf16"):
        check(toks[ct] is not None and toks[ct] == toks["f32"] and len(toks["f32"]) == 32,
              f"aidreams260K MLKV-2: 32 greedy tokens with a {ct} cache equal f32's")


def test_generate(mlkv, wd):
    d = make_model(os.path.join(wd, "gen"), "--family", "gpt_neox", "--layers", "4", "--embd", "32",
                   "--heads", "4", "--kv-heads", "2", "--kv-layers", "2", "--vocab", "97")
    base = [mlkv, "generate", d, "--tokens", "1 2 3", "--tokens", "5 6", "--tokens", "7", "-n", "12",
            "--json", "--ignore-eos"]
    a = json.loads(run(base + ["--temp", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "42"]).stdout)
    b = json.loads(run(base + ["--temp", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "42",
                               "--parallel", "1"]).stdout)
    c = json.loads(run(base + ["--temp", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "43"]).stdout)
    ta = [r["tokens"] for r in a["results"]]
    check(len(ta) == 3 and all(len(t) == 12 for t in ta), "generate: 3 prompts x 12 tokens")
    check(ta == [r["tokens"] for r in b["results"]], "generate: same seed, same tokens, any batching")
    check(ta != [r["tokens"] for r in c["results"]], "generate: another seed, other tokens")
    g1 = json.loads(run(base).stdout)
    g2 = json.loads(run(base + ["--parallel", "1"]).stdout)
    check([r["tokens"] for r in g1["results"]] == [r["tokens"] for r in g2["results"]],
          "generate: greedy is the same batched or alone")
    # Greedy continuation = argmax of the model's own scores: each generated token must score at least
    # as high as under any sampled alternative (checked through `score`).
    seq = [1, 2, 3] + g1["results"][0]["tokens"]
    s = json.loads(run([mlkv, "score", d, "--tokens", " ".join(map(str, seq)), "--json"]).stdout)
    check(len(s["logprobs"]) == len(seq) - 1, "score: n-1 log-probs")


def test_continuation_text(mlkv, wd):
    """A text prompt's continuation is the text the whole sequence decodes to after the prompt's (its
    first word keeps its space), streamed or not; a run refused before generating prints nothing."""
    m = os.path.join(SHARED, "data", "models", "aidreams260K", "aidreams260K.bin")
    if not os.path.exists(m):
        print("skip continuation text: shared model missing")
        return
    tok = os.path.join(os.path.dirname(m), "tok512.bin")
    prompt = "Once upon a time there"  # greedy: " align, ..." (a first piece with a space)
    r = run([mlkv, "generate", m, "--tokenizer", tok, "-p", prompt, "-n", "8", "--ignore-eos", "--json"])
    res = json.loads(r.stdout)["results"][0] if r.returncode == 0 else {"prompt_tokens": [], "tokens": [], "text": ""}
    ids = " ".join(map(str, res["prompt_tokens"] + res["tokens"]))
    whole = run([mlkv, "tokenizer", "decode", "-t", tok, ids]).stdout.rstrip("\n")
    before = run([mlkv, "tokenizer", "decode", "-t", tok, " ".join(map(str, res["prompt_tokens"]))]).stdout.rstrip("\n")
    check(before == prompt and whole == before + res["text"] and res["text"].startswith(" "),
          f"generate --json: the continuation after the prompt's text ({res['text']!r}, whole {whole!r})")
    r = run([mlkv, "generate", m, "--tokenizer", tok, "-p", prompt, "-n", "8", "--ignore-eos"])
    check(r.returncode == 0 and r.stdout == whole + "\n", f"generate streams prompt + continuation: {r.stdout!r}")
    r = run([mlkv, "generate", m, "--tokenizer", tok, "-p", prompt, "-p", prompt, "-n", "8", "--ignore-eos"])
    check(r.returncode == 0 and r.stdout.splitlines() == [f"[{i}] {whole}" for i in range(2)],
          f"generate, two prompts: {r.stdout!r}")
    r = run([mlkv, "generate", m, "--tokenizer", tok, "-p", prompt, "--ctx", "2"])
    check(r.returncode == 1 and r.stdout == "" and "context" in r.stderr,
          f"a refused run prints nothing: exit {r.returncode}, stdout {r.stdout!r}")


def test_tiny_temperature(mlkv, wd):
    """A temperature so small that logit / T overflows a float still samples: the greedy tokens."""
    m = os.path.join(SHARED, "data", "models", "aidreams260K", "aidreams260K.bin")
    if not os.path.exists(m):
        print("skip tiny temperature: shared model missing")
        return
    base = [mlkv, "generate", m, "--tokens", "1 403 407", "-n", "16", "--json", "--ignore-eos"]
    greedy = json.loads(run(base).stdout)["results"][0]["tokens"]
    for t in ("1e-38", "1e-40", "1e-45"):
        got = json.loads(run(base + ["--temp", t, "--seed", "3"]).stdout)["results"][0]["tokens"]
        check(got == greedy, f"generate --temp {t}: the greedy tokens (got {got[:6]}..., want {greedy[:6]}...)")
    # Refused by the option's range check (a usage error, exit 2) before the sampler sees it.
    r = run([mlkv, "generate", m, "--tokens", "1", "--temp", "nan"])
    check(r.returncode == 2 and "--temp: nan is out of range" in r.stderr,
          f"--temp nan: exit {r.returncode}, stderr {r.stderr.strip()[:160]!r}")


def edit_json(path, **changes):
    with open(path) as f:
        j = json.load(f)
    j.update(changes)
    with open(path, "w") as f:
        json.dump(j, f, indent=2)


def test_eos_ids(mlkv, wd, shared):
    def gen(d, *extra):
        r = run([mlkv, "generate", d, "--tokens", "5", "-n", "8", "--json", *extra])
        check(r.returncode == 0, f"generate {os.path.basename(d)} {' '.join(extra)}: exit {r.returncode} {r.stderr[:200]}")
        res = json.loads(r.stdout)["results"][0] if r.returncode == 0 else {"tokens": [], "finish_reason": ""}
        return res["tokens"], res["finish_reason"]

    # The issue's case, on a model whose greedy continuation of 5 is 229, 133, 175, 2.
    chain = eos_model.ISSUE_CHAIN
    d = eos_model.bigram_model(os.path.join(wd, "eos-issue"), chain, eos_model.ISSUE_EOS)
    check(gen(d, "--ignore-eos") == (chain[1:] + [chain[-1]] * 3, "length"),
          f"the model's greedy continuation of 5 is {chain[1:5]}")
    check(gen(d) == ([229, 133, 175], "eos"), f"eos [2, 175]: stops after 175, never emits 2 ({gen(d)})")
    for name, eos, geneos, want in [("reversed", [175, 2], None, [229, 133, 175]),
                                    ("single", 2, None, [229, 133, 175, 2]),
                                    ("generation-config", 2, [2, 175], [229, 133, 175]),
                                    ("generation-config-wins", [2, 175], 2, [229, 133, 175, 2]),
                                    ("none", None, None, None)]:
        v = os.path.join(wd, "eos-" + name)
        shutil.rmtree(v, ignore_errors=True)
        shutil.copytree(d, v)
        edit_json(os.path.join(v, "config.json"), eos_token_id=eos)
        if geneos is not None:
            with open(os.path.join(v, "generation_config.json"), "w") as f:
                json.dump({"bos_token_id": 1, "eos_token_id": geneos, "temperature": 0.6}, f)
        toks, why = gen(v)
        ok = (toks, why) == ((want, "eos") if want else (chain[1:] + [chain[-1]] * 3, "length"))
        check(ok, f"eos {name} (config {eos}, generation_config {geneos}): {toks} finish {why}")
    j = json.loads(run([mlkv, "info", d, "--json"]).stdout)
    check(j.get("eos_token_ids") == [2, 175], f"info --json eos_token_ids {j.get('eos_token_ids')}")
    j = json.loads(run([mlkv, "info", os.path.join(wd, "eos-generation-config-wins"), "--json"]).stdout)
    check(j.get("eos_token_ids") == [2], f"info: generation_config.json wins ({j.get('eos_token_ids')})")
    out = os.path.join(wd, "eos-reconverted")
    shutil.rmtree(out, ignore_errors=True)
    r = run([mlkv, "convert", d, out])
    with open(os.path.join(out, "config.json")) as f:
        check(r.returncode == 0 and json.load(f).get("eos_token_id") == [2, 175], "convert writes the EOS list back")
    check(gen(out) == ([229, 133, 175], "eos"), "the converted model stops the same way")

    # The shipped aidreams260K model, converted, with EOS ids taken from its own greedy continuation.
    src = os.path.join(shared, "data", "models", "aidreams260K", "aidreams260K.bin")
    if not os.path.exists(src):
        print("skip EOS ids on aidreams260K: no shared data")
        return
    a = os.path.join(wd, "eos-aidreams")
    shutil.rmtree(a, ignore_errors=True)
    r = run([mlkv, "convert", src, a])
    check(r.returncode == 0, f"convert aidreams260K: {r.stderr.strip()[:160]}")
    seq, _ = gen(a, "--ignore-eos")
    k = next(i for i in range(1, len(seq)) if seq[i] not in seq[:i])  # a token seen first at k
    edit_json(os.path.join(a, "config.json"), eos_token_id=[2, seq[k]])
    check(gen(a) == (seq[:k + 1], "eos"), f"aidreams260K, eos [2, {seq[k]}]: stops after {seq[:k + 1]}")
    with open(os.path.join(a, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [seq[0]]}, f)
    check(gen(a) == (seq[:1], "eos"), f"aidreams260K: generation_config.json [{seq[0]}] wins")


def test_bad_input(mlkv, wd):
    good = make_model(os.path.join(wd, "good"), "--family", "llama", "--layers", "2", "--embd", "32",
                      "--heads", "4", "--vocab", "50", "--ctx", "16")
    st = os.path.join(good, "model.safetensors")
    header, data = read_st_header(st)

    def variant(name, mutate_header=None, data_override=None, config=None, raw=None):
        d = os.path.join(wd, "bad-" + name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(good, d)
        p = os.path.join(d, "model.safetensors")
        if raw is not None:
            with open(p, "wb") as f:
                f.write(raw)
        elif mutate_header or data_override is not None:
            h = json.loads(json.dumps(header))
            if mutate_header:
                mutate_header(h)
            write_st(p, h, data if data_override is None else data_override)
        if config:
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            config(cfg)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f)
        return d

    tok = ["--tokens", "1 2 3"]
    expect_error(mlkv, ["score", variant("trunc", data_override=data[: len(data) // 2]), *tok],
                 "outside the data buffer", "truncated safetensors")
    with open(st, "rb") as f:
        raw = f.read()
    expect_error(mlkv, ["score", variant("trunc-header", raw=raw[:40]), *tok], "truncated", "truncated header")

    def lie(h):
        k = "model.embed_tokens.weight"
        h[k]["data_offsets"] = [h[k]["data_offsets"][0], h[k]["data_offsets"][1] + 1 << 30]
    expect_error(mlkv, ["score", variant("lie", lie), *tok], "data_offsets", "header offsets that lie")

    def dtype(h):
        h["model.norm.weight"]["dtype"] = "Q4_K"
    expect_error(mlkv, ["score", variant("dtype", dtype), *tok], "unknown dtype 'Q4_K'", "unknown dtype")

    # A NaN or an infinity in a weight: refused at load, naming the tensor (it would make every
    # output NaN), in safetensors (f32 here) and in a llama2.c file.
    for name, bits in (("nan", 0x7FC00000), ("inf", 0x7F800000), ("-inf", 0xFF800000)):
        k = "model.layers.1.mlp.down_proj.weight"
        o = header[k]["data_offsets"][0] + 4 * 37
        bad = data[:o] + struct.pack("<I", bits) + data[o + 4:]
        expect_error(mlkv, ["score", variant("w" + name, data_override=bad), *tok],
                     f"tensor '{k}'", f"a {name} weight")
    l2c = os.path.join(SHARED, "data", "models", "aidreams260K", "aidreams260K.bin")
    if os.path.exists(l2c):
        with open(l2c, "rb") as f:
            raw2 = bytearray(f.read())
        raw2[28 + 4 * 1000:28 + 4 * 1001] = struct.pack("<I", 0x7FC00000)
        bad_bin = os.path.join(wd, "nan-weight.bin")
        with open(bad_bin, "wb") as f:
            f.write(raw2)
        expect_error(mlkv, ["score", bad_bin, *tok], "non-finite weight", "a NaN weight in a llama2.c file")

    # A valid file without one tensor: its bytes go too, the others move up (the tensors must
    # tile the data buffer).
    gone = "model.layers.1.mlp.down_proj.weight"
    b0, b1 = header[gone]["data_offsets"]

    def missing(h):
        del h[gone]
        for k, v in h.items():
            if k != "__metadata__" and v["data_offsets"][0] >= b1:
                v["data_offsets"] = [v["data_offsets"][0] - (b1 - b0), v["data_offsets"][1] - (b1 - b0)]
    expect_error(mlkv, ["score", variant("missing", missing, data_override=data[:b0] + data[b1:]), *tok],
                 "missing tensor 'model.layers.1.mlp.down_proj.weight'", "missing tensor")

    # Two tensors on the same bytes (the output head aliasing the embedding), a hole, bytes left over:
    # the tensors do not tile the buffer.
    def alias(h):
        h["lm_head.weight"]["data_offsets"] = h["model.embed_tokens.weight"]["data_offsets"]
    expect_error(mlkv, ["score", variant("alias", alias), *tok],
                 "tensors 'lm_head.weight'", "tensors overlapping")
    expect_error(mlkv, ["score", variant("leftover", data_override=data + b"\0" * 8), *tok],
                 "belong to no tensor", "bytes that belong to no tensor")

    def null_meta(h):
        h["__metadata__"] = None
    r = run([mlkv, "score", variant("nullmeta", null_meta), *tok, "--json"])
    check(r.returncode == 0, f"__metadata__: null loads (exit {r.returncode}, {r.stderr.strip()[:120]})")

    def window(c):
        c["sliding_window"] = 4
    expect_error(mlkv, ["info", variant("window", config=window)], "'sliding_window' = 4 is not supported",
                 "sliding_window refused by name")

    def shape(h):
        s = h["model.layers.0.self_attn.o_proj.weight"]["shape"]
        h["model.layers.0.self_attn.o_proj.weight"]["shape"] = [s[1] // 2, s[0] * 2]
    expect_error(mlkv, ["score", variant("shape", shape), *tok], "o_proj.weight", "wrong shape")

    def fwd(c):
        c["kv_source"] = [1, 1]
    expect_error(mlkv, ["score", variant("fwd", config=fwd), *tok], "points forward", "kv_source forward")

    def nonowner(c):
        c["num_hidden_layers"] = 3
        c["kv_source"] = [0, 0, 1]
    expect_error(mlkv, ["info", variant("nonowner", config=nonowner)], "does not own K/V", "kv_source at a non-owner")

    def div(c):
        c["num_key_value_heads"] = 3
    expect_error(mlkv, ["info", variant("div", config=div)], "not divisible", "n_head not divisible by n_head_kv")

    def badjson(c):
        c["vocab_size"] = "fifty"
    expect_error(mlkv, ["info", variant("badjson", config=badjson)], "'vocab_size' must be an integer", "bad config value")

    expect_error(mlkv, ["score", good, "--tokens", "1 50 2"], "token id 50 is outside the vocabulary", "token id >= vocab")
    expect_error(mlkv, ["generate", good, "--tokens", "1 99", "-n", "2"], "outside the vocabulary", "generate: token id >= vocab")
    expect_error(mlkv, ["score", good, "--tokens", " ".join(["1"] * 18)], "context overflow", "score: context overflow")
    r = run([mlkv, "score", good, "--tokens", " ".join(["1"] * 17), "--json"])
    check(r.returncode == 0 and len(json.loads(r.stdout)["logprobs"]) == 16, "score: n_ctx + 1 tokens fit (n_ctx positions)")
    expect_error(mlkv, ["generate", good, "--tokens", " ".join(["1"] * 17), "-n", "2"], "context overflow",
                 "generate: prompt longer than the context")
    expect_error(mlkv, ["score", good, "--tokens", "1 x 2"], "'x' is not a token id", "malformed token list")
    expect_error(mlkv, ["score", os.path.join(wd, "nope"), *tok], "neither a model folder", "missing model")
    r = run([mlkv, "generate", good, "--tokens", "1", "--top-p", "1.5"])  # a range: a usage error
    check(r.returncode == 2 and "--top-p: 1.5 is out of range" in r.stderr,
          f"bad sampling option: exit {r.returncode}, stderr {r.stderr.strip()[:80]!r}")
    expect_error(mlkv, ["info", good, "--kv-budget", "12 parsecs"], "unknown unit", "bad --kv-budget unit")
    expect_error(mlkv, ["info", good, "--kv-budget", "-1G"], "not a positive size", "negative --kv-budget")
    expect_error(mlkv, ["serve", good, "--kv-budget", "1K", "--port", "0"], "holds no block",
                 "serve: a budget too small for one KV block")
    expect_error(mlkv, ["serve", good, "--kv-budget", "1K", "--block-size", "0", "--port", "0"],
                 "holds no sequence", "serve: a budget too small for one sequence (whole contexts)")
    r = run([mlkv, "serve", good, "--kv-budget", "1G", "--parallel", "2", "--block-size", "0"])
    check(r.returncode == 2, f"serve: --kv-budget with --parallel and whole contexts is a usage error "
                             f"(got {r.returncode})")
    r = run([mlkv, "score"])
    check(r.returncode == 2, f"usage error exits 2 (got {r.returncode})")
    r = run([mlkv, "--help"])
    check(r.returncode == 0 and "info" in r.stdout, "--help lists subcommands")


def test_weight_formats(mlkv, wd, shared):
    """--weights f16, bf16 and q8_0 on the CPU score within the format's rounding of f32, full and
    cached; q8_0 is refused, naming a matrix, where a row is not whole 32-value blocks (the shipped
    aidreams model's MLP is 172 wide), and an unknown format names the choices."""
    d = make_model(os.path.join(wd, "wf-llama"), "--family", "llama", "--layers", "3", "--embd", "64",
                   "--heads", "4", "--kv-heads", "2", "--ff", "96")
    toks = "1 2 3 4 5 6 7 8 9 10 11 12"
    base = json.loads(run([mlkv, "score", d, "--tokens", toks, "--json"]).stdout)["logprobs"]
    # The model's logits are tens (weights of std 0.35 in the reference), so the formats move a
    # log-prob by their relative rounding times that: f16 2^-11, bf16 2^-8, q8_0 up to 1/254 of
    # each block's largest value. The exact checks (against f32 over the rounded weights) are the
    # unit tests WeightsLowPrecision.*; here the CLI path, full == cached, and the scale.
    for w, tol in (("f16", 3e-2), ("bf16", 0.15), ("q8_0", 0.3)):
        lps = []
        for cached in ([], ["--cached"]):
            r = run([mlkv, "score", d, "--tokens", toks, "--weights", w, *cached, "--json"])
            lp = json.loads(r.stdout)["logprobs"] if r.returncode == 0 else []
            lps.append(lp)
            diff = max((abs(a - b) for a, b in zip(lp, base)), default=float("inf"))
            check(r.returncode == 0 and len(lp) == len(base) and diff <= tol,
                  f"score --weights {w} {' '.join(cached)}: max |dlogp| vs f32 {diff:.2e} <= {tol}")
        same = max((abs(a - b) for a, b in zip(*lps)), default=float("inf"))
        check(same <= 1e-4, f"score --weights {w}: full == cached ({same:.1e})")
    tiny = os.path.join(shared, "data", "models", "aidreams260K", "aidreams260K.bin")
    if os.path.exists(tiny):
        expect_error(mlkv, ["score", tiny, "--tokens", "1 2 3", "--weights", "q8_0"], "multiple of 32",
                     "q8_0 weights on a model with 172-wide rows")
    expect_usage(mlkv, ["score", d, "--tokens", "1 2", "--weights", "q4_0"], "--weights: must be f32, f16, bf16 or q8_0",
                 "an unknown weight format")


def test_bench_sweep(mlkv, wd):
    """bench --sweep: every configuration x cache x context x batch row, KV bytes per token by the
    formula 2 m g d_head elem, the three files written (the SVG well-formed), bad sweeps refused."""
    import xml.etree.ElementTree as ET
    out = os.path.join(wd, "sweep")
    args = [mlkv, "bench", "--random", "tiny-neox", "--sweep", "--sweep-batch", "1,3", "--sweep-ctx", "16,40",
            "--sweep-cache", "f32,f16", "--gen", "2", "--reps", "1", "--no-bandwidth", "--threads", "1"]
    r = run(args + ["--sweep-out", out, "--json"])
    j = json.loads(r.stdout) if r.returncode == 0 else {"rows": []}
    rows = j["rows"]
    names = list(dict.fromkeys(x["config"] for x in rows))
    check(names == ["MHA-16", "MQA-4", "MLKV-4", "MLKV-2", "MLKV-1"], f"sweep configurations {names}")
    check(len(rows) == 5 * 2 * 2 * 2, f"sweep rows {len(rows)} == 40")
    elem = {"f32": 4, "f16": 2}
    check(all(x["kv_bytes_per_token"] == 2 * x["kv_layers"] * x["kv_heads"] * 16 * elem[x["cache_type"]]
              for x in rows), "sweep KV bytes per token == 2 m g d_head elem")
    check(all(x["decode_tok_s"] > 0 and x["bound"] == "unknown" and not x["skipped"] for x in rows),
          "sweep rows ran (no probes: bound unknown)")
    files = [os.path.join(out, f) for f in ("sweep.md", "sweep.json", "sweep.svg")]
    ok = all(os.path.exists(f) for f in files)
    if ok:
        ET.parse(files[2])
        ok = open(files[0]).read().count("\n| MLKV-2 |") == 8
    check(ok, "sweep wrote sweep.md (8 MLKV-2 rows), sweep.json and a well-formed sweep.svg")
    log = os.path.join(out, "sweep-rows.jsonl")
    logged = [json.loads(l) for l in open(log)] if os.path.exists(log) else []
    check([(x["config"], x["decode_tok_s"]) for x in logged] == [(x["config"], x["decode_tok_s"]) for x in rows],
          f"sweep logged each row as it ran ({len(logged)} lines of sweep-rows.jsonl)")
    r = run(args + ["--sweep-out", out, "--sweep-configs", "4x4,1x1", "--sweep-max-cache", "0.0000001", "--json"])
    j = json.loads(r.stdout) if r.returncode == 0 else {"rows": []}
    check(len(j["rows"]) == 16 and all(x["skipped"] for x in j["rows"]),
          "sweep --sweep-configs 4x4,1x1 with a tiny --sweep-max-cache: 16 rows, all skipped")
    for extra, needle, what in ((["--sweep-configs", "3x3"], "does not fit", "g not dividing the heads"),
                                (["--sweep-configs", "5x1"], "does not fit", "m above the layers"),
                                (["--sweep-configs", "4by4"], "wants MxG", "a malformed configuration"),
                                (["--sweep-ctx", "2"], "a context must be in", "a context of gen"),
                                (["--sweep-cache", "q8_0"], "multiple of 32", "q8_0 on a head of 16")):
        expect_error(mlkv, [*args[1:], "--sweep-out", out, *extra], needle, f"bench --sweep: {what}")
    # A bad cache type is refused before the output folder is made, naming the option.
    fresh = os.path.join(wd, "sweep-refused")
    expect_usage(mlkv, [*args[1:], "--sweep-out", fresh, "--sweep-cache", "f16+hadamard"], "--sweep-cache:",
                 "bench --sweep: rotated f16 keys")
    check(not os.path.exists(fresh), "a refused sweep makes no output folder")
    # A single run's options are not silently ignored by a sweep, nor the sweep's without --sweep.
    for extra, needle in ((["--batch", "4"], "--batch sets up a single run"),
                          (["--prompt", "64"], "use --sweep-ctx"),
                          (["--cache-type", "f16"], "use --sweep-cache"),
                          (["--cache-type-k", "f16"], "--cache-type-k sets up a single run"),
                          (["--kv-heads", "1"], "use --sweep-configs"),
                          (["--kv-layers", "2"], "use --sweep-configs"),
                          (["--synthetic-context"], "always fills a synthetic context")):
        expect_error(mlkv, [*args[1:], "--sweep-out", out, *extra], needle, f"bench --sweep with {extra[0]}")
    # OMP_WAIT_POLICY=PASSIVE (sleeping OpenMP threads) slows decode: bench says so, and only then.
    one = [mlkv, "bench", "--random", "tiny-neox", "--gen", "1", "--reps", "1", "--no-bandwidth", "--threads", "1"]
    for policy, warned in (("passive", True), ("ACTIVE", False), (None, False)):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        r = run(one, env=env)
        check(r.returncode == 0 and ("OMP_WAIT_POLICY" in r.stderr) == warned,
              f"bench with OMP_WAIT_POLICY={policy}: {'a' if warned else 'no'} warning "
              f"(exit {r.returncode}, stderr {r.stderr.strip()[:120]!r})")
    for extra in (["--sweep-batch", "2"], ["--sweep-out", out], ["--sweep-max-cache", "1"]):
        expect_error(mlkv, ["bench", "--random", "tiny-neox", "--gen", "1", "--reps", "1", "--no-bandwidth", *extra],
                     f"{extra[0]} applies only with --sweep", f"bench {extra[0]} without --sweep")


def test_bench_profile(mlkv, wd):
    """bench --profile: the decode step op by op; the weight bytes of its rows add up to the step's
    weight bytes, attention's to the K/V read, their times to about the step; refused with --sweep."""
    args = [mlkv, "bench", "--random", "tiny-neox", "--prompt", "24", "--gen", "8", "--reps", "3",
            "--no-bandwidth", "--threads", "1", "--profile"]
    for extra in ([], ["--cache-type", "f16", "--weights", "f16"]):
        r = run(args + extra + ["--json"])
        j = json.loads(r.stdout) if r.returncode == 0 else {}
        rows = {x["op"]: x for x in j.get("profile", [])}
        want = {"embedding", "norms", "q/k/v projections", "attention (softmax, QK^T, PV)",
                "attention output projection", "MLP projections", "output layer (+ loss in training)", "other"}
        check(want <= set(rows), f"bench --profile {' '.join(extra)}: rows {sorted(rows)}")
        if not want <= set(rows):
            continue
        weights = sum(x["bytes_per_step"] for k, x in rows.items() if not k.startswith("attention (softmax"))
        check(weights == j["weight_bytes_per_step"],
              f"profile weight bytes {weights} == the step's {j['weight_bytes_per_step']}")
        check(rows["attention (softmax, QK^T, PV)"]["bytes_per_step"] == j["kv_read_bytes_per_step"],
              "profile attention bytes == the step's K/V read")
        check(rows["embedding"]["bytes_per_step"] == 0 and rows["other"]["bytes_per_step"] == 0,
              "embedding and other read no weights in the profile")
        ops = sum(x["ms_per_step"] for k, x in rows.items() if k != "other")
        step = j["decode_step_ms"]
        check(all(x["ms_per_step"] >= 0 for x in rows.values()) and 0.3 * step <= ops <= 3 * step,
              f"profile ops {ops:.4f} ms about the step's {step:.4f} ms")
    r = run(args)
    check(r.returncode == 0 and "decode step, op by op" in r.stdout and "MLP projections" in r.stdout,
          "bench --profile prints the op table")
    # A paged cache with the sequences' blocks interleaved (as a server's): same bytes, runs.
    r = run(args + ["--batch", "3", "--block-size", "4", "--json"])
    j = json.loads(r.stdout) if r.returncode == 0 else {}
    check(j.get("block_size") == 4 and j.get("decode_tok_s", 0) > 0 and j.get("kv_cache_bytes", 0) > 0,
          f"bench --block-size 4: ran, block_size {j.get('block_size')}")
    expect_usage(mlkv, [*args[1:], "--block-size", "-1"], "--block-size", "bench --block-size -1")
    expect_error(mlkv, ["bench", "--random", "tiny-neox", "--gen", "2", "--reps", "1", "--no-bandwidth",
                        "--profile", "--sweep", "--sweep-batch", "1", "--sweep-ctx", "16", "--sweep-out",
                        os.path.join(wd, "sweep-profile")], "--profile sets up a single run",
                 "bench --sweep --profile")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "..", "shared"))
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    test_info_bytes(a.mlkv, a.workdir)
    test_cache_types(a.mlkv, a.workdir)
    test_real_model_cache_formats(a.mlkv, a.workdir, a.shared)
    test_generate(a.mlkv, a.workdir)
    test_eos_ids(a.mlkv, a.workdir, a.shared)
    test_bad_input(a.mlkv, a.workdir)
    test_tiny_temperature(a.mlkv, a.workdir)
    test_continuation_text(a.mlkv, a.workdir)
    test_weight_formats(a.mlkv, a.workdir, a.shared)
    test_bench_sweep(a.mlkv, a.workdir)
    test_bench_profile(a.mlkv, a.workdir)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("all CLI checks passed")


if __name__ == "__main__":
    main()
