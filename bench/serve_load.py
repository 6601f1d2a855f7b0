#!/usr/bin/env python3
"""A bounded load test of `mlkv serve` on loopback: N concurrent streaming clients for D seconds,
each sending one completion after another (random token prompts and output lengths, seeded),
against each model given, under one KV budget. Reports failed requests, p50/p99 time to first
token and inter-token latency (from the arrival of the streamed chunks), generated tokens/s, and
the server's resident memory over time (sampled every few seconds: it must stay flat).

    bench/serve_load.py --mlkv build/bin/mlkv --model MHA=DIR --model MLKV-2=DIR2 \\
        [--clients 64 --seconds 300 --budget 256M --ctx 1024]

Prints markdown for docs/BENCHMARKS.md.
"""
import argparse
import http.client
import json
import os
import random
import sys
import threading
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "e2e"))
from serve_util import start_cmd as start  # noqa: E402


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def run_one(mlkv, name, model, a):
    vocab = json.load(open(f"{model}/config.json"))["vocab_size"]
    srv, port = start([mlkv, "serve", model, "--kv-budget", a.budget, "--ctx", str(a.ctx),
                       "--parallel", str(a.clients), "--no-tokenizer", "--max-queue", "100000",
                       "--max-connections", str(a.clients + 16)])
    ttfts, itls, failures = [], [], []
    tokens = [0]
    lock = threading.Lock()
    stop_at = time.time() + a.seconds
    rss = [(0.0, rss_mib(srv.pid))]

    def client(i):
        rng = random.Random(1000 + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while time.time() < stop_at:
            p = rng.randint(16, a.max_prompt)
            g = rng.randint(8, a.max_gen)
            body = json.dumps({"prompt": [rng.randrange(vocab) for _ in range(p)], "max_tokens": g,
                               "ignore_eos": True, "temperature": 0.8, "seed": rng.randrange(1 << 30),
                               "stream": True})
            t0 = time.time()
            try:
                conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
                last, n, my_itl = None, 0, []
                while True:
                    line = r.readline()
                    if not line:
                        break
                    if line.startswith(b"data: {"):
                        now = time.time()
                        ev = json.loads(line[6:])
                        if ev["choices"] and ev["choices"][0].get("tokens"):
                            if last is None:
                                first = now - t0
                            else:
                                my_itl.append(now - last)
                            last = now
                            n += 1
                    elif line.startswith(b"data: [DONE]"):
                        r.read()
                        break
                if n != g:
                    raise RuntimeError(f"{n} tokens streamed, {g} asked for")
                with lock:
                    ttfts.append(first)
                    itls.extend(my_itl)
                    tokens[0] += n
            except Exception as e:  # counted: the test must not hide errors
                with lock:
                    failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.close()

    t_start = time.time()
    ths = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in ths:
        t.start()
    while any(t.is_alive() for t in ths):
        time.sleep(a.rss_every)
        rss.append((time.time() - t_start, rss_mib(srv.pid)))
    wall = time.time() - t_start
    srv.terminate()
    srv.wait(timeout=120)
    after_warm = [m for t, m in rss if t >= min(30, a.seconds / 4)]
    return {
        "name": name, "requests": len(ttfts), "failed": len(failures), "first_failure": failures[:1],
        "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99), "itl_p50": pct(itls, 50), "itl_p99": pct(itls, 99),
        "tok_s": tokens[0] / wall, "rss_start": rss[0][1], "rss_peak": max(m for _, m in rss),
        "rss_warm_min": min(after_warm) if after_warm else float("nan"),
        "rss_warm_max": max(after_warm) if after_warm else float("nan"), "rss_end": rss[-1][1],
        "rss": rss,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--budget", default="256M")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--max-prompt", type=int, default=256)
    ap.add_argument("--max-gen", type=int, default=128)
    ap.add_argument("--rss-every", type=float, default=5.0)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    print(f"{a.clients} streaming clients for {a.seconds:.0f} s each, one request after another (prompts "
          f"16..{a.max_prompt}, outputs 8..{a.max_gen} tokens, temperature 0.8, EOS ignored); "
          f"--kv-budget {a.budget} --ctx {a.ctx}, paged (blocks of 16)\n")
    print("| model | requests | failed | TTFT p50 / p99 s | inter-token p50 / p99 ms | generated tok/s | "
          "RSS MiB: start / after warm-up min..max / end |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    out = []
    for spec in a.model:
        name, model = spec.split("=", 1)
        r = run_one(a.mlkv, name, model, a)
        out.append(r)
        print(f"| {name} | {r['requests']} | {r['failed']} | {r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} | "
              f"{r['itl_p50'] * 1000:.0f} / {r['itl_p99'] * 1000:.0f} | {r['tok_s']:.1f} | "
              f"{r['rss_start']:.0f} / {r['rss_warm_min']:.0f}..{r['rss_warm_max']:.0f} / {r['rss_end']:.0f} |",
              flush=True)
        if r["failed"]:
            print(f"  first failure: {r['first_failure']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
