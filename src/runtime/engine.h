// What the CLI and the server call: scoring token sequences and generating continuations for
// several prompts at once over one shared KV cache (continuous batching: a finished sequence's
// cache slot is released and the next waiting prompt takes it).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "sampling/sampler.h"

namespace mlkv {

// log p(tokens[i+1] | tokens[0..i]) for i in [0, n-1): n-1 values.
// cached = false: one full-sequence pass (prefill); true: token-by-token cached decoding.
std::vector<float> score_tokens(Model& model, const std::vector<int32_t>& tokens, bool cached,
                                KvCacheType cache_elem = {});

struct GenerateRequest {
  std::vector<int32_t> prompt;
  int max_new_tokens = 32;
  SamplerParams sampling;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (prompt excluded)
  std::string finish_reason;    // "eos", "length" or "context"
};

struct GenerateOptions {
  int n_parallel = 8;          // sequences decoding together (cache slots)
  int n_ctx = 0;               // cache context per sequence; 0: the longest request, capped by the model's
  KvCacheType cache_elem;
  bool stop_at_eos = true;
  // Called for every generated token: (request index, token id).
  std::function<void(int, int32_t)> on_token;
};

// Generates every request to the end (continuous batching over opt.n_parallel cache slots) and
// returns the results in request order. Throws mlkv::Error for a request that can never run
// (naming its index), a context beyond the model's, or a sequence whose logits became
// non-finite.
std::vector<GenerateResult> generate(Model& model, const std::vector<GenerateRequest>& requests,
                                     const GenerateOptions& opt);

}  // namespace mlkv
