#include "model/weights.h"

#include <cmath>
#include <random>

#include "core/check.h"

namespace mlkv {

namespace {

struct Named {
  std::string name;
  Tensor* t;
  bool decay;
  std::vector<int64_t> shape;
};

// The names and shapes of every parameter, HF spelling, split attention layout.
std::vector<Named> enumerate(const ModelConfig& c, ModelWeights& w) {
  const int64_t E = c.n_embd, V = c.n_vocab, F = c.n_ff, Q = c.n_embd_q(), KV = c.n_embd_kv();
  const bool ln = c.norm == NormType::kLayerNorm;
  std::vector<Named> out;
  auto add = [&](std::string name, Tensor& t, bool decay, std::vector<int64_t> shape) {
    out.push_back({std::move(name), &t, decay, std::move(shape)});
  };
  if (w.layers.size() != static_cast<size_t>(c.n_layer)) w.layers.resize(static_cast<size_t>(c.n_layer));
  if (c.family == Family::kGptNeoX) {
    add("gpt_neox.embed_in.weight", w.tok_embd, true, {V, E});
    for (int il = 0; il < c.n_layer; ++il) {
      LayerWeights& l = w.layers[static_cast<size_t>(il)];
      const std::string p = cat("gpt_neox.layers.", il, ".");
      add(p + "input_layernorm.weight", l.attn_norm, false, {E});
      add(p + "input_layernorm.bias", l.attn_norm_b, false, {E});
      add(p + "attention.query.weight", l.wq, true, {Q, E});
      if (c.attn_bias) add(p + "attention.query.bias", l.bq, false, {Q});
      if (c.owns_kv(il)) {
        add(p + "attention.key.weight", l.wk, true, {KV, E});
        if (c.attn_bias) add(p + "attention.key.bias", l.bk, false, {KV});
        add(p + "attention.value.weight", l.wv, true, {KV, E});
        if (c.attn_bias) add(p + "attention.value.bias", l.bv, false, {KV});
      }
      add(p + "attention.dense.weight", l.wo, true, {E, Q});
      if (c.attn_bias) add(p + "attention.dense.bias", l.bo, false, {E});
      add(p + "post_attention_layernorm.weight", l.ffn_norm, false, {E});
      add(p + "post_attention_layernorm.bias", l.ffn_norm_b, false, {E});
      add(p + "mlp.dense_h_to_4h.weight", l.w_up, true, {F, E});
      if (c.mlp_bias) add(p + "mlp.dense_h_to_4h.bias", l.b_up, false, {F});
      add(p + "mlp.dense_4h_to_h.weight", l.w_down, true, {E, F});
      if (c.mlp_bias) add(p + "mlp.dense_4h_to_h.bias", l.b_down, false, {E});
      MLKV_CHECK(c.mlp == MlpType::kGelu && ln);
    }
    add("gpt_neox.final_layer_norm.weight", w.out_norm, false, {E});
    add("gpt_neox.final_layer_norm.bias", w.out_norm_b, false, {E});
    if (!c.tied_embeddings) add("embed_out.weight", w.output, true, {V, E});
  } else {
    add("model.embed_tokens.weight", w.tok_embd, true, {V, E});
    for (int il = 0; il < c.n_layer; ++il) {
      LayerWeights& l = w.layers[static_cast<size_t>(il)];
      const std::string p = cat("model.layers.", il, ".");
      add(p + "input_layernorm.weight", l.attn_norm, false, {E});
      if (ln) add(p + "input_layernorm.bias", l.attn_norm_b, false, {E});
      add(p + "self_attn.q_proj.weight", l.wq, true, {Q, E});
      if (c.attn_bias) add(p + "self_attn.q_proj.bias", l.bq, false, {Q});
      if (c.owns_kv(il)) {
        add(p + "self_attn.k_proj.weight", l.wk, true, {KV, E});
        if (c.attn_bias) add(p + "self_attn.k_proj.bias", l.bk, false, {KV});
        add(p + "self_attn.v_proj.weight", l.wv, true, {KV, E});
        if (c.attn_bias) add(p + "self_attn.v_proj.bias", l.bv, false, {KV});
      }
      add(p + "self_attn.o_proj.weight", l.wo, true, {E, Q});
      if (c.attn_bias) add(p + "self_attn.o_proj.bias", l.bo, false, {E});
      add(p + "post_attention_layernorm.weight", l.ffn_norm, false, {E});
      if (ln) add(p + "post_attention_layernorm.bias", l.ffn_norm_b, false, {E});
      if (c.mlp == MlpType::kSwiGlu) add(p + "mlp.gate_proj.weight", l.w_gate, true, {F, E});
      if (c.mlp == MlpType::kSwiGlu && c.mlp_bias) add(p + "mlp.gate_proj.bias", l.b_gate, false, {F});
      add(p + "mlp.up_proj.weight", l.w_up, true, {F, E});
      if (c.mlp_bias) add(p + "mlp.up_proj.bias", l.b_up, false, {F});
      add(p + "mlp.down_proj.weight", l.w_down, true, {E, F});
      if (c.mlp_bias) add(p + "mlp.down_proj.bias", l.b_down, false, {E});
    }
    add("model.norm.weight", w.out_norm, false, {E});
    if (ln) add("model.norm.bias", w.out_norm_b, false, {E});
    if (!c.tied_embeddings) add("lm_head.weight", w.output, true, {V, E});
  }
  return out;
}

}  // namespace

std::vector<ParamRef> list_params(const ModelConfig& cfg, ModelWeights& w) {
  std::vector<ParamRef> out;
  for (auto& n : enumerate(cfg, w)) out.push_back({n.name, n.t, n.decay});
  return out;
}

std::vector<std::pair<std::string, const Tensor*>> list_params(const ModelConfig& cfg,
                                                               const ModelWeights& w) {
  std::vector<std::pair<std::string, const Tensor*>> out;
  // enumerate() only takes addresses and resizes an already-sized layer vector.
  MLKV_CHECK(w.layers.size() == static_cast<size_t>(cfg.n_layer));
  for (auto& n : enumerate(cfg, const_cast<ModelWeights&>(w))) out.emplace_back(n.name, n.t);
  return out;
}

void allocate_weights(const ModelConfig& cfg, ModelWeights* w, DType dtype, Device device) {
  *w = ModelWeights{};
  for (auto& n : enumerate(cfg, *w)) *n.t = Tensor(n.shape, dtype, device);
}

void move_weights(const ModelConfig& cfg, ModelWeights* w, Device device) {
  for (auto& p : list_params(cfg, *w)) {
    if (p.tensor->device() != device) *p.tensor = p.tensor->to(device);
  }
}

ModelWeights copy_weights(const ModelConfig& cfg, const ModelWeights& w, Device device) {
  ModelWeights out;
  const auto src = list_params(cfg, w);
  const auto dst = list_params(cfg, out);
  MLKV_CHECK(src.size() == dst.size());
  for (size_t i = 0; i < src.size(); ++i) *dst[i].tensor = src[i].second->to(device);
  return out;
}

ModelWeights convert_weights(const ModelConfig& cfg, const ModelWeights& w, DType dtype,
                             bool matrices_only) {
  ModelWeights out;
  out.layers.resize(static_cast<size_t>(cfg.n_layer));
  auto dst = list_params(cfg, out);
  auto src = list_params(cfg, w);
  MLKV_CHECK(dst.size() == src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    const Tensor& t = *src[i].second;
    *dst[i].tensor = matrices_only && t.ndim() != 2 ? t : t.to(dtype);
  }
  return out;
}

void init_weights_random(const ModelConfig& cfg, ModelWeights* w, uint64_t seed, float std) {
  allocate_weights(cfg, w);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float out_std = std / std::sqrt(2.0f * static_cast<float>(cfg.n_layer));
  for (auto& p : list_params(cfg, *w)) {
    Tensor& t = *p.tensor;
    const bool is_norm = p.name.find("norm") != std::string::npos;
    const bool is_bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    if (is_norm && !is_bias) {
      for (int64_t i = 0; i < t.numel(); ++i) t[i] = 1.0f;
    } else if (is_bias) {
      t.zero();
    } else {
      const bool residual_out = p.name.find("dense.weight") != std::string::npos ||
                                p.name.find("o_proj") != std::string::npos ||
                                p.name.find("4h_to_h") != std::string::npos ||
                                p.name.find("down_proj") != std::string::npos;
      const float s = residual_out ? out_std : std;
      for (int64_t i = 0; i < t.numel(); ++i) t[i] = s * normal(rng);
    }
  }
}

}  // namespace mlkv
