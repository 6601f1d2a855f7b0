#!/usr/bin/env python3
"""`mlkv serve` through the official OpenAI Python client (and raw sockets where a client has to
misbehave): completions (text, a batch of texts, token ids), n, seed, stop (spanning tokens, not
returned, streamed too), logprobs, echo (prompt log-probs equal `mlkv score`), streaming with
usage, chat with a template, models, the error statuses (400 naming the field, 401, 404, 413, 429),
numeric range checks, clients that disconnect while queued, prefilling, decoding (streaming or
not) freeing their slot at once, and SIGTERM draining a running request.

usage: test_openai.py --mlkv build/bin/mlkv --shared ../shared --workdir DIR
Exit 77 (skipped) without the openai package (scripts/python_env.sh installs it into .venv).
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

try:
    import openai
except ImportError:
    print("SKIP: the openai package is not installed (scripts/python_env.sh makes .venv with it)")
    sys.exit(77)

from serve_util import start_server, stop_server  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "reference", "mlkv_ref.py")
FAILURES = []
CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def start(mlkv, args):
    srv, port = start_server(mlkv, args)
    if port is None:
        raise SystemExit(f"server {args} did not start")
    return srv, port


def stop(srv):
    return stop_server(srv)


def http(port, path, body=None, headers=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 method="POST" if data is not None else "GET", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def metric(port, name):
    _, text, _ = http(port, "/metrics")
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def client(port, key="unused"):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)


def raw_request(port, body):
    """Sends a completion request on a socket the caller closes (a client that goes away)."""
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def wait_for(cond, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return time.time() - t0
        time.sleep(0.02)
    return None


def test_api(mlkv, wd, shared):
    m = os.path.join(shared, "data", "models", "aidreams260K")
    d = os.path.join(wd, "aid")
    os.makedirs(d, exist_ok=True)
    for f in ("aidreams260K.bin", "tok512.bin"):
        if not os.path.exists(os.path.join(d, f)):
            os.symlink(os.path.join(m, f), os.path.join(d, f))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHATML}, f)
    model, tok = os.path.join(d, "aidreams260K.bin"), os.path.join(d, "tok512.bin")
    srv, port = start(mlkv, [model, "--tokenizer", tok, "--parallel", "4", "--max-body", "20000"])
    c = client(port)
    try:
        check([x.id for x in c.models.list().data] == ["aidreams260K"], "models.list names the model")
        check(c.models.retrieve("aidreams260K").id == "aidreams260K", "models.retrieve")
        prompt = "Once upon a time"
        r = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=24, temperature=0)
        greedy = r.choices[0].text
        gen_ids = r.choices[0].model_extra["tokens"]
        check(r.object == "text_completion" and r.id.startswith("cmpl-") and len(greedy) > 0
              and r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 24,
              f"completion of a text prompt: {greedy!r}")
        # The same greedy tokens as `mlkv generate` on the same prompt ids.
        ids = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=0, echo=True,
                                   logprobs=0, temperature=0)
        n_prompt = ids.usage.prompt_tokens
        cli = subprocess.run([mlkv, "generate", model, "--tokenizer", tok, "--prompt", prompt, "-n", "24",
                              "--json", "--ignore-eos"], capture_output=True, text=True)
        cli_tokens = json.loads(cli.stdout)["results"][0]["tokens"] if cli.returncode == 0 else None
        check(cli_tokens == gen_ids, f"greedy tokens equal `mlkv generate` ({cli_tokens} vs {gen_ids})")
        # A batch of prompts: each choice equals the prompt alone.
        prompts = ["Once upon a time", "The little dog", "In the sky"]
        r = c.completions.create(model="aidreams260K", prompt=prompts, max_tokens=12, temperature=0)
        alone = [c.completions.create(model="aidreams260K", prompt=p, max_tokens=12, temperature=0).choices[0].text
                 for p in prompts]
        check([ch.index for ch in r.choices] == [0, 1, 2] and [ch.text for ch in r.choices] == alone,
              "a batch of text prompts gives each prompt's own completion, in order")
        # Token ids, and a list of lists of ids.
        r1 = c.completions.create(model="aidreams260K", prompt=gen_ids[:5], max_tokens=6, temperature=0)
        r2 = c.completions.create(model="aidreams260K", prompt=[gen_ids[:5], gen_ids[:3]], max_tokens=6,
                                  temperature=0)
        check(r2.choices[0].text == r1.choices[0].text and len(r2.choices) == 2,
              "token-id prompts (a list and a list of lists)")
        # n with a seed: reproducible; without a seed: fresh each time.
        a = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=16, temperature=1, n=3, seed=7)
        b = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=16, temperature=1, n=3, seed=7)
        ta, tb = [x.text for x in a.choices], [x.text for x in b.choices]
        check(len(ta) == 3 and ta == tb and len(set(ta)) > 1, f"n=3 with a seed: 3 choices, reproducible {ta}")
        u1 = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=24, temperature=1).choices[0].text
        u2 = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=24, temperature=1).choices[0].text
        check(u1 != u2, f"two unseeded requests at temperature 1 differ ({u1!r} / {u2!r})")
        # stop: a string that spans a token boundary inside the greedy text; the text ends before it.
        lp = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=24, temperature=0, logprobs=1)
        toks = lp.choices[0].logprobs.tokens
        check("".join(toks) == greedy, "logprobs tokens spell the text")
        cut = None
        pos = 0
        for t in toks[:-1]:
            pos += len(t)
            if 3 <= pos < len(greedy) - 1 and greedy.find(greedy[pos - 1:pos + 1]) == pos - 1:
                cut = pos - 1
                break
        stop_str = greedy[cut:cut + 2]
        r = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=24, temperature=0, stop=[stop_str, "zzzz"])
        check(r.choices[0].text == greedy[:cut] and r.choices[0].finish_reason == "stop",
              f"stop {stop_str!r} across a token boundary: {r.choices[0].text!r} == {greedy[:cut]!r}")
        s = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=24, temperature=0, stop=stop_str,
                                 stream=True)
        chunks = list(s)
        streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        check(streamed == greedy[:cut] and chunks[-1].choices[0].finish_reason == "stop",
              f"the same stop, streamed: {streamed!r}")
        # logprobs: top-N alternatives; greedy picks the most likely.
        r = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
        L = r.choices[0].logprobs
        check(len(L.token_logprobs) == 8 and all(len(t) <= 3 and abs(max(t.values()) - x) < 1e-6
                                                 for t, x in zip(L.top_logprobs, L.token_logprobs)),
              "logprobs=3: the greedy token is the most likely of the top 3")
        # The text continues the prompt's text: the whole sequence decodes to prompt + text (a first
        # word keeps its space), and with echo the tokens spell the text at their offsets.
        r = c.completions.create(model="aidreams260K", prompt="Once upon a time there", max_tokens=6,
                                 temperature=0, echo=True, logprobs=1)
        L = r.choices[0].logprobs
        check(r.choices[0].text.startswith("Once upon a time there ") and "".join(L.tokens) == r.choices[0].text
              and all(r.choices[0].text[o:o + len(t)] == t for o, t in zip(L.text_offset, L.tokens)),
              f"echo: the tokens spell the text at their offsets ({r.choices[0].text!r}, {L.tokens[:6]}, "
              f"{L.text_offset[:6]})")
        # echo: the prompt's log-probs are `mlkv score`'s.
        pid = gen_ids[:10]
        r = c.completions.create(model="aidreams260K", prompt=pid, max_tokens=0, echo=True, logprobs=1, temperature=0)
        got = r.choices[0].logprobs.token_logprobs
        sc = subprocess.run([mlkv, "score", model, "--tokens", " ".join(map(str, pid)), "--json"],
                            capture_output=True, text=True)
        want = json.loads(sc.stdout)["logprobs"] if sc.returncode == 0 else None
        check(got[0] is None and want is not None and len(got) == 10
              and max(abs(a - b) for a, b in zip(got[1:], want)) < 1e-5,
              f"echo: prompt log-probs equal `mlkv score` ({got[1:4]} vs {want[:3] if want else None})")
        # Streaming with usage.
        s = c.completions.create(model="aidreams260K", prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                 stream_options={"include_usage": True})
        chunks = list(s)
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        check(text == greedy and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24
              and chunks[-1].usage.prompt_tokens == n_prompt, "streamed text and usage equal the plain reply")
        # Chat through the model's (ChatML) template: the same as completing the rendered prompt.
        msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A dream"}]
        r = c.chat.completions.create(model="aidreams260K", messages=msgs, max_tokens=12, temperature=0)
        rendered = ("<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nA dream<|im_end|>\n"
                    "<|im_start|>assistant\n")
        want = c.completions.create(model="aidreams260K", prompt=rendered, max_tokens=12, temperature=0).choices[0].text
        check(r.object == "chat.completion" and r.choices[0].message.role == "assistant"
              and r.choices[0].message.content == want, f"chat applies the ChatML template: {want!r}")
        s = c.chat.completions.create(model="aidreams260K", messages=msgs, max_tokens=12, temperature=0, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        check(text == want, "chat streamed")
        r = c.chat.completions.create(model="aidreams260K", messages=msgs, max_tokens=4, temperature=0,
                                      logprobs=True, top_logprobs=2)
        check(len(r.choices[0].logprobs.content) == 4 and len(r.choices[0].logprobs.content[0].top_logprobs) == 2,
              "chat logprobs with top_logprobs")
        # Errors: OpenAI's error object, the field named.
        for kw, needle in [({"max_tokens": 4294967296}, "max_tokens"), ({"max_tokens": 4294967297}, "max_tokens"),
                           ({"max_tokens": 2.9}, "must be an integer"), ({"max_tokens": 1e10}, "from 0 to"),
                           ({"max_tokens": -1}, "from 0 to"),
                           ({"extra_body": {"top_k": 2 ** 32 + 40}}, "top_k"), ({"n": 0}, "'n'"), ({"n": 129}, "'n'"),
                           ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                           ({"logprobs": 21}, "logprobs"), ({"seed": 2 ** 64}, "seed"),
                           ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": ""}, "stop"),
                           ({"logit_bias": {"1": 5}}, "'logit_bias' is not supported"),
                           ({"best_of": 2}, "'best_of' is not supported"),
                           ({"suffix": "x"}, "'suffix' is not supported"),
                           ({"extra_body": {"tools": []}}, "'tools' is not supported"),
                           ({"presence_penalty": 0.5}, "presence_penalty"),
                           ({"extra_body": {"echo": "yes"}}, "'echo' must be true or false")]:
            try:
                c.completions.create(model="aidreams260K", prompt="x", **{"max_tokens": 2, **kw})
                check(False, f"{kw} refused")
            except openai.BadRequestError as e:
                msg = e.body.get("message", "") if isinstance(e.body, dict) else str(e)
                check(needle in msg, f"{kw} -> 400 {msg}")
        try:
            c.completions.create(model="nope", prompt="x", max_tokens=2)
            check(False, "unknown model refused")
        except openai.NotFoundError as e:
            check("nope" in str(e), "unknown model -> 404")
        st, body, _ = http(port, "/v1/engines")
        check(st == 404 and "error" in json.loads(body), "unknown route -> 404 with an error object")
        st, body, _ = http(port, "/v1/completions", raw=json.dumps({"prompt": "x" * 30000}).encode())
        check(st == 413 and "larger than" in json.loads(body)["error"]["message"], "oversized body -> 413")
        st, text, _ = http(port, "/metrics")
        check("mlkv_time_to_first_token_seconds_bucket" in text and "mlkv_generation_tokens_total" in text
              and 'status="400"' in text and "mlkv_kv_cache_tokens_capacity" in text, "GET /metrics (Prometheus)")
    finally:
        rc = stop(srv)
    check(rc == 0, f"SIGTERM stops the server (exit {rc})")

    # No chat template, an API key.
    srv, port = start(mlkv, [os.path.join(m, "aidreams260K.bin"), "--tokenizer", os.path.join(m, "tok512.bin"),
                             "--api-key", "sekret", "--model-name", "aid"])
    try:
        try:
            client(port, "wrong").models.list()
            check(False, "wrong key refused")
        except openai.AuthenticationError:
            check(True, "wrong API key -> 401")
        st, _, _ = http(port, "/v1/models")
        check(st == 401, "missing API key -> 401")
        c = client(port, "sekret")
        check(c.models.list().data[0].id == "aid", "the right key works; --model-name names the model")
        try:
            c.chat.completions.create(model="aid", messages=[{"role": "user", "content": "hi"}])
            check(False, "chat without a template refused")
        except openai.BadRequestError as e:
            check("chat template" in str(e), "chat without a template -> 400 saying so")
        st, _, _ = http(port, "/health")
        check(st == 200, "/health needs no key")
    finally:
        stop(srv)


def test_slots(mlkv, wd):
    """One cache slot and a queue of one on a model slow enough to watch: 429 when the queue is full,
    and every kind of disconnect frees the slot (or the queue place) at once."""
    model = os.path.join(wd, "slow")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        subprocess.run([sys.executable, REF, "make", "--family", "llama", "--layers", "6", "--embd", "512",
                        "--heads", "8", "--kv-heads", "8", "--kv-layers", "6", "--vocab", "1000", "--ctx", "4096",
                        "--out", model], check=True, capture_output=True)
    srv, port = start(mlkv, [model, "--parallel", "1", "--max-queue", "1", "--model-name", "slow"])
    long_req = {"prompt": [1, 2, 3], "max_tokens": 3000, "ignore_eos": True, "temperature": 0}
    try:
        def running():
            return metric(port, "mlkv_running_sequences")

        def queued():
            return metric(port, "mlkv_queue_depth")

        # Decoding, not streaming: the slot is freed within a step of the close.
        s = raw_request(port, long_req)
        check(wait_for(lambda: running() == 1, 10) is not None, "a long request runs")
        time.sleep(0.5)
        gen0 = metric(port, "mlkv_generation_tokens_total")
        s.close()
        t = wait_for(lambda: running() == 0, 5)
        check(t is not None and t < 1.0, f"non-streaming client gone while decoding: slot free after {t}s")
        st, body, _ = http(port, "/v1/completions", {"prompt": [4, 5], "max_tokens": 4, "temperature": 0})
        check(st == 200, "the next request runs")
        # Decoding, streaming.
        s = raw_request(port, {**long_req, "stream": True})
        s.recv(100)
        time.sleep(0.3)
        s.close()
        t = wait_for(lambda: running() == 0, 5)
        check(t is not None and t < 1.0, f"streaming client gone while decoding: slot free after {t}s")
        # Queued: the slot busy, the second request waits, its client leaves; a third is 429 while
        # the queue is full.
        a = raw_request(port, long_req)
        check(wait_for(lambda: running() == 1, 30) is not None, "the slot is taken again")
        b = raw_request(port, {"prompt": [7], "max_tokens": 5})
        check(wait_for(lambda: queued() == 1, 30) is not None, "a second request queues")
        c = client(port)
        try:
            c.completions.create(model="slow", prompt=[1], max_tokens=2)
            check(False, "a full queue refuses")
        except openai.RateLimitError as e:
            check(e.response.headers.get("retry-after") == "1", "full queue -> 429 with Retry-After")
        b.close()
        t = wait_for(lambda: queued() == 0, 5)
        check(t is not None and t < 1.0 and running() == 1, f"queued client gone: out of the queue after {t}s")
        a.close()
        check(wait_for(lambda: running() == 0, 5) is not None, "and the running one freed")
        # Prefilling: a long prompt whose client leaves during the prefill generates at most a token.
        gen0 = metric(port, "mlkv_generation_tokens_total")
        s = raw_request(port, {"prompt": list(range(1, 1000)) * 3, "max_tokens": 500, "ignore_eos": True})
        time.sleep(0.2)
        s.close()
        t = wait_for(lambda: running() == 0 and queued() == 0, 10)
        gen = metric(port, "mlkv_generation_tokens_total") - gen0
        check(t is not None and gen <= 2, f"client gone while prefilling: freed after {t}s, {gen:.0f} token(s)")
        # SIGTERM drains: a running request finishes; the server then exits 0.
        res = {}

        def run():
            res["r"] = client(port).completions.create(model="slow", prompt=[1, 2], max_tokens=150,
                                                         temperature=0, extra_body={"ignore_eos": True})

        th = threading.Thread(target=run)
        th.start()
        wait_for(lambda: running() == 1, 10)
        srv.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        st, body, _ = http(port, "/v1/completions", {"prompt": [1], "max_tokens": 2})
        check(st == 503, f"while draining, new requests get 503 ({st})")
        th.join(60)
        r = res.get("r")
        check(r is not None and r.usage.completion_tokens == 150, "SIGTERM lets the running request finish")
        rc = srv.wait(timeout=30)
        check(rc == 0, f"then the server exits 0 ({rc})")
    finally:
        if srv.poll() is None:
            srv.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(a.shared, "data", "models", "aidreams260K")):
        print(f"SKIP: no shared data at {a.shared}")
        sys.exit(77)
    os.makedirs(a.workdir, exist_ok=True)
    test_api(a.mlkv, a.workdir, a.shared)
    test_slots(a.mlkv, a.workdir)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("all OpenAI API checks passed")


if __name__ == "__main__":
    main()
