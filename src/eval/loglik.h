// Batched log-likelihood scoring of (context, continuation) token pairs: the one primitive that
// zero-shot tasks (one request per answer choice) and rolling-window perplexity (one request per
// window) are built on. Semantics follow lm-evaluation-harness's `loglikelihood`: the model reads
// context + continuation[:-1]; the result is the summed log-prob of the continuation tokens and
// whether each was the greedy (argmax) choice. Too long an input is cut from the left, as the
// harness does, keeping at most max_ctx tokens fed to the model; a continuation longer than that
// on its own has its first tokens read as context, unscored (LoglikResult::truncated_tokens).
//
// Sharing: consecutive requests with the same (possibly truncated) context form a group. The
// group's context, minus its last token, is run once into one cache sequence, then forked into
// the others with KVCache::copy_seq; each request then runs only [last context token,
// continuation[:-1]]. Several groups are batched into each forward pass.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"

namespace mlkv {

struct LoglikRequest {
  std::vector<int32_t> context;       // at least one token
  std::vector<int32_t> continuation;  // at least one token
};

struct LoglikResult {
  double logprob = 0;        // sum over the continuation's tokens
  bool greedy = true;        // every continuation token was the argmax of its row
  int n_tokens = 0;          // continuation tokens scored
  int truncated_tokens = 0;  // leading continuation tokens not scored: the continuation alone
                             // was longer than max_ctx (they were read as context instead)
  std::vector<float> token_logprobs;  // per token, when LoglikOptions::keep_token_logprobs
};

struct LoglikOptions {
  int batch = 16;   // sequences (requests) per forward pass; a larger group still goes whole
  int max_ctx = 0;  // most tokens fed per request; 0: the model's context
  bool keep_token_logprobs = false;
  bool share_context = true;  // false: every request runs context + continuation on its own
  KvCacheType cache_type;     // the KV cache's formats (prefill writes them, attention reads them)
  // Called after each forward wave with the number of requests finished so far.
  std::function<void(int64_t)> on_progress;
  // Called for every scored row with its raw logits ([n_vocab] floats, valid during the call):
  // the request's index and the row's index among that request's scored tokens. None: not called.
  std::function<void(int request, int index, const float* logits)> on_logits;
};

// Scores every request; results are index-aligned with requests. Throws mlkv::Error for an empty
// context or continuation or a token outside the vocabulary.
std::vector<LoglikResult> score_loglik(Model& model, const std::vector<LoglikRequest>& requests,
                                       const LoglikOptions& opt = {});

}  // namespace mlkv
