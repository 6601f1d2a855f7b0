// Token sampling from logits: greedy (temperature 0), or temperature + top-k + top-p (nucleus)
// with a seeded RNG per sequence, so a given seed reproduces the same text.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "mlkv/sampling.h"  // SamplerParams (public)

namespace mlkv {

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  // Picks a token from logits [n_vocab]. Deterministic for a given seed and call sequence. Stable
  // for any finite temperature > 0 (a tiny one converges to greedy). Throws mlkv::Error when a
  // logit is NaN or infinite.
  int32_t sample(const float* logits, int n_vocab);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<double, int32_t>> cand_;  // (logit - max) / T, token id
};

int32_t argmax(const float* x, int n);

}  // namespace mlkv
