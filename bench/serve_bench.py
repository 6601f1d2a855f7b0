#!/usr/bin/env python3
"""Serving under a fixed KV-cache memory budget, end to end over HTTP: the same model at several
KV-sharing configurations (`mlkv convert` of one random Pythia-160M-geometry model), each served by
`mlkv serve --kv-budget B --ctx C` (as many parallel sequences as the budget holds), each hit by the
same burst of concurrent completion requests. Reports the parallel sequences the budget gave,
the aggregate generated tokens/s and the request latencies.

    bench/serve_bench.py --mlkv build/bin/mlkv [--budget 512M --ctx 1024 --clients 32 --prompt 256 --gen 32]

The random source model is written once into --workdir by the test suite's PyTorch reference
(tests/reference/mlkv_ref.py make) and reused. Prints a markdown table for docs/BENCHMARKS.md.
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

# name, KV layers m, KV heads g (12 layers x 12 heads)
CONFIGS = {"MHA-144": (12, 12), "GQA-48": (12, 4), "MLKV-48": (4, 12), "MQA-12": (12, 1),
           "MLKV-12": (4, 3), "MLKV-4": (4, 1), "MLKV-1": (1, 1)}


def make_models(mlkv, wd, names):
    base = os.path.join(wd, "MHA-144")
    if not os.path.exists(os.path.join(base, "config.json")):
        print("writing the random source model ...", file=sys.stderr, flush=True)
        subprocess.run(["/usr/bin/python3", REF, "make", "--family", "gpt_neox", "--layers", "12", "--embd", "768",
                        "--heads", "12", "--ff", "3072", "--vocab", "50304", "--ctx", "2048", "--out", base],
                       check=True)
    for name in names:
        out = os.path.join(wd, name)
        if name != "MHA-144" and not os.path.exists(os.path.join(out, "config.json")):
            m, g = CONFIGS[name]
            subprocess.run([mlkv, "convert", base, out, "--kv-layers", str(m), "--kv-heads", str(g), "--force"],
                           check=True, capture_output=True)
    return {n: os.path.join(wd, n) for n in names}


def serve(mlkv, model, budget, ctx, threads, block_size=0):
    cmd = [mlkv, "serve", model, "--port", "0", "--kv-budget", budget, "--ctx", str(ctx), "--no-tokenizer",
           "--max-queue", "100000", "--max-connections", "1100", "--block-size", str(block_size)]
    if threads:
        cmd += ["--threads", str(threads)]
    srv = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = srv.stderr.readline()
        m = re.search(r"http://[\d.]+:(\d+)", line)
        if m:
            return srv, int(m.group(1))
        if srv.poll() is not None:
            break
    srv.kill()
    raise RuntimeError(f"mlkv serve did not start: {line}")


def request(port, tokens, gen):
    body = json.dumps({"prompt": tokens, "max_tokens": gen, "ignore_eos": True, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def burst(port, clients, prompt, gen, seed):
    rng = random.Random(seed)
    prompts = [[rng.randrange(50304) for _ in range(prompt)] for _ in range(clients)]
    lat = [0.0] * clients
    made = [0] * clients
    failed = []

    def one(i):
        t = time.time()
        try:
            r = request(port, prompts[i], gen)
        except Exception as e:  # counted and reported: a serving benchmark must not hide errors
            failed.append(f"{type(e).__name__}: {e}")
            return
        lat[i] = time.time() - t
        made[i] = r["usage"]["completion_tokens"]

    t0 = time.time()
    ths = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    wall = time.time() - t0
    if failed:
        print(f"{len(failed)} of {clients} requests failed, first: {failed[0]}", file=sys.stderr)
    return sum(made) / wall, statistics.median(lat), max(lat), len(failed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--workdir", default="runs/serve_bench")
    ap.add_argument("--configs", default="MHA-144,GQA-48,MLKV-48,MQA-12,MLKV-12,MLKV-4,MLKV-1")
    ap.add_argument("--budget", default="512M")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    names = a.configs.split(",")
    models = make_models(a.mlkv, a.workdir, names)
    print(f"budget {a.budget} of f32 KV cache, ctx {a.ctx} per sequence, {a.clients} concurrent requests of "
          f"{a.prompt} prompt + {a.gen} generated tokens (EOS ignored)\n")
    print("| config | m x g | KV bytes/token | parallel sequences | generated tok/s | median latency s | max latency s | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        srv, port = serve(a.mlkv, models[name], a.budget, a.ctx, a.threads)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30) as r:
                info = json.loads(r.read())
            request(port, [1, 2, 3], 2)  # warm-up
            tok_s, med, mx, n_failed = burst(port, a.clients, a.prompt, a.gen, seed=1)
        finally:
            srv.terminate()
            srv.wait(timeout=60)
        m, g = CONFIGS[name]
        print(f"| {name} | {m} x {g} | {info['kv_bytes_per_token']} | {info['n_parallel']} | {tok_s:.1f} | "
              f"{med:.2f} | {mx:.2f} | {n_failed} |", flush=True)


if __name__ == "__main__":
    main()
