// Shared helpers for the unit tests: tiny random model configurations of every flavour, random
// weights and tokens, a model built from them.
#pragma once

#include <string>
#include <vector>

#include <random>

#include "model/config.h"
#include "model/model.h"
#include "model/weights.h"

namespace mlkv::testing {

// A tiny config: family preset, L layers, E embd, H heads, G kv heads, owners given as kv_source.
inline ModelConfig tiny_config(Family fam, int L, int E, int H, int G, std::vector<int> kv_source,
                               KvShareRope share, int vocab = 61) {
  ModelConfig c = fam == Family::kGptNeoX ? preset_gpt_neox() : preset_llama();
  c.n_layer = L;
  c.n_embd = E;
  c.n_head = H;
  c.n_head_kv = G;
  c.n_embd_head = E / H;
  c.n_rot = fam == Family::kGptNeoX ? c.n_embd_head / 2 : c.n_embd_head;
  c.n_ff = 3 * E;
  c.n_vocab = vocab;
  c.n_ctx = 128;
  c.kv_source = std::move(kv_source);
  if (c.kv_source.empty()) {
    for (int il = 0; il < L; ++il) c.kv_source.push_back(il);
  }
  c.share_rope = share;
  c.bos_token_id = -1;
  c.eos_token_ids.clear();
  c.validate();
  return c;
}

// Random weights large enough that attention is far from uniform and rotary matters.
inline ModelWeights random_weights(const ModelConfig& c, uint64_t seed) {
  ModelWeights w;
  init_weights_random(c, &w, seed, 0.35f);
  // Non-trivial norms and biases too.
  uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (auto& p : list_params(c, w)) {
    const bool is_norm = p.name.find("norm") != std::string::npos;
    const bool is_bias = p.name.find(".bias") != std::string::npos;
    if (!is_norm && !is_bias) continue;
    for (int64_t i = 0; i < p.tensor->numel(); ++i) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      const float u = static_cast<float>((s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
      (*p.tensor)[i] += 0.4f * u;
    }
  }
  return w;
}

inline std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

// An inference model of config c with random_weights(c, seed).
inline Model make_model(const ModelConfig& c, uint64_t seed) {
  LoadedModel lm;
  lm.config = c;
  lm.weights = random_weights(c, seed);
  return Model(std::move(lm));
}

}  // namespace mlkv::testing
