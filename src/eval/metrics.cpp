#include "eval/metrics.h"

#include <cmath>
#include <random>

#include "core/check.h"

namespace mlkv::eval {

int argmax_first(const std::vector<double>& v) {
  MLKV_CHECK(!v.empty());
  int best = 0;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[static_cast<size_t>(best)]) best = static_cast<int>(i);
  }
  return best;
}

ChoiceScores score_choices(const std::vector<double>& loglik,
                           const std::vector<int64_t>& choice_chars) {
  MLKV_CHECK(loglik.size() == choice_chars.size() && !loglik.empty());
  std::vector<double> norm(loglik.size());
  for (size_t i = 0; i < loglik.size(); ++i) {
    // lm-eval divides by float(len(choice)); an empty choice gives -inf / +inf there. Count it as
    // one character instead so the item still has an answer.
    norm[i] = loglik[i] / static_cast<double>(std::max<int64_t>(choice_chars[i], 1));
  }
  return {argmax_first(loglik), argmax_first(norm)};
}

int64_t utf8_length(std::string_view s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    // Count every byte that is not a continuation byte (10xxxxxx).
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) ++n;
  }
  return n;
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return NAN;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double mean_stderr(const std::vector<double>& v) {
  const size_t n = v.size();
  if (n < 2) return 0.0;
  const double m = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / static_cast<double>(n - 1)) / std::sqrt(static_cast<double>(n));
}

double perplexity(const std::vector<double>& loglik) {
  return std::exp(-mean(loglik));
}

double perplexity_bootstrap_stderr(const std::vector<double>& loglik, int iters, uint64_t seed) {
  const size_t n = loglik.size();
  if (n < 2 || iters < 2) return 0.0;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, n - 1);
  std::vector<double> ppl(static_cast<size_t>(iters));
  for (int it = 0; it < iters; ++it) {
    double s = 0;
    for (size_t k = 0; k < n; ++k) s += loglik[pick(rng)];
    ppl[static_cast<size_t>(it)] = std::exp(-s / static_cast<double>(n));
  }
  // mean_stderr multiplies by 1/sqrt(n); the bootstrap wants the plain standard deviation.
  return mean_stderr(ppl) * std::sqrt(static_cast<double>(iters));
}

double bits_per_byte(double nll_nats, int64_t n_bytes) {
  return n_bytes > 0 ? nll_nats / (std::log(2.0) * static_cast<double>(n_bytes)) : NAN;
}

}  // namespace mlkv::eval
