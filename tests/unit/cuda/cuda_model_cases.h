// The tiny model configurations the whole-model CUDA tests run: both families (GPT-NeoX/Pythia:
// LayerNorm, GELU, parallel residual, partial rotary, biases; Llama: RMSNorm, SwiGLU, full rotary)
// under every sharing scheme (MHA, GQA, MQA, MLKV with half the layers owning K/V, MLKV with one
// owner, and MLKV with pre-sharing rotary), kv_source built by the project's one builder
// (build_kv_source) and kv_share_rope by its one parser (parse_share_rope).
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "test_util.h"

namespace mlkv::cuda_test {

struct ModelCase {
  std::string name;
  Family fam;
  int n_head_kv;
  int kv_layers;      // owners by the authors' rule; 0: every layer owns its K/V
  const char* share;  // kv_share_rope spelling
};

inline std::vector<ModelCase> model_cases() {
  std::vector<ModelCase> out;
  for (Family fam : {Family::kGptNeoX, Family::kLlama}) {
    const std::string f = family_name(fam);
    out.push_back({f + "_mha", fam, 4, 0, "post"});
    out.push_back({f + "_gqa", fam, 2, 0, "post"});
    out.push_back({f + "_mqa", fam, 1, 0, "post"});
    out.push_back({f + "_mlkv_half", fam, 2, 2, "post"});
    out.push_back({f + "_mlkv_one", fam, 1, 1, "post"});
    out.push_back({f + "_mlkv_half_pre", fam, 2, 2, "pre"});
  }
  return out;
}

// L = 4 layers of E = n_head * head_dim, n_head = 4, an odd vocabulary.
inline ModelConfig model_config(const ModelCase& c, int head_dim, int vocab) {
  const int L = 4, H = 4;
  KvSharingSpec spec;
  spec.n_layer = L;
  spec.kv_layers = c.kv_layers;
  return mlkv::testing::tiny_config(c.fam, L, H * head_dim, H, c.n_head_kv, build_kv_source(spec),
                                    parse_share_rope(c.share), vocab);
}

// The same parameters on another device (values unchanged).
inline ModelWeights weights_on(const ModelConfig& cfg, const ModelWeights& w, Device d) {
  return copy_weights(cfg, w, d);
}

}  // namespace mlkv::cuda_test
