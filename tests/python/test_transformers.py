"""Models created and saved by Hugging Face transformers itself (save_pretrained, safetensors) load
in mlkv and give the same log-probs as transformers' forward; a model mlkv's convert writes loads
back in transformers with the same log-probs. Random GPT-NeoX (parallel residual, partial rotary,
biases) and Llama with GQA; weights drawn wider than the default init so the log-probs spread out
and a wrong layout cannot hide. The measured differences are printed (pytest -s)."""

import numpy as np
import pytest

import mlkv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# f32 both sides; measured max |diff| 2.4e-6 (GPT-NeoX), 5.0e-6 (Llama GQA, logits), 1.4e-6 (GQA
# conversion), 0 (convert round trip) on 2026-12-01; the bound sits well above them.
TOL = 1e-4
VOCAB = 96
N_TOKENS = 48


def widen_init(model, std=0.15):
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def hf_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def tokens(seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, N_TOKENS).tolist()


def neox():
    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=160, rotary_pct=0.5, max_position_embeddings=128,
        use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    return widen_init(transformers.GPTNeoXForCausalLM(cfg).eval())


def llama_gqa():
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=172, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    return widen_init(transformers.LlamaForCausalLM(cfg).eval())


@pytest.mark.parametrize("make", [neox, llama_gqa], ids=["gpt_neox", "llama_gqa"])
def test_hf_saved_model_matches_transformers(make, workdir):
    hf = make()
    path = workdir / f"hf_{make.__name__}"
    hf.save_pretrained(path, safe_serialization=True)
    m = mlkv.Model.load(path, threads=2)
    c = m.config
    assert c["n_layer"] == 3 and c["n_head"] == 4 and c["n_vocab"] == VOCAB
    assert c["n_head_kv"] == hf.config.to_dict().get("num_key_value_heads", 4)
    worst = 0.0
    for seed in range(3):
        ids = tokens(seed)
        want = hf_logprobs(hf, ids)
        got = m.score(ids)
        worst = max(worst, float(np.max(np.abs(got - want))))
        # logits too: the last row is the next-token distribution after the whole sequence
        z = m.logits(ids)
        with torch.no_grad():
            zt = hf(torch.tensor([ids])).logits[0].numpy()
        worst = max(worst, float(np.max(np.abs(z - zt))))
    print(f"{make.__name__}: max |mlkv - transformers| = {worst:.3g}")
    assert worst < TOL
    # The log-probs are spread (not a near-uniform model that any layout would match).
    assert np.std(hf_logprobs(hf, tokens(0))) > 0.3


@pytest.mark.parametrize("make", [llama_gqa, neox], ids=["llama_gqa", "gpt_neox"])
def test_convert_output_loads_in_transformers(make, workdir):
    """convert with G = n_head_kv (kept) and M = n_layer: the written folder loads back in
    transformers and gives the source model's log-probs."""
    hf = make()
    src = workdir / f"conv_src_{make.__name__}"
    hf.save_pretrained(src, safe_serialization=True)
    dst = workdir / f"conv_dst_{make.__name__}"
    rep = mlkv.convert(src, dst, kv_heads=hf.config.to_dict().get("num_key_value_heads", 4),
                       kv_layers=3, force=True, fuse_qkv=True)
    assert rep["n_kv_layers"] == 3 and rep["kv_source"] == [0, 1, 2]
    back = transformers.AutoModelForCausalLM.from_pretrained(dst, torch_dtype=torch.float32).eval()
    worst = 0.0
    for seed in range(3):
        ids = tokens(seed)
        worst = max(worst, float(np.max(np.abs(hf_logprobs(back, ids) - hf_logprobs(hf, ids)))))
    print(f"{make.__name__}: convert round trip, max |transformers(dst) - transformers(src)| = {worst:.3g}")
    assert worst < TOL


def test_gqa_conversion_matches_transformers(workdir):
    """An MHA Llama converted to GQA (G = 2) by mlkv is a plain GQA model to transformers: mlkv and
    transformers agree on the converted weights."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=128, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(1)
    hf = widen_init(transformers.LlamaForCausalLM(cfg).eval())
    src, dst = workdir / "gqa_src", workdir / "gqa_dst"
    hf.save_pretrained(src, safe_serialization=True)
    mlkv.convert(src, dst, kv_heads=2, force=True)
    back = transformers.AutoModelForCausalLM.from_pretrained(dst, torch_dtype=torch.float32).eval()
    assert back.config.num_key_value_heads == 2
    m = mlkv.Model.load(dst, threads=2)
    ids = tokens(5)
    diff = float(np.max(np.abs(m.score(ids) - hf_logprobs(back, ids))))
    print(f"GQA conversion: max |mlkv - transformers| = {diff:.3g}")
    assert diff < TOL
