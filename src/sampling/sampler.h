// Token sampling from logits: greedy (temperature 0), or temperature + top-k + top-p (nucleus)
// with a seeded RNG per sequence, so a given seed reproduces the same text.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace mlkv {

struct SamplerParams {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  // Picks a token from logits [n_vocab]. Deterministic for a given seed and call sequence.
  int32_t sample(const float* logits, int n_vocab);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

int32_t argmax(const float* x, int n);

}  // namespace mlkv
