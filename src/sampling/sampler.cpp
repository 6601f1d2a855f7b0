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
  MLKV_REQUIRE(p.temperature >= 0 && std::isfinite(p.temperature),
               "temperature must be a finite number >= 0 (got ", p.temperature, ")");
  MLKV_REQUIRE(p.top_k >= 0, "top-k must not be negative (got ", p.top_k, ")");
  MLKV_REQUIRE(p.top_p > 0 && p.top_p <= 1, "top-p must be in (0, 1] (got ", p.top_p, ")");
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  // A non-finite logit means the model's arithmetic broke down: no token drawn from such a row
  // would mean anything, so say so instead of picking one.
  for (int i = 0; i < n_vocab; ++i) {
    MLKV_REQUIRE(std::isfinite(logits[i]), "the model produced a non-finite logit (",
                 logits[i], " for token id ", i, "): its weights or inputs overflow");
  }
  if (p_.temperature == 0.0f) return argmax(logits, n_vocab);
  // (logit - max) / T in double: 0 for the most likely token, finite or -inf below it. Dividing
  // first would overflow for a tiny T (1e-38 makes logit / T infinite and the softmax NaN);
  // this way a tiny T converges to greedy and no T > 0 gives NaN probabilities.
  const float mx = logits[argmax(logits, n_vocab)];
  cand_.resize(static_cast<size_t>(n_vocab));
  for (int i = 0; i < n_vocab; ++i) {
    const double z = (static_cast<double>(logits[i]) - mx) / p_.temperature;
    cand_[static_cast<size_t>(i)] = {z, i};
  }
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
  // Softmax over the survivors (sorted descending; the first has z = 0, so total >= 1).
  double total = 0;
  std::vector<double> prob(n);
  for (size_t i = 0; i < n; ++i) {
    prob[i] = std::exp(cand_[i].first);
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
