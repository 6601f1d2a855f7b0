#!/usr/bin/env python3
"""End-to-end test of `mlkv serve`: concurrent requests batched together give the same greedy tokens
as `mlkv generate`, streaming gives the same tokens as a plain reply, bad and oversized requests get
4xx with a JSON error, any of a model's EOS ids ends a completion, and SIGTERM stops the server
cleanly.

usage: test_server.py --mlkv build/bin/mlkv --workdir DIR
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import eos_model
from serve_util import start_server, stop_server

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "reference", "mlkv_ref.py")
FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def post(port, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def choice0(body):
    """The first choice of a completion reply (its fields: text, tokens, finish_reason, ...)."""
    return json.loads(body)["choices"][0]


def stream_choices(body):
    """The choices of every chunk of a streamed reply, in order."""
    out = []
    for line in body.splitlines():
        if line.startswith("data: {"):
            out += json.loads(line[6:]).get("choices", [])
    return out


def test_eos_ids(mlkv, wd):
    """The issue's case through the server: a model whose greedy continuation of token 5 is 229, 133,
    175, 2 (tests/e2e/eos_model.py) with "eos_token_id": [2, 175] stops a completion after 175 with
    finish_reason "eos" and never emits 2, plain or streamed."""
    d = eos_model.bigram_model(os.path.join(wd, "eos-issue"), eos_model.ISSUE_CHAIN, eos_model.ISSUE_EOS)
    srv, port = start_server(mlkv, [d, "--parallel", "2"])
    check(port is not None, "server on the EOS-list model announces its port")
    if port is None:
        srv.kill()
        return
    try:
        status, body = post(port, {"prompt": [5], "max_tokens": 8, "temperature": 0})
        r = choice0(body) if status == 200 else {}
        check(r.get("tokens") == [229, 133, 175] and r.get("finish_reason") == "stop",
              f"serve: eos [2, 175] stops after 175: {status} {body[:120]}")
        status, body = post(port, {"prompt": [5], "max_tokens": 8, "temperature": 0, "stream": True})
        events = stream_choices(body)
        check(sum([e.get("tokens", []) for e in events], []) == [229, 133, 175]
              and events[-1].get("finish_reason") == "stop", "serve: streamed, the same stop")
        status, body = post(port, {"prompt": [5], "max_tokens": 8, "temperature": 0, "ignore_eos": True})
        check(status == 200 and len(choice0(body)["tokens"]) == 8, "serve: ignore_eos runs to max_tokens")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=10) as r:
            check(json.loads(r.read()).get("eos_token_ids") == [2, 175], "GET /v1/model lists the EOS ids")
    finally:
        rc = stop_server(srv)
    check(rc == 0, f"SIGTERM stops the EOS-list server (exit {rc})")


def test_generation_error(mlkv, wd):
    """A generation that breaks down (non-finite logits after 229, 133) is an HTTP 500 naming the
    error, not a completion; streamed, the last event says finish_reason "error"; the server
    keeps serving other requests."""
    d = eos_model.bigram_model(os.path.join(wd, "overflow"), eos_model.ISSUE_CHAIN, eos_model.ISSUE_EOS,
                               overflow_at=2)
    srv, port = start_server(mlkv, [d, "--parallel", "2"])
    check(port is not None, "server on the overflowing model announces its port")
    if port is None:
        srv.kill()
        return
    try:
        status, body = post(port, {"prompt": [5], "max_tokens": 8, "temperature": 0})
        r = json.loads(body) if body.startswith("{") else {}
        check(status == 500 and "non-finite" in r.get("error", {}).get("message", "")
              and r["choices"][0].get("tokens") == [229, 133], f"serve: non-finite logits give a 500: {status} {body[:200]}")
        status, body = post(port, {"prompt": [5], "max_tokens": 8, "temperature": 0, "stream": True})
        events = stream_choices(body)
        check(sum([e.get("tokens", []) for e in events], []) == [229, 133] and events
              and "non-finite" in events[-1].get("error", ""),
              f"serve: streamed, the last event says error: {body[-200:]}")
        status, body = post(port, {"prompt": [229], "max_tokens": 1, "temperature": 0})
        check(status == 200 and choice0(body).get("tokens") == [133],
              f"serve: a request that does not reach the overflow still completes: {status} {body[:120]}")
    finally:
        rc = stop_server(srv)
    check(rc == 0, f"SIGTERM stops the server after a failed generation (exit {rc})")


def raw_http(port, request):
    """Sends raw request bytes on one connection that asks to be closed; returns everything the
    server wrote back."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out.decode(errors="replace")
            out += chunk


def test_http_edges(mlkv, wd):
    """What fuzz/http_request_fuzz.cpp found, through the real server: a Range header is ignored
    (replies are whole, errors too: cpp-httplib cut a 404's JSON to the range), and request paths
    never become /metrics labels (each path was a new series, its quotes unescaped)."""
    d = eos_model.bigram_model(os.path.join(wd, "eos-issue"), eos_model.ISSUE_CHAIN, eos_model.ISSUE_EOS)
    srv, port = start_server(mlkv, [d, "--parallel", "2", "--api-key", "k"])
    check(port is not None, "server with an API key announces its port")
    if port is None:
        srv.kill()
        return
    try:
        body = json.dumps({"prompt": [5], "max_tokens": 3, "temperature": 0}).encode()
        for path, auth, want in [("/v1/completions", True, 200), ("/v1/nothing", True, 404),
                                 ("/v1/completions", False, 401)]:
            req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: bytes=0-5\r\n"
                   f"{'Authorization: Bearer k' + chr(13) + chr(10) if auth else ''}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            out = raw_http(port, req)
            head, _, rest = out.partition("\r\n\r\n")
            ok = head.startswith(f"HTTP/1.1 {want} ") and "Content-Range" not in head
            try:
                json.loads(rest)
            except ValueError:
                ok = False
            check(ok, f"Range ignored on {path} ({want}): {head.splitlines()[0] if head else out!r}")
        out = raw_http(port, b"GET /health HTTP/1.1\r\nConnection: close\r\nRange: bytes=0-2,x\r\n\r\n")
        check(out.startswith("HTTP/1.1 416 ") and "Content-Range" not in out and out.endswith("}"),
              f"a malformed Range is a 416 with the whole error object: {out[:60]!r}")
        for path in ["/v1/a\"b", "/v1/x1", "/v1/x2", "/nothing"]:
            raw_http(port, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        routes = set(re.findall(r'^mlkv_requests_total\{route="([^"]*)",', text, re.M))
        check(routes <= {"/v1/completions", "/health", "unknown"} and "unknown" in routes,
              f"request paths are not metric labels: {sorted(routes)}")
        statuses = set(re.findall(r'^mlkv_requests_total\{route="/v1/completions",status="([^"]*)"\}', text, re.M))
        check("200" in statuses and all(s.isdigit() and len(s) == 3 for s in statuses),
              f"a completion that returned 200 is counted as 200: statuses {sorted(statuses)}")
        # The auth scheme is case-insensitive (RFC 9110); the key is not.
        for value, want in (("bearer k", 200), ("BEARER k", 200), ("Bearer K", 401), ("Bearerk", 401)):
            req = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   f"Authorization: {value}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            out = raw_http(port, req)
            check(out.startswith(f"HTTP/1.1 {want} "), f"Authorization: {value!r} -> {want}: {out[:40]!r}")
        # A second server on the same port is refused (no SO_REUSEPORT sharing the connections).
        second = subprocess.run([mlkv, "serve", d, "--port", str(port)], capture_output=True, text=True,
                                timeout=120)
        check(second.returncode == 1 and "cannot listen" in second.stderr,
              f"a second server on port {port} is refused: exit {second.returncode}, "
              f"{second.stderr.strip()[-120:]!r}")
    finally:
        rc = stop_server(srv)
    check(rc == 0, f"SIGTERM stops the server (exit {rc})")


def test_queue_and_seed_limits(mlkv, wd):
    """A request for more sequences than --max-queue can never run: 400 naming n, not 429; seeds are
    any 64-bit integer (modulo 2^64), others refused naming the range."""
    d = eos_model.bigram_model(os.path.join(wd, "eos-queue"), eos_model.ISSUE_CHAIN, eos_model.ISSUE_EOS)
    srv, port = start_server(mlkv, [d, "--max-queue", "3"])
    check(port is not None, "server with --max-queue 3 announces its port")
    if port is None:
        srv.kill()
        return
    try:
        status, body = post(port, {"prompt": [5], "max_tokens": 2, "n": 10})
        check(status == 400 and "--max-queue" in body and '"param":"n"' in body.replace(" ", ""),
              f"n=10 over --max-queue 3: 400 naming n ({status} {body[:160]})")
        status, _ = post(port, {"prompt": [5], "max_tokens": 2, "n": 3})
        check(status == 200, f"n=3 within --max-queue 3: 200 ({status})")
        same = [post(port, {"prompt": [5], "max_tokens": 4, "temperature": 1, "seed": s})
                for s in (-1, 18446744073709551615)]
        check(all(st == 200 for st, _ in same) and choice0(same[0][1]) == choice0(same[1][1]),
              "seed -1 and 2^64 - 1 are one seed (modulo 2^64)")
        for bad in (18446744073709551616, 1.5, "7"):
            status, body = post(port, {"prompt": [5], "max_tokens": 2, "seed": bad})
            check(status == 400 and "18446744073709551615" in body, f"seed {bad!r} refused naming the range ({status})")
    finally:
        rc = stop_server(srv)
    check(rc == 0, f"SIGTERM stops the server (exit {rc})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    model = os.path.join(a.workdir, "model")
    subprocess.run([sys.executable, REF, "make", "--family", "llama", "--layers", "4", "--embd", "32",
                    "--heads", "4", "--kv-heads", "2", "--kv-layers", "2", "--vocab", "97", "--ctx", "64",
                    "--out", model], check=True, capture_output=True)
    prompts = [[1, 2, 3], [5, 6], [7], [9, 8, 7, 6, 5], [11, 12, 13, 14], [20]]
    gen = subprocess.run([a.mlkv, "generate", model, "-n", "10", "--json", "--ignore-eos"] +
                         sum([["--tokens", " ".join(map(str, p))] for p in prompts], []),
                         capture_output=True, text=True, check=True)
    expected = [r["tokens"] for r in json.loads(gen.stdout)["results"]]

    # Three cache slots, asked for as a memory budget: 2 KV layers x 2 heads x d_head 8 x 2 x 4 bytes =
    # 256 bytes per token, 16384 per 64-token sequence; 50000 bytes hold 3 (checked at /v1/model).
    srv, port = start_server(a.mlkv, [model, "--kv-budget", "50000", "--max-body", "4096"])
    check(port is not None, "server announces its port")
    if port is None:
        srv.kill()
        sys.exit(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            check(r.status == 200, "GET /health")
        # Six concurrent requests on three cache slots: batched together and queued.
        results = [None] * len(prompts)

        def worker(i):
            results[i] = post(port, {"prompt": prompts[i], "max_tokens": 10, "temperature": 0, "ignore_eos": True})

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = [choice0(body)["tokens"] if status == 200 else None for status, body in results]
        check(got == expected, "concurrent greedy completions equal `mlkv generate`")
        # A burst of connections at once: every one is accepted and answered (the listen queue is
        # deep enough; with a queue of 5 some were reset).
        burst = [None] * 64

        def hit(i):
            try:
                burst[i] = post(port, {"prompt": [1 + i % 90], "max_tokens": 2, "ignore_eos": True})[0]
            except OSError as e:
                burst[i] = repr(e)

        threads = [threading.Thread(target=hit, args=(i,)) for i in range(len(burst))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = [b for b in burst if b != 200]
        check(not bad, f"64 simultaneous connections all answered 200 ({len(bad)} not: {bad[:2]})")
        # Streaming: the same tokens, one event each.
        status, body = post(port, {"prompt": prompts[0], "max_tokens": 10, "temperature": 0, "ignore_eos": True,
                                   "stream": True})
        events = stream_choices(body)
        streamed = sum([e.get("tokens", []) for e in events], [])
        check(status == 200 and streamed == expected[0] and events[-1].get("finish_reason") == "length"
              and body.rstrip().endswith("data: [DONE]"), "streamed tokens equal the plain reply")
        # Seeded sampling is reproducible.
        s1 = post(port, {"prompt": [1, 2], "max_tokens": 8, "temperature": 1.0, "seed": 5, "ignore_eos": True})
        s2 = post(port, {"prompt": [1, 2], "max_tokens": 8, "temperature": 1.0, "seed": 5, "ignore_eos": True})
        check(s1[0] == 200 and choice0(s1[1])["tokens"] == choice0(s2[1])["tokens"],
              "seeded sampling is reproducible")
        # Bad requests.
        for body, raw, code, needle, what in [
            (None, b"{not json", 400, "not valid JSON", "malformed JSON"),
            ({"max_tokens": 3}, None, 400, "'prompt' is required", "no prompt"),
            ({"prompt": "hello"}, None, 400, "no tokenizer", "text prompt without a tokenizer"),
            ({"prompt": [1, 97]}, None, 400, "outside the vocabulary", "token id >= vocab"),
            ({"prompt": [1], "max_tokens": 64}, None, 400, "exceed the context", "prompt + max_tokens > context"),
            ({"prompt": {"a": 1}}, None, 400, "list of token ids", "prompt of the wrong kind"),
            ({"prompt": [1], "top_p": 2.0}, None, 400, "'top_p' must be a number in (0, 1]", "bad sampling parameter"),
            ({"prompt": [1], "max_tokens": "many"}, None, 400, "'max_tokens' must be an integer", "wrong field type"),
            ({"prompt": [1] * 3000}, None, 413, "larger than 4096 bytes", "oversized body"),
        ]:
            status, text = post(port, body, raw)
            ok = status == code and (not needle or needle in text)
            if ok:
                ok = "message" in json.loads(text).get("error", {})
            check(ok, f"{what}: HTTP {status} {text[:100]!r}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=10) as r:
            info = json.loads(r.read())
            # Paged (the default): the budget is 12 blocks of 16 tokens (4096 bytes each).
            check(info["kv_blocks"] == 12 and info["block_size"] == 16 and info["kv_source"] == [0, 0, 2, 2],
                  f"GET /v1/model: {info}")
    finally:
        rc = stop_server(srv)
    check(rc == 0, f"SIGTERM stops the server (exit {rc})")
    test_eos_ids(a.mlkv, a.workdir)
    test_generation_error(a.mlkv, a.workdir)
    test_http_edges(a.mlkv, a.workdir)
    test_queue_and_seed_limits(a.mlkv, a.workdir)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("all server checks passed")


if __name__ == "__main__":
    main()
