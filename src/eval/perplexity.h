// Perplexity of a long token stream (a text file or a token shard) with a sliding window.
//
// Windows (HF's strided perplexity; with stride = window it is lm-eval's disjoint rolling
// windows): the stream s (a prefix token, when there is one, then the text's tokens) is scored
// for targets s[1..n). The first window feeds s[0 .. min(n, W+1) - 1) and predicts all of its
// targets; every next window predicts the next `stride` targets, reading up to W tokens of
// context before them (as many as fit). Every target is predicted exactly once, each with at
// least W - stride + 1 tokens of context (once the stream is that long).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "eval/loglik.h"

namespace mlkv::eval {

struct Window {
  int64_t begin;  // first token fed
  int64_t split;  // first predicted target: targets are s[split .. end)
  int64_t end;
};

// The windows over a stream of n tokens for window W (tokens fed per window) and stride S
// (1 <= S <= W). Throws mlkv::Error for bad sizes.
std::vector<Window> make_windows(int64_t n, int window, int stride);

struct PerplexityOptions {
  int window = 0;     // tokens fed per window; 0: the model's context
  int stride = 0;     // new targets per window; 0: the window (disjoint windows)
  int batch = 16;     // windows per forward pass
  int64_t limit = 0;  // score only the first `limit` windows (0: all)
  KvCacheType cache_type;  // the KV cache's formats
  // When set: every window is also scored with this cache format (the base, e.g. f32), and the
  // next-token distributions of the two are compared (PerplexityResult::kl), as llama.cpp's
  // perplexity --kl-divergence does for quantized models.
  std::optional<KvCacheType> kl_base;
  std::function<void(int64_t done, int64_t total)> on_progress;
};

// How far the next-token distributions q (cache_type) are from p (kl_base), over every target:
// KL(p || q) = sum_v p_v (log p_v - log q_v) in nats, per target position.
struct KlResult {
  int64_t n = 0;           // targets compared
  double sum = 0;          // of KL(p || q)
  double max = 0;
  double p99 = 0;          // 99th percentile (nearest rank)
  int64_t same_top = 0;    // targets whose argmax is the same under p and q
  double base_nll = 0;     // total NLL of the targets under p (the base's perplexity)
  double mean() const { return n > 0 ? sum / static_cast<double>(n) : 0.0; }
};

struct PerplexityResult {
  int64_t n_windows = 0;
  int64_t n_tokens = 0;  // predicted targets
  double nll = 0;        // their total negative log-likelihood, nats
  double seconds = 0;
  double loss() const { return n_tokens > 0 ? nll / static_cast<double>(n_tokens) : 0.0; }
  double token_perplexity() const;
  std::vector<float> token_logprobs;  // when kept: one per target, in stream order
  std::optional<KlResult> kl;         // when PerplexityOptions::kl_base was set
};

// Scores the targets of stream s (s[0] is read but never predicted).
PerplexityResult stream_perplexity(Model& model, const std::vector<int32_t>& s,
                                   const PerplexityOptions& opt, bool keep_token_logprobs = false);

}  // namespace mlkv::eval
