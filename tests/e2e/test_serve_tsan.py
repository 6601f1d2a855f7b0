#!/usr/bin/env python3
"""`mlkv serve` under ThreadSanitizer (ctest tsan_serve, label tsan; scripts/test.sh --tsan).

The TSan build of mlkv (preset tsan) serves a small random Llama model (GQA, a paged KV cache small
enough that sequences get preempted, repeated prompts hitting the prefix cache) while this script
drives it from many threads at once: plain and streamed completions, n > 1, stop strings,
logprobs, echo, chat, bad requests, pipelined requests, a client that leaves while decoding (plain and streamed) and
one that leaves while queued, /metrics, /health and /v1/model polled all along, and finally
SIGTERM while a request runs (drain). It fails when TSan printed any report or the server did
not exit 0.

What TSan can and cannot see: the server's own threads (HTTP workers, the engine thread, the
shutdown watcher) run mlkv code, instrumented (cpp-httplib, Debian's compiled library, is not:
tsan.supp says what that means). The engine's compute runs on OpenMP
(libgomp) with OpenBLAS (Debian's OpenMP build); neither library is instrumented, so TSan cannot
see the barriers that order the work of an OpenMP team and would report the team's writes to
shared activations as races (with two threads, dozens of them in the kernels). The server therefore
runs with one OpenMP thread (-t 1, which the CLI applies to OpenMP and OpenBLAS; its default, all
cores, would override OMP_NUM_THREADS=1): every forward pass runs on the engine thread itself, and
the concurrency under test is the server's. tests/e2e/tsan.supp lists the suppressions, each with its
reason; none names mlkv code.

usage: test_serve_tsan.py --mlkv build-tsan/bin/mlkv --shared ../shared --workdir DIR
       [--suppressions tests/e2e/tsan.supp]
Exit 77 (skipped) when the binary is not a ThreadSanitizer build.
"""
import argparse
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from eos_model import write_safetensors
from serve_util import start_server

FAILURES = []
LOCK = threading.Lock()
CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TSAN_EXIT = 66
ROUNDS = 3  # of the concurrent load: more interleavings for TSan to see (~1 s each on 2 cores)


def check(cond, what):
    with LOCK:
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            FAILURES.append(what)


def random_llama(out, vocab, embd=64, layers=2, heads=4, kv_heads=2, ff=128, ctx=256, seed=0):
    """A Llama folder with N(0, 0.05) weights (unit norms): random tokens, but every code path of a
    real model (GQA, rotary, the paged cache)."""
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    d_head = embd // heads

    def rnd(*shape):  # (shape, values) of a random matrix
        return list(shape), [rng.gauss(0.0, 0.05) for _ in range(shape[0] * shape[1])]

    tensors = [("model.embed_tokens.weight",) + rnd(vocab, embd)]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", [embd], [1.0] * embd),
            (p + "self_attn.q_proj.weight",) + rnd(embd, embd),
            (p + "self_attn.k_proj.weight",) + rnd(kv_heads * d_head, embd),
            (p + "self_attn.v_proj.weight",) + rnd(kv_heads * d_head, embd),
            (p + "self_attn.o_proj.weight",) + rnd(embd, embd),
            (p + "post_attention_layernorm.weight", [embd], [1.0] * embd),
            (p + "mlp.gate_proj.weight",) + rnd(ff, embd),
            (p + "mlp.up_proj.weight",) + rnd(ff, embd),
            (p + "mlp.down_proj.weight",) + rnd(embd, ff),
        ]
    tensors += [("model.norm.weight", [embd], [1.0] * embd), ("lm_head.weight",) + rnd(vocab, embd)]
    write_safetensors(os.path.join(out, "model.safetensors"), tensors)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
              "hidden_size": embd, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "intermediate_size": ff, "max_position_embeddings": ctx,
              "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1,
              "eos_token_id": 2, "torch_dtype": "float32"}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHATML}, f)
    return out


def is_tsan_build(path):
    with open(path, "rb") as f:
        return b"__tsan_init" in f.read()


def http(port, path, body=None, timeout=300):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def sse_events(text):
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def raw_request(port, body):
    """A completion request on a socket the caller closes (a client that goes away)."""
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


class Load:
    """Threads that run a function and record what failed."""

    def __init__(self):
        self.threads = []

    def run(self, name, fn, *args):
        def body():
            try:
                fn(*args)
            except Exception as e:  # a failed check, not a crash of the test
                check(False, f"{name}: {type(e).__name__}: {e}")
        t = threading.Thread(target=body, name=name)
        t.start()
        self.threads.append(t)

    def join(self, timeout):
        deadline = time.time() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.time()))
        alive = [t.name for t in self.threads if t.is_alive()]
        check(not alive, f"every client finished ({alive or 'all'})")


def drive(port, text):
    """Everything at once; returns when every client is done."""
    stop_polling = threading.Event()
    polls = {"n": 0, "bad": 0}

    def poller():
        while not stop_polling.is_set():
            for path in ("/metrics", "/health", "/v1/model", "/v1/models"):
                st, _ = http(port, path, timeout=60)
                polls["n"] += 1
                polls["bad"] += st != 200
            time.sleep(0.01)

    def prompt(i):
        if text:
            return ["Once upon a time", "The little dog", "In the sky there was", "A cat"][i % 4]
        return [1 + (i * 7 + k) % 500 for k in range(3 + i % 5)]

    def plain(i):
        body = {"prompt": prompt(i), "max_tokens": 24 + 4 * i, "temperature": 0.8, "seed": i, "n": 1 + i % 3,
                "logprobs": i % 3, "ignore_eos": True}
        if text and i % 2:
            body["stop"] = ["e t", "zz"]
        if i % 4 == 3:
            body["echo"] = True
        st, out = http(port, "/v1/completions", body)
        ok = st == 200 and len(json.loads(out)["choices"]) == body["n"]
        check(ok, f"plain completion {i} (n={body['n']}): {st} {out[:80] if not ok else ''}")

    def streamed(i):
        body = {"prompt": prompt(i), "max_tokens": 32, "temperature": 1.0, "n": 2, "stream": True,
                "stream_options": {"include_usage": True}, "logprobs": 1, "ignore_eos": True}
        st, out = http(port, "/v1/completions", body)
        ev = sse_events(out)
        ok = st == 200 and ev and ev[-1] == "[DONE]" and json.loads(ev[-2]).get("usage") is not None
        check(ok, f"streamed completion {i}: {st}, {len(ev)} events")

    def chat(i):
        body = {"messages": [{"role": "user", "content": "Tell a story"}], "max_tokens": 16,
                "temperature": 0, "stream": i % 2 == 1, "logprobs": True, "top_logprobs": 2}
        st, out = http(port, "/v1/chat/completions", body)
        check(st == 200, f"chat {i} (stream={body['stream']}): {st}")

    def bad(i):
        for body, want in [({"prompt": [1], "max_tokens": 2.5}, 400), ({"prompt": [1], "best_of": 2}, 400),
                           ({"prompt": [999999]}, 400)]:
            st, _ = http(port, "/v1/completions", body)
            check(st == want, f"bad request {i} -> {want} ({st})")
        st, _ = http(port, "/v1/nothing")
        check(st == 404, f"unknown route {i} -> 404 ({st})")

    def leave_decoding(stream):
        s = raw_request(port, {"prompt": [5, 6, 7], "max_tokens": 250, "ignore_eos": True, "stream": stream})
        if stream:
            s.recv(64)
        time.sleep(0.4)
        s.close()
        check(True, f"a client left while decoding (stream={stream})")

    def pipelined():
        # Two requests in one write on a kept-alive connection: the second waits in the connection
        # loop's read-ahead while the first runs.
        body = json.dumps({"prompt": [4, 5], "max_tokens": 8}).encode()
        req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
               + b"\r\n\r\n" + body)
        with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
            s.sendall(req + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        check(out.count(b"HTTP/1.1 200 ") == 2, f"two pipelined requests answered ({out[:60]!r})")

    def leave_queued():
        # Enough sequences at once to fill every slot; the last ones wait in the queue when this
        # client closes.
        s = raw_request(port, {"prompt": [9, 10], "max_tokens": 64, "n": 8, "ignore_eos": True})
        time.sleep(0.05)
        s.close()
        check(True, "a client left while its sequences were queued")

    poll = threading.Thread(target=poller)
    poll.start()
    load = Load()
    for i in range(6):
        load.run(f"plain{i}", plain, i)
    for i in range(3):
        load.run(f"stream{i}", streamed, i)
    if text:
        for i in range(2):
            load.run(f"chat{i}", chat, i)
    load.run("bad", bad, 0)
    load.run("leave-decoding", leave_decoding, False)
    load.run("leave-streaming", leave_decoding, True)
    load.run("leave-queued", leave_queued)
    load.run("pipelined", pipelined)
    load.join(600)
    stop_polling.set()
    poll.join(60)
    check(polls["n"] > 0 and polls["bad"] == 0, f"/metrics, /health, /v1/model(s) polled {polls['n']} times, "
                                                 f"{polls['bad']} not 200")


def metric(port, name):
    st, text = http(port, "/metrics", timeout=60)
    for line in text.splitlines() if st == 200 else []:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def drain_on_sigterm(srv, port):
    """SIGTERM while a long request runs (4 sequences of 250 tokens in a cache that holds one at a
    time): it finishes, a new one gets 503 meanwhile, the server exits."""
    res = {}

    def run():
        res["r"] = http(port, "/v1/completions", {"prompt": [3, 4], "max_tokens": 250, "n": 4, "ignore_eos": True,
                                                  "temperature": 0, "stream": True})

    th = threading.Thread(target=run)
    th.start()
    deadline = time.time() + 60
    while time.time() < deadline and not (metric(port, "mlkv_running_sequences") or 0) > 0:
        time.sleep(0.01)
    srv.send_signal(signal.SIGTERM)
    while time.time() < deadline and "draining" not in http(port, "/health", timeout=10)[1]:
        time.sleep(0.01)
    st, _ = http(port, "/v1/completions", {"prompt": [1], "max_tokens": 2})
    check(st == 503, f"while draining a new request gets 503 ({st})")
    th.join(300)
    st, out = res.get("r", (None, ""))
    ev = sse_events(out)
    check(st == 200 and ev and ev[-1] == "[DONE]", f"the running request finished during the drain ({st})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--suppressions", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                            "tsan.supp"))
    a = ap.parse_args()
    if not is_tsan_build(a.mlkv):
        print(f"SKIP: {a.mlkv} is not a ThreadSanitizer build (scripts/test.sh --tsan)")
        sys.exit(77)
    os.makedirs(a.workdir, exist_ok=True)
    # With the shared tokenizer (512 pieces) the model takes text: stop strings, chat, echo of text.
    tok = os.path.join(a.shared, "data", "models", "aidreams260K", "tok512.bin")
    text = os.path.exists(tok)
    model = random_llama(os.path.join(a.workdir, "model"), 512 if text else 500)
    args = [model, "--parallel", "6", "--block-size", "16", "--kv-budget", "160K", "--max-connections", "24",
            "-t", "1", "--drain-timeout", "120"]
    args += ["--tokenizer", tok, "--chat-template", "chatml"] if text else ["--no-tokenizer"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               TSAN_OPTIONS=f"halt_on_error=1 exitcode={TSAN_EXIT} second_deadlock_stack=1 "
                            f"suppressions={os.path.abspath(a.suppressions)}")
    log = os.path.join(a.workdir, "server.log")
    t0 = time.time()
    srv, port = start_server(a.mlkv, args, timeout=300, env=env, log=log)
    if port is None:
        srv.wait()
        print(open(log).read()[-4000:])
        raise SystemExit("the TSan server did not start")
    print(f"serving on {port} (text prompts: {text}), started in {time.time() - t0:.1f}s", flush=True)
    try:
        for _ in range(ROUNDS):
            drive(port, text)
        idle = lambda: metric(port, "mlkv_running_sequences") == 0 and metric(port, "mlkv_queue_depth") == 0
        deadline = time.time() + 120
        while time.time() < deadline and not idle():
            time.sleep(0.05)
        check(idle(), "every sequence ended (the clients that left were cancelled)")
        cancelled = metric(port, "mlkv_sequences_cancelled_total")
        check(cancelled is not None and cancelled >= 1, f"sequences cancelled by clients that left: {cancelled}")
        drain_on_sigterm(srv, port)
        rc = srv.wait(timeout=300)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    srv.log_reader.join(30)
    report = open(log, errors="replace").read()
    races = report.count("WARNING: ThreadSanitizer")
    if races:
        start = report.find("WARNING: ThreadSanitizer")
        print(report[max(0, start - 200):start + 12000])
    check(races == 0, f"no ThreadSanitizer report ({races}; log {log})")
    check(rc == 0, f"the server exited 0 after SIGTERM ({rc}{', TSan' if rc == TSAN_EXIT else ''})")
    print(f"{time.time() - t0:.1f}s in all")
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("the server ran clean under ThreadSanitizer")


if __name__ == "__main__":
    main()
