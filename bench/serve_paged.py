#!/usr/bin/env python3
"""The paged KV cache against whole-context reservation, end to end over HTTP, under one KV budget:

1. Mixed lengths. One model served twice with the same `--kv-budget` and `--ctx`: `--block-size 0`
   (every sequence reserves a whole context: budget / (ctx x KV bytes per token) sequences) and
   `--block-size 16` (a pool of blocks sequences take as they grow, up to --parallel sequences).
   The same burst of concurrent requests with random prompt and output lengths hits each. Reports
   the most sequences running at once (sampled from /metrics), generated tokens/s, preemptions.
2. Prefix cache. Time to first token (streamed) of a request whose 1000-token prompt prefix is
   cached (an earlier request had it) against one whose prefix is not (fresh random tokens),
   median of --reps pairs.

    bench/serve_paged.py --mlkv build/bin/mlkv --model DIR [--budget 256M --ctx 1024 --clients 64]

Without --model a random Pythia-160M-geometry model is written into --workdir (the test suite's
PyTorch reference). Prints markdown for docs/BENCHMARKS.md.
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "tests", "reference", "mlkv_ref.py")


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "e2e"))
from serve_util import start_cmd as start  # noqa: E402


def post(port, body, stream=False):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=3600)


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(mlkv_\w+) (\S+)$", text, re.M)}


def mixed(port, clients, ctx, vocab, seed):
    rng = random.Random(seed)
    work = []
    for _ in range(clients):
        p = rng.randint(16, ctx // 2)
        g = rng.randint(8, min(256, ctx - p))
        work.append(([rng.randrange(vocab) for _ in range(p)], g))
    made, failed = [0] * clients, []
    peak = [0]
    done = threading.Event()

    def sampler():
        while not done.is_set():
            peak[0] = max(peak[0], metrics(port).get("mlkv_running_sequences", 0))
            time.sleep(0.05)

    def one(i):
        try:
            with post(port, {"prompt": work[i][0], "max_tokens": work[i][1], "ignore_eos": True,
                             "temperature": 0}) as r:
                made[i] = json.loads(r.read())["usage"]["completion_tokens"]
        except Exception as e:  # reported: a serving benchmark must not hide errors
            failed.append(repr(e))

    th = threading.Thread(target=sampler)
    th.start()
    t0 = time.time()
    ths = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.time() - t0
    done.set()
    th.join()
    return peak[0], sum(made) / wall, wall, len(failed), sum(len(p) for p, _ in work), sum(g for _, g in work)


def ttft(port, prompt):
    t0 = time.time()
    with post(port, {"prompt": prompt, "max_tokens": 2, "ignore_eos": True, "temperature": 0, "stream": True}) as r:
        for line in r:
            if line.startswith(b"data: {"):
                return time.time() - t0
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--model", default="")
    ap.add_argument("--workdir", default="runs/serve_paged")
    ap.add_argument("--budget", default="256M")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prefix", type=int, default=1000)
    a = ap.parse_args()
    model = a.model
    if not model:
        model = os.path.join(a.workdir, "MHA-144")
        if not os.path.exists(os.path.join(model, "config.json")):
            os.makedirs(a.workdir, exist_ok=True)
            subprocess.run(["/usr/bin/python3", REF, "make", "--family", "gpt_neox", "--layers", "12", "--embd",
                            "768", "--heads", "12", "--ff", "3072", "--vocab", "50304", "--ctx", "2048", "--out",
                            model], check=True)
    vocab = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
    print(f"model {model}, budget {a.budget} (f32 KV), ctx {a.ctx}, {a.clients} concurrent requests, prompts "
          f"16..{a.ctx // 2} and outputs 8..256 tokens (uniform, seeded), EOS ignored\n")
    print("| KV cache | sequences possible | peak running | generated tok/s | wall s | preemptions | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bs in (0, 16):
        cmd = [a.mlkv, "serve", model, "--kv-budget", a.budget, "--ctx", str(a.ctx),
               "--no-tokenizer", "--max-queue", "100000", "--max-connections", "256", "--block-size", str(bs)]
        if bs:
            cmd += ["--parallel", str(a.parallel)]
        srv, port = start(cmd)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30) as r:
                info = json.loads(r.read())
            post(port, {"prompt": [1, 2, 3], "max_tokens": 2}).read()  # warm-up
            peak, tok_s, wall, n_failed, _, _ = mixed(port, a.clients, a.ctx, vocab, seed=1)
            pre = metrics(port).get("mlkv_preemptions_total", 0)
        finally:
            srv.terminate()
            srv.wait(timeout=120)
        what = (f"whole contexts ({info['n_parallel']} x {a.ctx})" if bs == 0 else
                f"paged, {info['kv_blocks']} blocks of {bs}")
        possible = info["n_parallel"] if bs == 0 else f"up to {a.parallel}"
        print(f"| {what} | {possible} | {peak:.0f} | {tok_s:.1f} | {wall:.1f} | {pre:.0f} | {n_failed} |", flush=True)

    # Prefix cache: time to first token with and without a cached prefix.
    srv, port = start([a.mlkv, "serve", model, "--kv-budget", a.budget, "--ctx", str(a.ctx),
                       "--no-tokenizer", "--parallel", "4"])
    try:
        rng = random.Random(2)
        cold, warm = [], []
        post(port, {"prompt": [1, 2, 3], "max_tokens": 2}).read()
        for _ in range(a.reps):
            prefix = [rng.randrange(vocab) for _ in range(a.prefix)]
            cold.append(ttft(port, prefix + [rng.randrange(vocab) for _ in range(8)]))
            warm.append(ttft(port, prefix + [rng.randrange(vocab) for _ in range(8)]))
        reused = metrics(port).get("mlkv_prefix_cache_tokens_total", 0)
    finally:
        srv.terminate()
        srv.wait(timeout=120)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"\nTime to first token, {a.prefix}-token prefix + 8 own tokens, median of {a.reps}: "
          f"not cached {c * 1000:.0f} ms, cached {w * 1000:.0f} ms ({c / w:.1f}x); "
          f"prefix-cache tokens reused {reused:.0f}")


if __name__ == "__main__":
    main()
