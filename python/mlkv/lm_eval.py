"""The `mlkv` model type of lm-evaluation-harness (0.4.x): loglikelihood, loglikelihood_rolling and
generate_until through mlkv.Model, batched.

    python -m mlkv.lm_eval --model mlkv --model_args pretrained=DIR[,batch_size=16,threads=4,
        weights=f32,cache_type=f32,add_bos_token=False,max_length=N] --tasks piqa,arc_easy

`python -m mlkv.lm_eval` registers the model type and runs the harness's own command line with the
arguments given (everything lm_eval accepts). In a program, `import mlkv.lm_eval` registers it
for lm_eval.simple_evaluate(model="mlkv", ...).

Tokenization and truncation follow the harness's `hf` model: a context's trailing spaces move to
the continuation, the continuation's tokens are those of encode(context + continuation) after
encode(context), no BOS unless add_bos_token=True, an empty context reads the prefix token (BOS,
else EOS), inputs longer than max_length keep their last tokens. So `--model mlkv` and `--model hf`
score the same requests on the same model alike.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval import utils as lm_utils

from .model import Model


@register_model("mlkv")
class MLKVLM(TemplateLM):
    """lm-evaluation-harness model over an mlkv.Model (CPU; one process)."""

    def __init__(
        self,
        pretrained: str,
        tokenizer: Optional[str] = None,
        batch_size: Any = 16,
        max_batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        threads: Optional[int] = None,
        weights: str = "f32",
        cache_type: str = "f32",
        add_bos_token: bool = False,
        device: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__()
        if device not in (None, "cpu"):
            raise ValueError(f"the mlkv model type runs on the CPU (got device={device!r})")
        self.model = Model.load(pretrained, threads=_opt_int(threads), weights=weights, tokenizer=tokenizer)
        if self.model.tokenizer is None:
            raise ValueError(f"'{pretrained}' has no tokenizer; pass tokenizer=PATH in --model_args")
        self.tok = self.model.tokenizer
        self.batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length) if max_length else self.model.n_ctx
        self.max_gen_toks = int(max_gen_toks)
        self.cache_type = cache_type
        self.add_bos_token = _opt_bool(add_bos_token)

    # ---- tokens ----

    @property
    def eot_token_id(self) -> int:
        if self.tok.eos_id >= 0:
            return self.tok.eos_id
        return int(self.model.config["eos_token_id"])

    @property
    def prefix_token_id(self) -> int:
        # as the hf model: BOS when the tokenizer has one, else EOS
        return self.tok.bos_id if self.tok.bos_id >= 0 else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        add_bos = self.add_bos_token if add_special_tokens is None else bool(add_special_tokens)
        return self.tok.encode(string, add_bos)

    def tok_decode(self, tokens: List[int]) -> str:
        return self.tok.decode(list(tokens))

    # ---- loglikelihood ----

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None) -> List[Tuple[float, bool]]:
        """requests: ((context, continuation) strings or None, context ids, continuation ids).
        Sorted so that requests with the same context are adjacent (one shared pass over it),
        scored `batch_size` at a time by the engine, and returned in the given order."""
        order = sorted(range(len(requests)), key=lambda i: (tuple(requests[i][1]), i))
        pairs = [(requests[i][1], requests[i][2]) for i in order]
        scored = self.model.loglikelihood(pairs, batch=override_bs or self.batch_size,
                                          max_ctx=self.max_length, cache_type=self.cache_type)
        out: List[Optional[Tuple[float, bool]]] = [None] * len(requests)
        for i, (lp, greedy) in zip(order, scored):
            out[i] = (float(lp), bool(greedy))
            key = requests[i][0]
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, out[i])
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        """Sum of log-probs of every token of each string, in disjoint windows of max_length
        tokens (the first token predicted from the prefix token), as the hf model does."""
        windows, owner = [], []
        for idx, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1),
            ):
                windows.append((None, ctx, cont))
                owner.append(idx)
        scores = self._loglikelihood_tokens(windows) if windows else []
        totals = [0.0] * len(requests)
        for idx, (lp, _) in zip(owner, scores):
            totals[idx] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ----

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        """Greedy (or sampled, with do_sample) continuations cut at the first `until` string
        (the EOS text included), batch_size prompts decoded together."""
        out: List[Optional[str]] = [None] * len(requests)
        groups: Dict[str, List[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        eos_text = self.tok.decode([self.eot_token_id])
        for idxs in groups.values():
            kwargs = dict(requests[idxs[0]].args[1])
            until = kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            if eos_text and eos_text not in until:
                until.append(eos_text)
            max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0
            top_k = int(kwargs.pop("top_k", 0) or 0)
            top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
            seed = int(kwargs.pop("seed", 0) or 0)
            max_ctx = self.max_length - max_gen
            if max_ctx <= 0:
                raise ValueError(f"max_gen_toks {max_gen} leaves no room for a context (max_length {self.max_length})")
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-max_ctx:] or [self.prefix_token_id]
                           for i in chunk]
                res = self.model.generate(prompts, max_tokens=max_gen, temperature=temperature,
                                          top_k=top_k, top_p=top_p, seed=seed,
                                          stop=[u for u in until if u], n_parallel=len(chunk),
                                          cache_type=self.cache_type)
                for i, r in zip(chunk, res):
                    toks = r["tokens"]
                    if r["finish_reason"] == "eos":
                        toks = toks[:-1]
                    s = self.tok_decode(toks)
                    for term in until:
                        if term:
                            s = s.split(term)[0]
                    out[i] = s
                    self.cache_hook.add_partial("generate_until", requests[i].args, s)
        return out  # type: ignore[return-value]


def _opt_int(v: Any) -> Optional[int]:
    return None if v in (None, "", "None") else int(v)


def _opt_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(v)


def main(argv: Optional[List[str]] = None) -> None:
    """lm_eval's command line with the `mlkv` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
