"""mlkv.Model / Tokenizer / convert / evaluate against the `mlkv` CLI on the shipped tiny model:
the same numbers (score: to float32 rounding, see conftest.assert_close), the same tokens
(generate, same seed), the same documents (eval, convert), and the documented exceptions for bad
input."""

import json
import shutil
import threading
import time

import numpy as np
import pytest

import mlkv
from conftest import EVAL_DIR, SHARED, assert_close, cli_json, run_cli


def assert_same_report(a, b, rel=2e-5):
    """Equal JSON reports, floats within rel (conftest.assert_close's rule)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a, b)
        for k in a:
            assert_same_report(a[k], b[k], rel)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_same_report(x, y, rel)
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= rel * max(1.0, abs(a), abs(b)), (a, b)
    else:
        assert a == b, (a, b)


def assert_same_weights(fa, fb, rel=2e-5):
    from safetensors.numpy import load_file
    ta, tb = load_file(str(fa)), load_file(str(fb))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].shape == tb[k].shape and ta[k].dtype == tb[k].dtype, k
        assert_close(ta[k], tb[k], rel)

TEXT = "Once upon a time, in a quiet garden of pixels, a dream unfolded."


def test_config_and_sizes(tiny, tiny_path):
    c = tiny.config
    assert c["family"] == "llama" and c["n_layer"] == 4 and c["n_vocab"] == 512
    assert c["kv_source"] == [0, 1, 2, 3]
    assert tiny.n_params == c["n_params"] > 0
    # KV bytes: batch * ctx * 2 * layers * kv heads * head size * 4 bytes, and the CLI's number.
    assert tiny.kv_bytes(128, 2) == 2 * 128 * 2 * 4 * 4 * 16 * 4
    info = cli_json("info", tiny_path, "--ctx", "128", "--batch", "2", "--json")
    assert json.dumps(info).find(str(tiny.kv_bytes(128, 2))) >= 0
    assert tiny.kv_bytes(128, 2, "f16") == tiny.kv_bytes(128, 2) // 2


def test_score_equals_cli(tiny, tiny_path):
    ids = tiny.encode(TEXT, add_bos=True)
    ours = tiny.score(ids)
    assert ours.dtype == np.float32 and ours.shape == (len(ids) - 1,)
    cli = cli_json("score", tiny_path, "--tokens", " ".join(map(str, ids)), "--json")
    theirs = np.array(cli["logprobs"], dtype=np.float32)
    assert_close(ours, theirs)
    cached = tiny.score(ids, cached=True)
    cli_cached = np.array(
        cli_json("score", tiny_path, "--tokens", " ".join(map(str, ids)), "--cached", "--json")["logprobs"],
        dtype=np.float32)
    assert_close(cached, cli_cached)
    assert np.max(np.abs(cached - ours)) < 1e-4


def test_logits_agree_with_score(tiny):
    ids = tiny.encode(TEXT, add_bos=True)
    z = tiny.logits(ids)
    assert z.shape == (len(ids), 512) and z.dtype == np.float32
    assert z.base is not None  # a view over the engine's buffer, not a copy
    lse = np.log(np.exp(z.astype(np.float64) - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    lp = z[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]
    assert np.max(np.abs(lp - tiny.score(ids))) < 1e-4


@pytest.mark.parametrize("temp,top_k,top_p,seed", [(0.0, 0, 1.0, 0), (0.8, 40, 0.9, 7), (1.2, 0, 1.0, 123)])
def test_generate_equals_cli(tiny, tiny_path, temp, top_k, top_p, seed):
    prompts = [tiny.encode("Once upon a time", add_bos=True), tiny.encode("The cat", add_bos=True)]
    ours = tiny.generate(prompts, max_tokens=24, temperature=temp, top_k=top_k, top_p=top_p, seed=seed)
    args = ["generate", tiny_path, "-n", "24", "--temp", str(temp), "--top-k", str(top_k),
            "--top-p", str(top_p), "--seed", str(seed), "--json"]
    for p in prompts:
        args += ["--tokens", " ".join(map(str, p))]
    cli = cli_json(*args)["results"]
    assert [r["tokens"] for r in ours] == [r["tokens"] for r in cli]
    assert [r["finish_reason"] for r in ours] == [r["finish_reason"] for r in cli]
    # The text continues the prompt's: decode(prompt + tokens) == decode(prompt) + text.
    tok = tiny.tokenizer
    assert [r["text"] for r in ours] == [tok.decode_continuation(p, r["tokens"]) for p, r in zip(prompts, ours)]
    assert all(tok.decode(p + r["tokens"]) == tok.decode(p) + r["text"] for p, r in zip(prompts, ours))
    # Text prompts give the same as their ids; a single prompt gives a single result.
    one = tiny.generate("Once upon a time", max_tokens=24, temperature=temp, top_k=top_k,
                        top_p=top_p, seed=seed, add_bos=True)
    assert one["tokens"] == ours[0]["tokens"]


def test_stop_strings(tiny):
    full = tiny.generate("Once upon a time", max_tokens=40, add_bos=True)
    assert full["finish_reason"] == "length"
    stop = full["text"][10:13]
    cut = tiny.generate("Once upon a time", max_tokens=40, add_bos=True, stop=[stop, "never-there"])
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full["text"][: full["text"].find(stop)]
    assert full["tokens"][: len(cut["tokens"])] == cut["tokens"]
    assert stop in tiny.decode(cut["tokens"]) and stop not in tiny.decode(cut["tokens"][:-1])


def test_stream_equals_generate(tiny):
    prompts = ["Once upon a time", "The cat"]
    want = tiny.generate(prompts, max_tokens=16, temperature=0.7, seed=3, add_bos=True)
    events = list(tiny.generate_stream(prompts, max_tokens=16, temperature=0.7, seed=3, add_bos=True))
    for i, w in enumerate(want):
        toks = [e["token"] for e in events if e["index"] == i and "token" in e]
        text = "".join(e["text"] for e in events if e["index"] == i and "token" in e)
        final = [e for e in events if e["index"] == i and "finish_reason" in e]
        assert toks == w["tokens"] and text == w["text"]
        assert len(final) == 1 and final[0]["tokens"] == w["tokens"]
    # Closing the generator early stops the engine and leaves the model usable.
    g = tiny.generate_stream("Once upon a time", max_tokens=64, add_bos=True)
    next(g)
    g.close()
    assert tiny.generate("Once upon a time", max_tokens=16, temperature=0.7, seed=3,
                         add_bos=True)["tokens"] == want[0]["tokens"]


def _stream_texts(events, i):
    return [e["text"] for e in events if e["index"] == i and "token" in e]


def _final(events, i):
    (final,) = [e for e in events if e["index"] == i and "finish_reason" in e]
    return final


def test_stream_holds_back_stop_strings(tiny):
    """Text that could begin a stop string is held back until it is known not to, and the stop
    string is never sent: a prompt's token texts join to its final text, after every event."""
    prompts = ["Once upon a time", "The cat"]
    full = tiny.generate(prompts, max_tokens=40, add_bos=True)
    ids = [tiny.encode(p, add_bos=True) for p in prompts]
    for f, p in zip(full, ids):
        # A stop string across a token boundary: the token before it sends part of the string.
        ends = [len(tiny.tokenizer.decode_continuation(p, f["tokens"][:k])) for k in range(1, 41)]
        n_first, at = next((k + 1, b - 3) for k, b in enumerate(ends)
                           if b >= 8 and f["text"].find(f["text"][b - 3:b + 3]) == b - 3)
        stop = f["text"][at:at + 6]
        assert len(stop) == 6
        assert stop not in tiny.tokenizer.decode_continuation(p, f["tokens"][:n_first])
        stops = [stop, "never-there", f["text"][at:at + 2] + "#"]  # the last: a prefix that fails
        want = tiny.generate(p, max_tokens=40, stop=stops)
        events = list(tiny.generate_stream([p, ids[1 - ids.index(p)]], max_tokens=40, stop=stops))
        final = _final(events, 0)
        assert final["finish_reason"] == "stop" and final["text"] == want["text"] == f["text"][:at]
        texts = _stream_texts(events, 0)
        assert "".join(texts) == final["text"]
        assert len(texts) == len(want["tokens"]) and len(texts) > n_first
        sent = ""
        for t in texts:
            sent += t
            assert not any(s in sent for s in stops) and final["text"].startswith(sent)
        # The other prompt, stopped or not, joins to its final text too.
        assert "".join(_stream_texts(events, 1)) == _final(events, 1)["text"]
    # The tester's case: a stop string that may never come, and a held-back tail released at the end.
    for stop in (["flower"], ["e"], [full[0]["text"][-3:] + "zz"]):
        events = list(tiny.generate_stream(prompts, max_tokens=40, add_bos=True, stop=stop))
        for i, w in enumerate(tiny.generate(prompts, max_tokens=40, add_bos=True, stop=stop)):
            assert "".join(_stream_texts(events, i)) == _final(events, i)["text"] == w["text"]
            assert not any(s in w["text"] for s in stop)


@pytest.mark.parametrize("stop", [None, ["unfold", "garden"]])
def test_stream_text_independent_of_consumer_timing(tiny, stop):
    """An event's text is fixed when its token is sampled: a consumer that pauses between events
    gets the same events as one that does not, each token with the text it adds."""
    prompts = ["Once upon a time", "The cat"]
    args = dict(max_tokens=16, temperature=0.8, seed=5, add_bos=True, stop=stop)
    fast = list(tiny.generate_stream(prompts, **args))
    slow = []
    for e in tiny.generate_stream(prompts, **args):
        slow.append(e)
        time.sleep(0.02)  # the engine runs ahead meanwhile
    assert slow == fast
    for i, p in enumerate(prompts):
        final = _final(fast, i)
        assert "".join(_stream_texts(fast, i)) == final["text"]
        if stop is None:  # every token's own text (ASCII here: nothing held back)
            ctx = tiny.encode(p, add_bos=True)
            dec = tiny.tokenizer.decode_continuation
            want = [dec(ctx, final["tokens"][:k + 1])[len(dec(ctx, final["tokens"][:k])):]
                    for k in range(len(final["tokens"]))]
            assert _stream_texts(fast, i) == want
            assert [e["token"] for e in fast if e["index"] == i and "token" in e] == final["tokens"]


def test_stream_releases_held_text_at_context_end(tiny):
    ids = tiny.encode(TEXT * 20, add_bos=True)[: tiny.n_ctx - 5]
    want = tiny.generate(ids, max_tokens=40)
    assert want["finish_reason"] == "context"
    for stop in (None, [want["text"][-1] + "\x01"]):  # the last char held back until the end
        events = list(tiny.generate_stream(ids, max_tokens=40, stop=stop))
        assert events[-1]["finish_reason"] == "context"
        assert "".join(_stream_texts(events, 0)) == events[-1]["text"] == want["text"]


def test_gil_released_during_compute(tiny):
    ids = tiny.encode(TEXT * 4, add_bos=True)[:120]
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.0005)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        for _ in range(30):
            tiny.score(ids)
    finally:
        stop.set()
        t.join()
    assert len(ticks) > 3


def test_tokenizer(tiny_path):
    tok = mlkv.Tokenizer.load(tiny_path)
    assert tok.n_vocab == 512 and tok.kind == "llama2c"
    ids = tok.encode(TEXT, add_bos=True)
    assert ids[0] == tok.bos_id and tok.decode(ids) == TEXT
    cli = cli_json("score", tiny_path, "--text", TEXT, "--bos", "--json")
    assert cli["tokens"] == ids


def test_evaluate_equals_cli(tiny, tiny_path, workdir):
    ours = mlkv.evaluate(tiny, tasks=["piqa", "arc_easy"], limit=20, eval_dir=EVAL_DIR, bos=True)
    out = workdir / "eval.json"
    run_cli("eval", tiny_path, "piqa", "arc_easy", "--limit", "20", "--eval-dir", str(EVAL_DIR),
            "--bos", "--json", str(out))
    cli = json.loads(out.read_text())
    for doc in (ours, cli):  # timings differ from run to run
        for r in doc["results"].values():
            r.pop("items_per_s", None)
            r.pop("seconds", None)
    assert ours == cli
    assert 0 <= ours["results"]["piqa"]["acc"] <= 1 and ours["results"]["piqa"]["n"] == 20


def test_evaluate_takes_a_path(tiny, tiny_path):
    """mlkv.evaluate(path) loads the model (as mlkv.convert takes paths); anything else that is not
    a Model is a TypeError naming what is expected."""
    from pathlib import Path

    def strip(doc):
        for r in doc["results"].values():
            r.pop("items_per_s", None)
            r.pop("seconds", None)
        return doc

    ours = strip(mlkv.evaluate(tiny, tasks=["piqa"], limit=5, eval_dir=EVAL_DIR, bos=True))
    for path in (tiny_path, Path(tiny_path)):
        assert strip(mlkv.evaluate(path, tasks=["piqa"], limit=5, eval_dir=EVAL_DIR, bos=True)) == ours
    with pytest.raises(TypeError, match="mlkv.Model or the path"):
        mlkv.evaluate(42, tasks=["piqa"], eval_dir=EVAL_DIR)
    with pytest.raises(FileNotFoundError):
        mlkv.evaluate(tiny_path + ".missing", tasks=["piqa"], eval_dir=EVAL_DIR)


def test_convert_equals_cli(tiny_path, workdir):
    a, b = workdir / "conv_py", workdir / "conv_cli"
    ours = mlkv.convert(tiny_path, a, kv_heads=2, kv_layers=2, force=True)
    cli = cli_json("convert", tiny_path, str(b), "--kv-heads", "2", "--kv-layers", "2", "--force", "--json")
    for d in (ours, cli):
        d.pop("dst")
    assert ours == cli
    assert ours["kv_source"] == [0, 0, 2, 2] and ours["n_head_kv"] == 2
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    m = mlkv.Model.load(a)
    assert m.config["n_kv_layers"] == 2 and m.config["scheme"].startswith("MLKV")
    ids = m.encode(TEXT, add_bos=True)
    cli_lp = np.array(cli_json("score", str(b), "--tokens", " ".join(map(str, ids)), "--json")["logprobs"],
                      dtype=np.float32)
    assert_close(m.score(ids), cli_lp)


def test_convert_calibrated_equals_cli(tiny_path, workdir):
    text = SHARED / "data" / "text" / "tinystories_lower.txt"
    if not text.exists():
        pytest.skip(f"the shared text is missing ({text})")
    calib = workdir / "calib.txt"
    calib.write_text(text.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    a, b = workdir / "cal_py", workdir / "cal_cli"
    ours = mlkv.convert(tiny_path, a, kv_heads=1, kv_layers=2, owners="auto", merge="calibrated",
                        calibration=calib, calibration_tokens=1024, calibration_ctx=64, force=True)
    cli = cli_json("convert", tiny_path, str(b), "--kv-heads", "1", "--kv-layers", "2", "--owners", "auto",
                   "--merge", "calibrated", "--calibration", str(calib), "--calibration-tokens", "1024",
                   "--calibration-ctx", "64", "--force", "--json")
    for d in (ours, cli):
        d.pop("dst")
        d["calibration"].pop("seconds")
    assert_same_report(ours, cli)
    assert ours["merge"] == "calibrated" and ours["owners_auto"] and ours["n_kv_layers"] == 2
    assert ours["calibration"]["tokens"] == 1024 and ours["calibration"]["rows"] == 16
    assert_same_weights(a / "model.safetensors", b / "model.safetensors")
    with pytest.raises(ValueError, match="needs calibration text"):
        mlkv.convert(tiny_path, workdir / "bad_cal", merge="calibrated")
    with pytest.raises(ValueError, match="needs --kv-layers"):
        mlkv.convert(tiny_path, workdir / "bad_cal", owners="auto", calibration=calib)
    with pytest.raises(ValueError, match="owners must be"):
        mlkv.convert(tiny_path, workdir / "bad_cal", owners="best", calibration=calib)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mlkv.convert(tiny_path, workdir / "bad_cal", merge="calibrated", calibration=workdir / "nope.txt")
    assert not (workdir / "bad_cal").exists()


def test_bad_inputs(tiny, tiny_path, workdir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mlkv.Tokenizer.load(str(workdir / "no-such-tokenizer"))
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        mlkv.Model.load(workdir / "no-such-model")
    # Files: a folder without config.json or weights -> FileNotFoundError naming what is missing;
    # wrong contents -> ValueError.
    folder = workdir / "broken_model"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        mlkv.Model.load(folder)
    hf = workdir / "conv_py"  # written by test_convert_equals_cli when it ran; else made here
    if not (hf / "config.json").exists():
        mlkv.convert(tiny_path, hf, force=True)
    (folder / "config.json").write_text((hf / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        mlkv.Model.load(folder)
    (folder / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError):
        mlkv.Model.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        mlkv.Model.load(folder)
    not_a_model = workdir / "notes.txt"
    not_a_model.write_text("hello")
    with pytest.raises(ValueError, match="neither a model folder"):
        mlkv.Model.load(not_a_model)
    with pytest.raises(ValueError, match="weights"):
        mlkv.Model.load(tiny_path, weights="q3")
    # The tiny model's MLP is 172 wide: not whole 32-value q8_0 blocks, refused naming the matrix.
    with pytest.raises(ValueError, match="multiple of 32.*down_proj"):
        mlkv.Model.load(tiny_path, weights="q8_0")
    assert_close(mlkv.Model.load(tiny_path, weights="bf16").score([1, 5, 9, 2]), tiny.score([1, 5, 9, 2]),
                 rel=5e-2)
    with pytest.raises(ValueError, match="threads"):
        mlkv.Model.load(tiny_path, threads=0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        tiny.score([1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.score([1, 512])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.logits([1, -3])
    with pytest.raises(ValueError, match="context"):
        tiny.logits([1] * (tiny.n_ctx + 1))
    with pytest.raises(TypeError):
        tiny.score("not ids")
    with pytest.raises(TypeError):
        tiny.score(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="top-p"):
        tiny.generate([[1, 2]], top_p=1.5)
    with pytest.raises(ValueError, match="prompt 0"):
        tiny.generate([[]])
    with pytest.raises(ValueError, match="cache_type"):
        tiny.kv_bytes(16, 1, "f8")
    with pytest.raises(ValueError, match="positive"):
        tiny.kv_bytes(0, 1)
    with pytest.raises(ValueError, match="stop strings"):
        tiny.generate("x", stop=[""])
    with pytest.raises(ValueError, match="kv-heads|divide|KV heads"):
        mlkv.convert(tiny_path, workdir / "bad_conv", kv_heads=3)
    assert not (workdir / "bad_conv").exists()
    (workdir / "not_empty").mkdir(exist_ok=True)
    (workdir / "not_empty" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        mlkv.convert(tiny_path, workdir / "not_empty")
    with pytest.raises(FileNotFoundError, match="task"):
        mlkv.evaluate(tiny, tasks=["no_such_task"], eval_dir=EVAL_DIR)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        mlkv.evaluate(tiny)
    # The interpreter is still fine and the model still works.
    assert tiny.score([1, 2, 3]).shape == (2,)


def test_threads_share_a_model_safely(tiny):
    """Calls from several Python threads on one model run one at a time (the engine is not
    thread-safe; the GIL is released while it computes) and give the single-thread results."""
    ids = tiny.encode(TEXT, add_bos=True)
    want_lp = tiny.score(ids)
    want_gen = tiny.generate(ids, max_tokens=16, temperature=0.9, seed=11)["tokens"]
    errors, results = [], []

    def work(k):
        try:
            for _ in range(5):
                if k % 2:
                    results.append(np.array_equal(tiny.score(ids), want_lp))
                else:
                    results.append(tiny.generate(ids, max_tokens=16, temperature=0.9, seed=11)["tokens"] == want_gen)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    # A stream consumed here while the threads run, and a score call inside its loop.
    streamed = []
    for ev in tiny.generate_stream(ids, max_tokens=16, temperature=0.9, seed=11):
        if "token" in ev:
            streamed.append(ev["token"])
            assert np.array_equal(tiny.score(ids), want_lp)
    for t in threads:
        t.join()
    assert not errors and all(results) and len(results) == 20
    assert streamed == want_gen
