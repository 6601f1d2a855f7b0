#!/usr/bin/python3
"""End-to-end checks of `mlkv eval` against `mlkv score` (and `mlkv tokenizer encode`), on the real tiny
llama2.c model of the shared data (aidreams260K, 512-token vocabulary, context 128):

  text perplexity   `mlkv eval MODEL file.txt --ctx W --stride S` == exp(mean) of `mlkv score` log-probs over the
                    same windows of [BOS] + encode(text) (windows rebuilt here from the documented rule), and
                    bits per byte == total NLL / (ln 2 * bytes of the file)
  shard perplexity  the same for a token shard written by `mlkv tokenize` ([EOS] + the shard's tokens)
  tasks             acc / acc_norm of a PIQA slice and accuracy-free LAMBADA perplexity of a LAMBADA slice ==
                    the lm-eval rules applied here to `mlkv score` sums, with the prompts built here from the
                    documented templates and the pair split done here (trailing whitespace moved, whole pair
                    encoded, split at the context's token count); the shared-context pass == --no-share

Exit 0 when all agree within --tol (log-prob sums; default 1e-3 on sums of up to ~200 f32 log-probs), 77 when
the shared data is missing (ctest SKIP), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time

SKIP = 77


def run(cmd: list[str], stdin: str | None = None) -> str:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["MLKV_PROGRESS"] = "0"
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)[:300]}\n    stderr: {r.stderr.strip()[-600:]}")
    return r.stdout


class Mlkv:
    def __init__(self, binary: str, model: str, tok: str):
        self.bin, self.model, self.tok = binary, model, tok

    def encode(self, text: str) -> list[int]:
        return json.loads(run([self.bin, "tokenizer", "encode", "-t", self.tok, "--json"], stdin=text))["ids"]

    def score(self, ids: list[int]) -> list[float]:
        out = run([self.bin, "score", self.model, "--tokens", " ".join(map(str, ids)), "--json", "-t", "1"])
        return [float(x) for x in json.loads(out)["logprobs"]]

    def eval(self, inputs: list[str], extra: list[str], json_path: str) -> dict:
        run([self.bin, "eval", self.model] + inputs + extra + ["--json", json_path, "-t", "1"])
        with open(json_path) as f:
            return json.load(f)["results"]


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """docs/EVAL.md: (begin, split, end); targets s[split:end], fed s[begin:end-1]."""
    end = min(n, window + 1)
    out = [(0, 1, end)]
    while end < n:
        nxt = min(n, end + stride)
        out.append((max(0, nxt - 1 - window), end, nxt))
        end = nxt
    return out


def windowed_nll(m: Mlkv, s: list[int], window: int, stride: int) -> tuple[float, int]:
    nll, n = 0.0, 0
    for b, sp, e in windows(len(s), window, stride):
        lp = m.score(s[b:e])
        take = lp[sp - b - 1:]
        nll -= sum(take)
        n += len(take)
    return nll, n


def check_text(m: Mlkv, text_path: str, work: str, tol: float, failures: list[str]) -> None:
    with open(text_path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    bos = 1  # llama2.c tokenizers: BOS 1
    s = [bos] + m.encode(text)
    for window, stride in ((48, 48), (48, 20), (100, 64)):
        got = m.eval([text_path], ["--ctx", str(window), "--stride", str(stride)], os.path.join(work, "t.json"))
        r = next(iter(got.values()))
        nll, n = windowed_nll(m, s, window, stride)
        want_ppl = math.exp(nll / n)
        want_bpb = nll / (math.log(2) * len(raw))
        ok = (r["n_tokens"] == n and abs(r["loss"] * n - nll) <= tol and abs(r["token_perplexity"] - want_ppl) <= 1e-5 * want_ppl
              and abs(r["bits_per_byte"] - want_bpb) <= 1e-5 and r["n_bytes"] == len(raw))
        print(f"text  W={window:3d} S={stride:3d}: {n} tokens, ppl {r['token_perplexity']:.5f} vs score {want_ppl:.5f}, "
              f"bpb {r['bits_per_byte']:.5f} vs {want_bpb:.5f}{'' if ok else '  FAIL'}")
        if not ok:
            failures.append(f"text W={window} S={stride}: eval {r} vs score nll {nll} over {n} tokens")


def read_shard(path: str) -> tuple[list[int], int]:
    with open(path, "rb") as f:
        blob = f.read()
    magic, _version, tb, n_tokens, _n_docs, _n_vocab, eos = struct.unpack("<8sIIQQIi", blob[:40])
    assert magic == b"MLKVTOKS", magic
    fmt = {2: "H", 4: "I"}[tb]
    return list(struct.unpack(f"<{n_tokens}{fmt}", blob[64:64 + n_tokens * tb])), eos


def check_shard(m: Mlkv, text_path: str, work: str, tol: float, failures: list[str]) -> None:
    out = os.path.join(work, "shard")
    run([m.bin, "tokenize", text_path, "-t", m.tok, "-o", out, "--txt-docs", "blank", "--no-progress"])
    shard = os.path.join(out, "train_000.bin")
    toks, eos = read_shard(shard)
    s = [eos] + toks
    got = next(iter(m.eval([shard], ["--ctx", "64", "--stride", "40"], os.path.join(work, "s.json")).values()))
    nll, n = windowed_nll(m, s, 64, 40)
    ok = got["n_tokens"] == n and abs(got["loss"] * n - nll) <= tol and got["input"] == "shard"
    print(f"shard W= 64 S= 40: {n} tokens, ppl {got['token_perplexity']:.5f} vs score {math.exp(nll / n):.5f}"
          f"{'' if ok else '  FAIL'}")
    if not ok:
        failures.append(f"shard: eval {got} vs score nll {nll} over {n} tokens")


def split_pair(m: Mlkv, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's _encode_pair, written out again here."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = m.encode(context + continuation)
    ctx = m.encode(context)
    return ctx, whole[len(ctx):]


# Tasks run with --ctx 127: `mlkv score` takes at most the model's context (128) tokens, i.e. 127 fed.
TASK_CTX = 127


def loglik(m: Mlkv, ctx: list[int], cont: list[int], n_ctx: int = TASK_CTX) -> float:
    """lm-eval: feed (ctx + cont)[-(n_ctx + 1):][:-1], sum the continuation's log-probs (those that were
    predicted, when the continuation alone is longer than the context)."""
    lp = m.score((ctx + cont)[-(n_ctx + 1):])
    return sum(lp[len(lp) - min(len(cont), n_ctx):])


def check_tasks(m: Mlkv, eval_dir: str, work: str, tol: float, failures: list[str], limit: int) -> None:
    # PIQA: lm-eval's prompt "Question: <goal>\nAnswer:" and continuation " <solution>".
    with open(os.path.join(eval_dir, "piqa.jsonl")) as f:
        items = [json.loads(next(f)) for _ in range(limit)]
    acc = acc_norm = 0
    for it in items:
        prompt = it["query"].rstrip() + "\nAnswer:"
        ll = [loglik(m, *split_pair(m, prompt, " " + ch)) for ch in it["choices"]]
        norm = [x / len(ch) for x, ch in zip(ll, it["choices"])]
        acc += ll.index(max(ll)) == it["gold"]
        acc_norm += norm.index(max(norm)) == it["gold"]
    for share in (True, False):
        extra = ["--limit", str(limit), "--ctx", str(TASK_CTX)] + ([] if share else ["--no-share"])
        r = m.eval(["piqa"], extra + ["--eval-dir", eval_dir], os.path.join(work, "p.json"))["piqa"]
        ok = abs(r["acc"] - acc / limit) < 1e-12 and abs(r["acc_norm"] - acc_norm / limit) < 1e-12 and r["n"] == limit
        print(f"piqa  first {limit} ({'shared' if share else 'no-share'}): acc {r['acc']:.3f} vs {acc / limit:.3f}, "
              f"acc_norm {r['acc_norm']:.3f} vs {acc_norm / limit:.3f}{'' if ok else '  FAIL'}")
        if not ok:
            failures.append(f"piqa ({'shared' if share else 'no-share'}): eval {r} vs acc {acc}, acc_norm {acc_norm}")
    # LAMBADA: context = text before the last space, continuation = " " + last word; perplexity of the target.
    with open(os.path.join(eval_dir, "lambada_openai_test.jsonl")) as f:
        texts = [json.loads(next(f))["text"] for _ in range(limit)]
    lls = []
    for t in texts:
        ctx, word = t.rsplit(" ", 1)
        lls.append(loglik(m, *split_pair(m, ctx, " " + word)))
    want = math.exp(-sum(lls) / len(lls))
    r = m.eval(["lambada_openai"], ["--limit", str(limit), "--ctx", str(TASK_CTX), "--eval-dir", eval_dir],
               os.path.join(work, "l.json"))
    r = r["lambada_openai_test"]
    ok = abs(math.log(r["perplexity"]) - math.log(want)) <= tol
    print(f"lambada first {limit}: perplexity {r['perplexity']:.4f} vs {want:.4f}, acc {r['acc']:.3f}{'' if ok else '  FAIL'}")
    if not ok:
        failures.append(f"lambada: eval {r} vs perplexity {want}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--shared", required=True, help="the shared folder (holds data/)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--limit", type=int, default=12, help="task items checked")
    args = ap.parse_args()
    model_dir = os.path.join(args.shared, "data", "models", "aidreams260K")
    model = os.path.join(model_dir, "aidreams260K.bin")
    text_src = os.path.join(args.shared, "data", "text", "tinystories_lower.txt")
    eval_dir = os.path.join(args.shared, "data", "eval")
    if not all(os.path.exists(p) for p in (model, text_src, eval_dir)):
        print(f"shared data not found under {args.shared}: skipped")
        return SKIP
    os.makedirs(args.workdir, exist_ok=True)
    # A ~3 KB slice of real text, cut at a line break.
    with open(text_src, "rb") as f:
        raw = f.read(3000)
    text_path = os.path.join(args.workdir, "slice.txt")
    with open(text_path, "wb") as f:
        f.write(raw[: raw.rfind(b"\n") + 1])
    m = Mlkv(args.mlkv, model, os.path.join(model_dir, "tok512.bin"))
    t0 = time.time()
    failures: list[str] = []
    for check in (lambda: check_text(m, text_path, args.workdir, args.tol, failures),
                  lambda: check_shard(m, text_path, args.workdir, args.tol, failures),
                  lambda: check_tasks(m, eval_dir, args.workdir, args.tol, failures, args.limit)):
        try:
            check()
        except RuntimeError as e:
            failures.append(str(e))
    print(f"{time.time() - t0:.1f}s")
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print("eval_cli: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
