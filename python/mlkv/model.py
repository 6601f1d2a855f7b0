"""mlkv.Model: a loaded model - scoring, logits, batched and streaming generation.

Units: token ids are ints in [0, n_vocab); log-probabilities are natural logs (nats); byte counts
are bytes. Every compute call releases the GIL. Errors: ValueError for bad input (options, token
ids, context overflow, malformed models), OSError / FileNotFoundError for files that cannot be
found or read; the messages are the C++ engine's.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _mlkv

Prompt = Union[str, Sequence[int]]


class _StopGeneration(Exception):
    """Raised from the per-token callback to end a generation early (all prompts done)."""


def _is_single_prompt(prompts: Any) -> bool:
    if isinstance(prompts, str):
        return True
    if isinstance(prompts, np.ndarray):
        return prompts.ndim == 1
    return len(prompts) > 0 and all(isinstance(t, (int, np.integer)) for t in prompts)


def _check_stop(stop: Union[None, str, Sequence[str]]) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop)
    for s in stop:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty str (got {s!r})")
    return stop


class _Tracker:
    """What one prompt has generated so far, and whether a stop string ended it."""

    def __init__(self, tok, prompt: List[int], stop: List[str], eos_ids, max_tokens: int, stop_at_eos: bool):
        self.tok, self.prompt, self.stop, self.eos_ids = tok, prompt, stop, set(eos_ids)
        self.max_tokens, self.stop_at_eos = max_tokens, stop_at_eos
        self.tokens: List[int] = []
        self.stopped_text: Optional[str] = None  # text before the stop string, once one came

    def push(self, token: int) -> None:
        if self.stopped_text is not None:
            return
        self.tokens.append(int(token))
        if self.stop and self.tok is not None:
            text = self.tok.decode_continuation(self.prompt, self.tokens)
            hits = [text.find(s) for s in self.stop if s in text]
            if hits:
                self.stopped_text = text[: min(hits)]

    def done(self) -> bool:
        if self.stopped_text is not None or len(self.tokens) >= self.max_tokens:
            return True
        return self.stop_at_eos and bool(self.tokens) and self.tokens[-1] in self.eos_ids

    def result(self, engine_result: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        if self.stopped_text is not None:
            return {"tokens": list(self.tokens), "text": self.stopped_text, "finish_reason": "stop"}
        if engine_result is not None:
            return {k: engine_result[k] for k in ("tokens", "text", "finish_reason")}
        # Ended early because every prompt was done: eos or length, known exactly here.
        eos = self.stop_at_eos and bool(self.tokens) and self.tokens[-1] in self.eos_ids
        text = self.tok.decode_continuation(self.prompt, self.tokens) if self.tok is not None else ""
        return {"tokens": list(self.tokens), "text": text, "finish_reason": "eos" if eos else "length"}


class _StreamText:
    """The text one prompt's stream has released so far (generate_stream): each token releases
    what it made printable, less a tail that could begin a stop string (held back until a later
    token shows it does not, as the server's StopMatcher does) and less an incomplete UTF-8
    sequence; the stop string itself is never released. At the token that ends the continuation
    (stop, eos, length, context) everything left is released, so the token events' texts join to
    the final result's text. Runs on the engine's thread, when the token is sampled."""

    def __init__(self, tracker: _Tracker, n_ctx: int):
        self.tracker, self.n_ctx = tracker, n_ctx
        self.sent = ""  # the released text: a prefix of the continuation's text

    def _last(self) -> bool:
        """Whether the tracker's last token ends the continuation (the engine's rules: eos,
        max_tokens, then a full context; a stop string ends it here)."""
        t = self.tracker
        return t.done() or len(t.prompt) + len(t.tokens) - 1 >= self.n_ctx

    def push(self) -> str:
        """The text the tracker's last token releases (call after _Tracker.push)."""
        t = self.tracker
        if t.tok is None:
            return ""
        if t.stopped_text is not None:
            full, last = t.stopped_text, True
        else:
            full, last = t.tok.decode_continuation(t.prompt, t.tokens), self._last()
        if not full.startswith(self.sent):  # the decoded text changed behind us: nothing safe to add
            return ""
        upto = len(full)
        if not last:
            while upto > len(self.sent) and full[upto - 1] == "\ufffd":  # incomplete UTF-8: held back
                upto -= 1
            hold = 0
            for s in t.stop:
                for k in range(min(len(s) - 1, upto - len(self.sent)), hold, -1):
                    if full.endswith(s[:k], 0, upto):
                        hold = k
                        break
            upto -= hold
        out = full[len(self.sent):upto]
        self.sent = full[:upto]
        return out


class Model:
    """A model loaded into memory: a Hugging Face folder (config.json + safetensors; GPT-NeoX /
    Pythia or Llama, any KV-sharing scheme: MHA, GQA, MQA, MLKV) or a llama2.c .bin file, with its
    tokenizer when one is found next to it. Not thread-safe: one call at a time."""

    def __init__(self, engine: "_mlkv.Engine", path: str):
        self._engine = engine
        self.path = path

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike],
        threads: Optional[int] = None,
        weights: str = "f32",
        tokenizer: Optional[Union[str, os.PathLike]] = None,
        device: str = "cpu",
    ) -> "Model":
        """Loads the model at `path`.

        threads: compute threads for the whole process (None: all cores). weights: in-memory
        projection weights, "f32", "f16", "bf16" or "q8_0" (compute stays f32; q8_0 on the
        CPU). tokenizer: a tokenizer file or folder (None: looked for next to the model; a model
        without one scores and generates token ids only). Raises FileNotFoundError for a missing model, config.json, weights or
        tokenizer, OSError for one that cannot be read, ValueError for a malformed model (or a
        file that is not one) and bad options.
        """
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None (got {threads!r})")
        path = os.fspath(path)
        engine = _mlkv.Engine.load(
            path,
            threads=threads or 0,
            weights=weights,
            tokenizer=os.fspath(tokenizer) if tokenizer is not None else "",
            tokenizer_mode="required" if tokenizer is not None else "auto",
            device=device,
        )
        return cls(engine, path)

    # ---- description ----

    @property
    def config(self) -> Dict[str, Any]:
        """The model's configuration as a dict (a copy): family, n_vocab, n_embd, n_layer, n_head,
        n_head_kv, n_embd_head, n_ff, n_ctx, n_rot, norm, mlp, kv_source (layer -> the layer whose
        K/V it reads), owner_layers, n_kv_layers, kv_share_rope, bos/eos ids, n_params, scheme,
        summary, kv_bytes_per_token_f32, kv_reduction_vs_mha."""
        return self._engine.info

    @property
    def n_params(self) -> int:
        """Number of parameters."""
        return int(self._engine.info["n_params"])

    @property
    def n_vocab(self) -> int:
        return int(self._engine.info["n_vocab"])

    @property
    def n_ctx(self) -> int:
        """Longest context, in tokens."""
        return int(self._engine.info["n_ctx"])

    @property
    def tokenizer(self) -> Optional["_mlkv.Tokenizer"]:
        """The model's tokenizer (mlkv.Tokenizer), or None when none was found."""
        return self._engine.tokenizer if self._engine.has_tokenizer else None

    def kv_bytes(self, ctx: int, batch: int = 1, cache_type: str = "f32") -> int:
        """Bytes of a KV cache for `batch` sequences of `ctx` tokens in `cache_type` ("f32",
        "f16", "bf16", "q8_0", "q4_0" or "KEYS/VALUES"). Raises ValueError unless ctx > 0 and
        batch > 0 and the type is known."""
        return int(self._engine.kv_bytes(ctx, batch, cache_type))

    def __repr__(self) -> str:
        return f"<mlkv.Model {self.path!r}: {self._engine.info['summary']}>"

    # ---- scoring ----

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        """Text -> token ids with the model's tokenizer (ValueError when it has none)."""
        return self._tok().encode(text, add_bos)

    def decode(self, tokens: Sequence[int]) -> str:
        return self._tok().decode(list(tokens))

    def score(self, tokens: Sequence[int], cached: bool = False, cache_type: str = "f32") -> np.ndarray:
        """log p(tokens[i+1] | tokens[:i+1]) for i in [0, n-1): float32 array of shape [n - 1],
        nats. cached=False: one pass over the sequence; True: token by token through a KV cache of
        cache_type (equal within f32 rounding). Raises ValueError for fewer than 2 tokens, more
        than n_ctx + 1, or an id outside the vocabulary."""
        return self._engine.score(_ids(tokens), cached, cache_type)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Next-token logits after every prefix: float32 array of shape [n, n_vocab], row i for
        tokens[:i+1] (unnormalised). Raises ValueError for an empty sequence, more than n_ctx
        tokens or an id outside the vocabulary."""
        return self._engine.logits(_ids(tokens))

    def loglikelihood(
        self,
        requests: Sequence[tuple],
        batch: int = 16,
        max_ctx: int = 0,
        cache_type: str = "f32",
    ) -> List[tuple]:
        """lm-evaluation-harness's loglikelihood on token ids: for every (context, continuation)
        pair, (sum of log p of the continuation's tokens in nats, whether each was the argmax).
        The model reads context + continuation[:-1]; too long an input is cut from the left to
        max_ctx tokens (0: n_ctx). Consecutive pairs with the same context share one pass over it;
        `batch` pairs run per forward pass."""
        reqs = [(_ids(c), _ids(x)) for c, x in requests]
        return [(lp, greedy) for lp, greedy, _, _ in self._engine.loglikelihood(reqs, batch, max_ctx, cache_type)]

    # ---- generation ----

    def _prompts(self, prompts, add_bos: bool) -> List[List[int]]:
        out = []
        for p in prompts:
            if isinstance(p, str):
                out.append(self.encode(p, add_bos))
            else:
                out.append(_ids(p))
        return out

    def _eos_ids(self) -> List[int]:
        return list(self._engine.info["eos_token_ids"])

    def generate(
        self,
        prompts: Union[Prompt, Sequence[Prompt]],
        max_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Union[None, str, Sequence[str]] = None,
        add_bos: bool = False,
        ignore_eos: bool = False,
        n_parallel: int = 8,
        cache_type: str = "f32",
    ) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """Continuations of every prompt, generated together over one KV cache.

        prompts: a list of prompts, each a str (encoded with the model's tokenizer; add_bos
        prepends BOS) or a list of token ids; a single str or id list gives a single result
        instead of a list. temperature 0 is greedy; top_k 0 keeps every token; top_p in (0, 1].
        Prompt i samples with seed + i, so results do not depend on the batching (the same tokens
        as `mlkv generate --seed`). stop: strings that end a continuation (not included in the
        text; its tokens end with the one that completed the string).

        Returns per prompt {"tokens": [ids, prompt excluded], "text": str, "finish_reason": "eos"
        | "length" | "context" | "stop"}. Raises ValueError for an empty prompt, ids outside the
        vocabulary, a prompt longer than the context or bad sampling parameters.
        """
        single = _is_single_prompt(prompts)
        ids = self._prompts([prompts] if single else list(prompts), add_bos)
        stop = _check_stop(stop)
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this model has none")
        args = dict(
            max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=seed, n_parallel=n_parallel, cache_type=cache_type, stop_at_eos=not ignore_eos,
        )
        if not stop:
            res = self._engine.generate(ids, **args)
            out = [{k: r[k] for k in ("tokens", "text", "finish_reason")} for r in res]
            return out[0] if single else out
        trackers = [_Tracker(self.tokenizer, p, stop, self._eos_ids(), max_tokens, not ignore_eos) for p in ids]

        def on_token(i: int, token: int) -> None:
            trackers[i].push(token)
            if all(t.done() for t in trackers):
                raise _StopGeneration()

        try:
            res = self._engine.generate(ids, on_token=on_token, **args)
        except _StopGeneration:
            res = [None] * len(ids)
        out = [t.result(r) for t, r in zip(trackers, res)]
        return out[0] if single else out

    def generate_stream(
        self,
        prompts: Union[Prompt, Sequence[Prompt]],
        max_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Union[None, str, Sequence[str]] = None,
        add_bos: bool = False,
        ignore_eos: bool = False,
        n_parallel: int = 8,
        cache_type: str = "f32",
    ) -> Iterator[Dict[str, Any]]:
        """generate() as a generator of events, as tokens are sampled (the engine runs on a
        background thread). Token events: {"index": prompt index, "token": id, "text": the text
        this token made printable (never a broken UTF-8 sequence)}, fixed when the token is
        sampled, whenever the event is read. With stop strings, text that could begin one is held
        back until a later token shows it does not (then released with that token's text), and
        the stop string itself is never sent; the token that ends a continuation releases all
        that is left. So the texts of a prompt's token events join to its final text exactly.
        Then one final event per prompt: {"index", "tokens", "text", "finish_reason"} - the dict
        generate() returns. Closing the generator early stops the generation."""
        single = _is_single_prompt(prompts)
        ids = self._prompts([prompts] if single else list(prompts), add_bos)
        stop = _check_stop(stop)
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this model has none")
        trackers = [_Tracker(self.tokenizer, p, stop, self._eos_ids(), max_tokens, not ignore_eos) for p in ids]
        streams = [_StreamText(t, self.n_ctx) for t in trackers]
        events: "queue.Queue[tuple]" = queue.Queue()
        cancelled = threading.Event()

        # The text of a token event is computed here, when the token is sampled, so it does not
        # depend on when the consumer reads the event.
        def on_token(i: int, token: int) -> None:
            if cancelled.is_set():
                raise _StopGeneration()
            was_stopped = trackers[i].stopped_text is not None
            trackers[i].push(token)
            if not was_stopped:
                events.put(("token", i, {"index": i, "token": int(token), "text": streams[i].push()}))
            if stop and all(t.done() for t in trackers):
                raise _StopGeneration()

        def run() -> None:
            try:
                res = self._engine.generate(
                    ids, max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, n_parallel=n_parallel, cache_type=cache_type,
                    stop_at_eos=not ignore_eos, on_token=on_token)
                events.put(("done", res, None))
            except _StopGeneration:
                events.put(("done", [None] * len(ids), None))
            except BaseException as e:  # handed to the consumer
                events.put(("done", None, e))

        worker = threading.Thread(target=run, name="mlkv-generate", daemon=True)
        worker.start()
        try:
            while True:
                kind, a, b = events.get()
                if kind == "done":
                    if b is not None:
                        raise b
                    for i, (t, r) in enumerate(zip(trackers, a)):
                        final = t.result(r)
                        final["index"] = i
                        yield final
                    return
                yield b
        finally:
            cancelled.set()
            worker.join()

    def _tok(self):
        tok = self.tokenizer
        if tok is None:
            raise ValueError(f"the model '{self.path}' has no tokenizer (load with tokenizer=...)")
        return tok


def _ids(tokens: Any) -> List[int]:
    """A token sequence (list, tuple, 1-D numpy integer array) as a list of ints."""
    if isinstance(tokens, str):
        raise TypeError("expected token ids, got a str (encode it first)")
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"token ids must be a 1-D integer array (got {tokens.dtype} {tokens.shape})")
        return tokens.tolist()
    out = list(tokens)
    for t in out:
        if not isinstance(t, (int, np.integer)) or isinstance(t, bool):
            raise TypeError(f"token ids must be ints (got {type(t).__name__} {t!r})")
    return [int(t) for t in out]
