"""A tiny Llama model folder whose greedy continuation is chosen, for the EOS tests of test_cli.py and
test_server.py: the issue's case needs "a model whose greedy continuation of token 5 is 229, 133, 175, 2".

The model is a bigram table: one layer whose attention output and MLP down projections are zero, so
each position's final hidden state is the RMS-normalised embedding of its own token. Each token of the
chain has a one-hot embedding (its own dimension), and the output matrix maps that dimension to the
next token of the chain with logit 10 (every other logit 0), so greedy decoding follows the chain.
"""
import json
import os
import struct

VOCAB = 256
EMBD = 16
FF = 16


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, flat float list), written as F32, tiling the buffer."""
    header, blobs, offset = {}, [], 0
    for name, shape, values in tensors:
        raw = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def bigram_model(out, chain, eos, overflow_at=None):
    """A model folder at `out` whose greedy continuation of chain[0] is chain[1:] then chain[-1]
    repeated; config.json's eos_token_id is `eos` (an int or a list). With overflow_at = i, the
    output weight of chain[i]'s dimension is 3e38 for one token, so that the logits after
    chain[i] hold +inf (3e38 times the normalised hidden value, 4, overflows a float): the model
    breaks down after emitting chain[1..i]."""
    assert len(chain) <= EMBD
    os.makedirs(out, exist_ok=True)
    slot = {t: i for i, t in enumerate(chain)}
    embed = [0.0] * (VOCAB * EMBD)
    for t, i in slot.items():
        embed[t * EMBD + i] = 1.0
    lm_head = [0.0] * (VOCAB * EMBD)
    for i, t in enumerate(chain):
        nxt = chain[min(i + 1, len(chain) - 1)]
        lm_head[nxt * EMBD + i] = 10.0
    if overflow_at is not None:
        lm_head[(VOCAB - 1) * EMBD + overflow_at] = 3e38
    zeros = lambda n: [0.0] * n
    ones = lambda n: [1.0] * n
    p = "model.layers.0."
    tensors = [
        ("model.embed_tokens.weight", [VOCAB, EMBD], embed),
        (p + "input_layernorm.weight", [EMBD], ones(EMBD)),
        (p + "self_attn.q_proj.weight", [EMBD, EMBD], zeros(EMBD * EMBD)),
        (p + "self_attn.k_proj.weight", [EMBD, EMBD], zeros(EMBD * EMBD)),
        (p + "self_attn.v_proj.weight", [EMBD, EMBD], zeros(EMBD * EMBD)),
        (p + "self_attn.o_proj.weight", [EMBD, EMBD], zeros(EMBD * EMBD)),
        (p + "post_attention_layernorm.weight", [EMBD], ones(EMBD)),
        (p + "mlp.gate_proj.weight", [FF, EMBD], zeros(FF * EMBD)),
        (p + "mlp.up_proj.weight", [FF, EMBD], zeros(FF * EMBD)),
        (p + "mlp.down_proj.weight", [EMBD, FF], zeros(EMBD * FF)),
        ("model.norm.weight", [EMBD], ones(EMBD)),
        ("lm_head.weight", [VOCAB, EMBD], lm_head),
    ]
    write_safetensors(os.path.join(out, "model.safetensors"), tensors)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB,
              "hidden_size": EMBD, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": FF, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
              "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1,
              "eos_token_id": eos, "torch_dtype": "float32"}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out


# The issue's case: greedy continuation of 5 is 229, 133, 175, 2 (then 9 forever); EOS ids [2, 175].
ISSUE_CHAIN = [5, 229, 133, 175, 2, 9]
ISSUE_EOS = [2, 175]
