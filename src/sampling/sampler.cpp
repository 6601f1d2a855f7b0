#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace mlkv {

int32_t argmax(const float* x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {
  MLKV_REQUIRE(p.temperature >= 0, "temperature must not be negative (got ", p.temperature, ")");
  MLKV_REQUIRE(p.top_k >= 0, "top-k must not be negative (got ", p.top_k, ")");
  MLKV_REQUIRE(p.top_p > 0 && p.top_p <= 1, "top-p must be in (0, 1] (got ", p.top_p, ")");
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (p_.temperature == 0.0f) return argmax(logits, n_vocab);
  cand_.resize(static_cast<size_t>(n_vocab));
  for (int i = 0; i < n_vocab; ++i) cand_[static_cast<size_t>(i)] = {logits[i] / p_.temperature, i};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    n = static_cast<size_t>(p_.top_k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax over the survivors (sorted descending).
  const float mx = cand_[0].first;
  double total = 0;
  std::vector<double> prob(n);
  for (size_t i = 0; i < n; ++i) {
    prob[i] = std::exp(static_cast<double>(cand_[i].first - mx));
    total += prob[i];
  }
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[i] / total;
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    total = 0;
    for (size_t i = 0; i < n; ++i) total += prob[i];
  }
  std::uniform_real_distribution<double> uni(0.0, total);
  const double r = uni(rng_);
  double acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += prob[i];
    if (r < acc) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace mlkv
