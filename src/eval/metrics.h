// Scoring rules and statistics of the zero-shot tasks, as lm-evaluation-harness defines them:
// pure functions over per-item numbers, kept apart from the model so unit tests can check them on
// hand-made examples.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlkv::eval {

// Index of the first maximum (numpy.argmax's tie rule).
int argmax_first(const std::vector<double>& v);

// Multiple choice, for one item. loglik[i]: summed log-likelihood of choice i's continuation;
// choice_chars[i]: the length of choice i in characters (Unicode code points, as Python's len()).
// acc: argmax of loglik; acc_norm: argmax of loglik / chars.
struct ChoiceScores {
  int pred = 0;       // argmax of loglik
  int pred_norm = 0;  // argmax of loglik / chars
};
ChoiceScores score_choices(const std::vector<double>& loglik,
                           const std::vector<int64_t>& choice_chars);

// Unicode code points in UTF-8 text (invalid bytes count one each).
int64_t utf8_length(std::string_view s);

// Mean and its standard error, stddev(ddof = 1) / sqrt(n) (lm-eval's mean_stderr). stderr is 0
// for fewer than 2 values.
double mean(const std::vector<double>& v);
double mean_stderr(const std::vector<double>& v);

// LAMBADA perplexity, exp(-mean(loglik)), and its bootstrap standard error: the standard deviation
// (ddof = 1) of the perplexity of `iters` resamples with replacement, seeded (deterministic).
double perplexity(const std::vector<double>& loglik);
double perplexity_bootstrap_stderr(const std::vector<double>& loglik, int iters = 1000,
                                   uint64_t seed = 1234);

// Bits per byte of a text: total negative log-likelihood in nats / (ln 2 * bytes).
double bits_per_byte(double nll_nats, int64_t n_bytes);

}  // namespace mlkv::eval
