"""mlkv_ref_io: the checkpoint side of the independent PyTorch reference (tests/reference/mlkv_ref.py):
safetensors read/write (F32/F16/BF16), config.json -> Config with the KV-sharing map, the tensor
names and shapes of every layout (GPT-NeoX fused and split, Llama), model folders in and out.
Written from the format descriptions, sharing nothing with the C++ engine.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

F64 = torch.float64

# ==================================================================================================
# safetensors: 8-byte little-endian header length N, N bytes of JSON header, then the data buffer.
# ==================================================================================================

# dtype name -> (numpy dtype used to read the raw bytes, bytes per element). BF16 has no numpy type: it
# is read as uint16 bit patterns and widened to float32 by hand (exact: bf16 is the top half of f32).
_ST_DTYPES = {
    "F64": (np.float64, 8), "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
    "I64": (np.int64, 8), "I32": (np.int32, 4), "U8": (np.uint8, 1), "BOOL": (np.bool_, 1),
}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, round to nearest, ties to even (what torch and the engine do)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def load_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """Read a .safetensors file. Returns (tensors, stored dtype per name, __metadata__).

    Float tensors are returned as float64 holding exactly the stored values (so a BF16 file is scored
    with the very BF16 values the engine sees, only computed more precisely)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} past end of file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    metadata = header.pop("__metadata__", None) or {}
    tensors, dtypes = {}, {}
    for name, info in header.items():
        dt, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        np_dt, size = _ST_DTYPES[dt]
        if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * size:
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {begin},{end} for {dt}{shape}")
        raw = np.frombuffer(data[begin:end], dtype=np_dt).reshape(shape)
        if dt == "BF16":
            raw = bf16_bits_to_f32(raw)
        t = torch.from_numpy(np.array(raw))  # np.array copies: the tensor owns its memory
        tensors[name] = t.to(F64) if dt in _FLOAT_DTYPES else t
        dtypes[name] = dt
    return tensors, dtypes, metadata


def save_safetensors(path: str, tensors: dict[str, torch.Tensor], dtype: str = "F32",
                     metadata: dict[str, str] | None = None) -> None:
    """Write float tensors as `dtype` (F64/F32/F16/BF16), in the given order, header padded to 8."""
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"cannot write dtype {dtype}")
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        a = t.detach().to(torch.float64).cpu().numpy()
        if dtype == "BF16":
            raw = f32_to_bf16_bits(a.astype(np.float32)).tobytes()
        else:
            raw = a.astype(_ST_DTYPES[dtype][0]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for c in chunks:
            f.write(c)


# ==================================================================================================
# Config: one plain record for both families, read from HF config.json keys.
# ==================================================================================================

def owners_from_kv_layers(n_layer: int, m: int) -> list[int]:
    """The MLKV authors' owner rule, verbatim: [0] + [int((i+1) * (l / m)) for i in range(m-1)]."""
    if not 1 <= m <= n_layer:
        raise ValueError(f"num_key_value_layers={m} must be in [1, {n_layer}]")
    return [0] + [int((i + 1) * (n_layer / m)) for i in range(m - 1)]


def kv_source_from_owners(n_layer: int, owners: list[int]) -> list[int]:
    """Each layer reads the KV of the nearest owner at or below it."""
    src, cur = [], None
    for layer in range(n_layer):
        if layer in owners:
            cur = layer
        if cur is None:
            raise ValueError(f"owners {owners} do not include layer 0")
        src.append(cur)
    return src


def validate_kv_source(n_layer: int, src: list[int]) -> None:
    if len(src) != n_layer:
        raise ValueError(f"kv_source has {len(src)} entries, model has {n_layer} layers")
    for layer, o in enumerate(src):
        if not isinstance(o, int) or not 0 <= o <= layer:
            raise ValueError(f"kv_source[{layer}]={o}: the source must be a layer at or below {layer}")
        if src[o] != o:
            raise ValueError(f"kv_source[{layer}]={o}, but layer {o} does not own its KV (kv_source[{o}]={src[o]})")


def resolve_kv_source(n_layer: int, kv_layers: int | None, kv_source: list[int] | None) -> list[int]:
    """Explicit kv_source wins; else num_key_value_layers via the authors' rule; else identity."""
    if kv_source is not None:
        src = [int(o) for o in kv_source]
        validate_kv_source(n_layer, src)
        n_owners = sum(1 for layer, o in enumerate(src) if o == layer)
        if kv_layers is not None and kv_layers != n_owners:
            raise ValueError(f"num_key_value_layers={kv_layers} but kv_source has {n_owners} owners")
        return src
    if kv_layers is not None:
        return kv_source_from_owners(n_layer, owners_from_kv_layers(n_layer, kv_layers))
    return list(range(n_layer))


@dataclass
class Config:
    family: str             # "gpt_neox" | "llama"
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx: int
    norm_eps: float
    rope_base: float
    n_rot: int              # rotary dims per head: the first n_rot of n_embd_head (all of them for llama)
    parallel_residual: bool
    tied: bool              # output projection = token embedding
    kv_source: list[int]    # layer -> owner layer whose K/V it attends with
    share_rope: str         # "post": consumers use rotated owner keys; "pre": unrotated (authors)
    rope_scaling: dict | None = None  # config.json's rope_scaling ("linear" or "llama3"), None: plain
    attn_bias: bool = False  # llama attention_bias: biases on q/k/v/o (GPT-NeoX always has them)
    mlp_bias: bool = False   # llama mlp_bias: biases on gate/up/down (GPT-NeoX always has them)

    @property
    def n_embd_head(self) -> int:
        return self.n_embd // self.n_head

    def owns_kv(self, layer: int) -> bool:
        return self.kv_source[layer] == layer


def config_from_hf(d: dict) -> Config:
    """Parse a HF config.json dict. Missing optional keys take HF's defaults for the family."""
    mt = d.get("model_type")
    if mt not in ("gpt_neox", "llama"):
        raise ValueError(f"unsupported model_type {mt!r}")
    n_embd, n_head, n_layer = int(d["hidden_size"]), int(d["num_attention_heads"]), int(d["num_hidden_layers"])
    if n_embd % n_head:
        raise ValueError(f"hidden_size {n_embd} not divisible by num_attention_heads {n_head}")
    hd = n_embd // n_head
    if d.get("head_dim") not in (None, hd):
        raise ValueError(f"head_dim {d['head_dim']} != hidden_size / num_attention_heads = {hd}")
    scaling = d.get("rope_scaling") or None
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "default":
            scaling = None
        elif kind not in ("linear", "llama3"):
            raise ValueError(f"rope_scaling type {kind!r} is not supported")
    n_head_kv = int(d.get("num_key_value_heads") or n_head)
    if n_head % n_head_kv:
        raise ValueError(f"num_key_value_heads {n_head_kv} does not divide num_attention_heads {n_head}")
    kv_layers = d.get("num_key_value_layers")
    kv_src = resolve_kv_source(n_layer, None if kv_layers is None else int(kv_layers), d.get("kv_source"))
    share = d.get("kv_share_rope")
    if share is None:
        # The authors' Pythia checkpoints carry num_key_value_layers and were trained pre-RoPE.
        share = "pre" if (mt == "gpt_neox" and kv_layers is not None) else "post"
    if share not in ("pre", "post"):
        raise ValueError(f"kv_share_rope must be 'pre' or 'post', got {share!r}")
    if mt == "gpt_neox":
        if d.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"gpt_neox hidden_act {d['hidden_act']!r} unsupported (only exact 'gelu')")
        n_rot = int(hd * float(d.get("rotary_pct", 0.25)))
        eps, base = float(d.get("layer_norm_eps", 1e-5)), float(d.get("rotary_emb_base", 10000.0))
        parallel, tied = bool(d.get("use_parallel_residual", True)), bool(d.get("tie_word_embeddings", False))
        n_ff = int(d.get("intermediate_size", 4 * n_embd))
    else:
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"llama hidden_act {d['hidden_act']!r} unsupported (only 'silu')")
        n_rot = hd
        eps, base = float(d.get("rms_norm_eps", 1e-6)), float(d.get("rope_theta", 10000.0))
        parallel, tied = False, bool(d.get("tie_word_embeddings", False))
        n_ff = int(d["intermediate_size"])
    if n_rot % 2:
        raise ValueError(f"rotary dims {n_rot} must be even")
    return Config(family=mt, n_vocab=int(d["vocab_size"]), n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                  n_head_kv=n_head_kv, n_ff=n_ff, n_ctx=int(d.get("max_position_embeddings", 2048)),
                  norm_eps=eps, rope_base=base, n_rot=n_rot, parallel_residual=parallel, tied=tied,
                  kv_source=kv_src, share_rope=share, rope_scaling=scaling,
                  attn_bias=mt == "llama" and bool(d.get("attention_bias", False)),
                  mlp_bias=mt == "llama" and bool(d.get("mlp_bias", False)))


# ==================================================================================================
# Tensor names and shapes (HF layout). Parameters ARE the file's tensors, keyed by their file names, so
# gradients and trained weights come out under the same names (the fused name for fused-qkv models).
# ==================================================================================================

def _neox_attn(layer: int) -> str:
    return f"gpt_neox.layers.{layer}.attention."


def is_fused(params: dict) -> bool:
    return any(k.endswith("attention.query_key_value.weight") for k in params)


def fused_is_legal(cfg: Config) -> bool:
    """The fused [q,k,v] tensor exists only for plain MHA where every layer owns its KV."""
    return (cfg.family == "gpt_neox" and cfg.n_head_kv == cfg.n_head
            and cfg.kv_source == list(range(cfg.n_layer)))


def expected_shapes(cfg: Config, fused: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor the model file must hold, with its shape, in a canonical order."""
    E, V, F, hd = cfg.n_embd, cfg.n_vocab, cfg.n_ff, cfg.n_embd_head
    nq, nkv = cfg.n_head * hd, cfg.n_head_kv * hd
    if fused and not fused_is_legal(cfg):
        raise ValueError("fused query_key_value is only legal for MHA gpt_neox with every layer owning KV")
    s: dict[str, tuple[int, ...]] = {}
    if cfg.family == "gpt_neox":
        s["gpt_neox.embed_in.weight"] = (V, E)
        for layer in range(cfg.n_layer):
            p, a = f"gpt_neox.layers.{layer}.", _neox_attn(layer)
            s[p + "input_layernorm.weight"] = s[p + "input_layernorm.bias"] = (E,)
            if fused:
                s[a + "query_key_value.weight"], s[a + "query_key_value.bias"] = (3 * E, E), (3 * E,)
            else:
                s[a + "query.weight"], s[a + "query.bias"] = (nq, E), (nq,)
                if cfg.owns_kv(layer):
                    s[a + "key.weight"], s[a + "key.bias"] = (nkv, E), (nkv,)
                    s[a + "value.weight"], s[a + "value.bias"] = (nkv, E), (nkv,)
            s[a + "dense.weight"], s[a + "dense.bias"] = (E, nq), (E,)
            s[p + "post_attention_layernorm.weight"] = s[p + "post_attention_layernorm.bias"] = (E,)
            s[p + "mlp.dense_h_to_4h.weight"], s[p + "mlp.dense_h_to_4h.bias"] = (F, E), (F,)
            s[p + "mlp.dense_4h_to_h.weight"], s[p + "mlp.dense_4h_to_h.bias"] = (E, F), (E,)
        s["gpt_neox.final_layer_norm.weight"] = s["gpt_neox.final_layer_norm.bias"] = (E,)
        if not cfg.tied:
            s["embed_out.weight"] = (V, E)
    else:
        s["model.embed_tokens.weight"] = (V, E)
        for layer in range(cfg.n_layer):
            p = f"model.layers.{layer}."
            s[p + "input_layernorm.weight"] = (E,)
            s[p + "self_attn.q_proj.weight"] = (nq, E)
            if cfg.attn_bias:
                s[p + "self_attn.q_proj.bias"] = (nq,)
            if cfg.owns_kv(layer):
                s[p + "self_attn.k_proj.weight"] = s[p + "self_attn.v_proj.weight"] = (nkv, E)
                if cfg.attn_bias:
                    s[p + "self_attn.k_proj.bias"] = s[p + "self_attn.v_proj.bias"] = (nkv,)
            s[p + "self_attn.o_proj.weight"] = (E, nq)
            if cfg.attn_bias:
                s[p + "self_attn.o_proj.bias"] = (E,)
            s[p + "post_attention_layernorm.weight"] = (E,)
            s[p + "mlp.gate_proj.weight"] = s[p + "mlp.up_proj.weight"] = (F, E)
            s[p + "mlp.down_proj.weight"] = (E, F)
            if cfg.mlp_bias:
                s[p + "mlp.gate_proj.bias"] = s[p + "mlp.up_proj.bias"] = (F,)
                s[p + "mlp.down_proj.bias"] = (E,)
        s["model.norm.weight"] = (E,)
        if not cfg.tied:
            s["lm_head.weight"] = (V, E)
    return s


def _is_ignored_buffer(name: str) -> bool:
    """Non-parameter buffers some GPT-NeoX checkpoints carry (causal mask, cached inv_freq)."""
    return name.endswith(("rotary_emb.inv_freq", "attention.masked_bias")) or (
        name.startswith("gpt_neox.layers.") and name.endswith(".attention.bias"))


def load_model(d: str) -> tuple[Config, dict, dict[str, torch.Tensor], str]:
    """Load DIR/config.json + DIR/model.safetensors. Returns (cfg, raw config dict, float64 params,
    the file's float dtype). Checks that exactly the expected tensors are present with the right shapes."""
    with open(os.path.join(d, "config.json")) as f:
        hf = json.load(f)
    cfg = config_from_hf(hf)
    tensors, dtypes, _ = load_safetensors(os.path.join(d, "model.safetensors"))
    params = {k: v for k, v in tensors.items() if not _is_ignored_buffer(k)}
    if cfg.tied:
        params.pop("lm_head.weight", None)  # some exports store the tied copy; the embedding is used
        params.pop("embed_out.weight", None)
    want = expected_shapes(cfg, is_fused(params))
    missing, extra = sorted(set(want) - set(params)), sorted(set(params) - set(want))
    if missing or extra:
        raise ValueError(f"{d}: tensor names do not match config: missing {missing}, unexpected {extra}")
    for k, shape in want.items():
        if tuple(params[k].shape) != shape:
            raise ValueError(f"{d}: {k} has shape {list(params[k].shape)}, expected {list(shape)}")
    kinds = {dtypes[k] for k in params}
    return cfg, hf, {k: params[k] for k in want}, (kinds.pop() if len(kinds) == 1 else "F32")


def save_model(d: str, hf: dict, params: dict[str, torch.Tensor], dtype: str) -> None:
    os.makedirs(d, exist_ok=True)
    cfg = dict(hf)
    cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}[dtype]
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(d, "model.safetensors"), params, dtype)


def fuse_qkv(cfg: Config, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[n_head*hd, ...] x3 -> the fused GPT-NeoX tensor [3*n_embd, ...], per head [q, k, v]."""
    H, hd = cfg.n_head, cfg.n_embd_head
    rest = q.shape[1:]
    return torch.stack([t.reshape(H, hd, *rest) for t in (q, k, v)], dim=1).reshape(3 * H * hd, *rest)


def split_qkv(cfg: Config, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of fuse_qkv: weight.view(n_head, 3, head_dim, ...) -> q, k, v."""
    H, hd = cfg.n_head, cfg.n_embd_head
    rest = w.shape[1:]
    w = w.reshape(H, 3, hd, *rest)
    return tuple(w[:, i].reshape(H * hd, *rest) for i in range(3))


def attn_params(cfg: Config, params: dict, layer: int) -> dict:
    """The layer's attention weights as {wq,bq,wk,bk,wv,bv,wo,bo}: biases None for llama without
    attention_bias, wk/bk/wv/bv None in layers that do not own KV. Reads either GPT-NeoX layout."""
    if cfg.family == "llama":
        p = f"model.layers.{layer}.self_attn."
        own = cfg.owns_kv(layer)
        b = (lambda n: params[p + n + ".bias"]) if cfg.attn_bias else (lambda n: None)
        return dict(wq=params[p + "q_proj.weight"], bq=b("q_proj"),
                    wk=params[p + "k_proj.weight"] if own else None, bk=b("k_proj") if own else None,
                    wv=params[p + "v_proj.weight"] if own else None, bv=b("v_proj") if own else None,
                    wo=params[p + "o_proj.weight"], bo=b("o_proj"))
    a = _neox_attn(layer)
    out = dict(wo=params[a + "dense.weight"], bo=params[a + "dense.bias"])
    if a + "query_key_value.weight" in params:
        out["wq"], out["wk"], out["wv"] = split_qkv(cfg, params[a + "query_key_value.weight"])
        out["bq"], out["bk"], out["bv"] = split_qkv(cfg, params[a + "query_key_value.bias"])
        return out
    out["wq"], out["bq"] = params[a + "query.weight"], params[a + "query.bias"]
    for n, short in (("key", "k"), ("value", "v")):
        own = cfg.owns_kv(layer)
        out["w" + short] = params[a + n + ".weight"] if own else None
        out["b" + short] = params[a + n + ".bias"] if own else None
    return out
