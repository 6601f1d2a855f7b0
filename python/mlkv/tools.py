"""mlkv.convert and mlkv.evaluate: `mlkv convert` and `mlkv eval` as calls returning their JSON
reports as dicts."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Union

from . import _mlkv
from .model import Model

PathLike = Union[str, os.PathLike]


def convert(
    src: PathLike,
    dst: PathLike,
    kv_heads: int = 0,
    kv_layers: int = 0,
    owners: Union[None, str, Sequence[int]] = None,
    kv_source: Optional[Sequence[int]] = None,
    merge: Optional[str] = None,
    widen: str = "none",
    share: str = "post",
    dtype: str = "same",
    tokenizer: Optional[PathLike] = None,
    force: bool = False,
    fuse_qkv: bool = False,
    calibration: Optional[PathLike] = None,
    calibration_tokens: int = 16384,
    calibration_ctx: int = 0,
    calibration_stream: str = "converted",
) -> Dict[str, Any]:
    """Converts the model at src (HF folder or llama2.c .bin) to GQA/MQA/MLKV and writes it as a
    Hugging Face folder at dst (config.json, model.safetensors with split q/k/v, tokenizer files).

    kv_heads: G, KV heads per KV layer (0: keep the source's). kv_layers: M, the number of layers
    that own K/V, chosen by the MLKV authors' rule; or owners (explicit owner layers, starting at
    0), "auto" (kv_layers owners chosen by the calibration error; needs calibration) or kv_source
    (explicit layer -> owner map): at most one of the three. merge: how K/V merge across layers,
    "pairwise", "mean", "owner" or "calibrated" (the owners' K/V kept, query and output
    projections fitted on the calibration text; None: the default, owner). widen: give
    back the removed parameters by widening every MLP, "none", "copy" or "zero". share: rotary
    position of shared keys, "post" or "pre". dtype: "same", "f32", "f16", "bf16". force: replace
    an existing model folder at dst. fuse_qkv: for a GPT-NeoX result without sharing (G = n_head,
    M = n_layer), write Hugging Face's fused query_key_value so transformers loads the folder
    (default: the split q/k/v layout, which Llama's layout already is). calibration: for
    merge="calibrated" and owners="auto", a text file (tokenized with the model's tokenizer) or a
    token shard of `mlkv tokenize`; calibration_tokens of it are used in rows of calibration_ctx
    tokens (0: the model's context); calibration_stream: "converted" (each layer calibrated on the
    converted model's own activations) or "source".

    Returns the report of `mlkv convert --json` (n_head_kv, n_kv_layers, owner_layers, kv_source,
    params_before, params_after, kv_bytes_per_token_before/after, ...). The output appears
    atomically. Raises ValueError for an impossible conversion, OSError for files.
    """
    owners_auto = isinstance(owners, str)
    if owners_auto and owners != "auto":
        raise ValueError(f'owners must be a list of layers or "auto" (got {owners!r})')
    report = _mlkv.convert(
        os.fspath(src), os.fspath(dst), kv_heads=kv_heads, kv_layers=kv_layers,
        owners=[] if owners_auto else list(owners or []), kv_source=list(kv_source or []),
        merge=merge or "", widen=widen, share=share, dtype=dtype,
        tokenizer=os.fspath(tokenizer) if tokenizer is not None else "", force=force,
        fuse_qkv=fuse_qkv, owners_auto=owners_auto,
        calibration=os.fspath(calibration) if calibration is not None else "",
        calibration_tokens=calibration_tokens, calibration_ctx=calibration_ctx,
        calibration_stream=calibration_stream)
    return json.loads(report)


def evaluate(
    model: Union[Model, PathLike],
    tasks: Union[None, str, Sequence[str]] = None,
    texts: Union[None, str, Sequence[str]] = None,
    limit: int = 0,
    batch: int = 16,
    ctx: int = 0,
    stride: int = 0,
    max_bytes: int = 0,
    bos: bool = False,
    template: Optional[str] = None,
    eval_dir: Optional[PathLike] = None,
    cache_type: str = "f32",
    share_context: bool = True,
) -> Dict[str, Any]:
    """`mlkv eval` on a model: zero-shot tasks (task names such as "piqa", "arc_easy",
    "sciq", "hellaswag", "lambada_openai", looked up in eval_dir, or .jsonl files) scored as
    lm-evaluation-harness does (acc, acc_norm, LAMBADA perplexity), and perplexity of text files
    or token shards (token perplexity, bits per byte; windows of ctx tokens moving by stride).

    model: a loaded mlkv.Model, or the path of a model (HF folder or llama2.c .bin), loaded here
    with Model.load(path) (threads: all cores; weights f32). limit: the first N task items /
    windows of each input (0: all). Returns the document `mlkv eval --json` writes: {"model",
    "config", "n_params", "kv_bytes_per_token_f32", "settings", "results": {name: {...}}}.
    Raises TypeError when model is neither, ValueError for bad options or malformed inputs,
    OSError for missing files.
    """
    if isinstance(model, (str, os.PathLike)):
        model = Model.load(model)
    elif not isinstance(model, Model):
        raise TypeError(f"model must be an mlkv.Model or the path of a model (got {type(model).__name__})")

    def as_list(x):
        if x is None:
            return []
        if isinstance(x, (str, os.PathLike)):
            return [os.fspath(x)]
        return [os.fspath(v) for v in x]

    inputs = as_list(tasks) + as_list(texts)
    doc = model._engine.evaluate(
        inputs, eval_dir=os.fspath(eval_dir) if eval_dir is not None else "", batch=batch, ctx=ctx,
        stride=stride, limit=limit, max_bytes=max_bytes, bos=bos, share_context=share_context,
        template=template or "", cache_type=cache_type, model_name=model.path)
    return json.loads(doc)
