// The plain data of generation in the public API: a finished generation and the options of a
// batch (Engine::generate), a request and the options and load of a continuous-batching Session.
// No behaviour lives here, so every layer of the engine may use these types (the scheduler in
// src/runtime does); the classes that act on them are in mlkv/model.h and mlkv/session.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mlkv/sampling.h"

namespace mlkv {

// The log-probability of one token and, when asked for, the most likely alternatives at its
// position. Natural logs of the model's own distribution (log-softmax of the logits, before
// temperature, top-k or top-p).
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // (id, log-prob), most likely first
};

// One finished generation.
struct Generation {
  std::vector<int32_t> tokens;  // generated ids, prompt excluded
  std::string text;             // tokens decoded, when the engine has a tokenizer (else "")
  std::string finish_reason;    // "eos" (stop_at_eos and one of the model's EOS ids came: the
                                // last token), "length" (max_new_tokens reached), "context" (the
                                // sequence filled n_ctx), "error" (see error) or, in a Session
                                // only, "cancelled"
  std::string error;            // with finish_reason "error": what went wrong (the model produced
                                // non-finite logits, say); tokens holds what came before
  // With Request::logprobs >= 0 (Session only): one entry per generated token, and with
  // Request::prompt_logprobs one per prompt token after the first (prompt[i + 1] given
  // prompt[0..i]).
  std::vector<TokenLogprob> logprobs;
  std::vector<TokenLogprob> prompt_logprobs;
};

struct GenerationOptions {
  int max_new_tokens = 32;  // per prompt, >= 0
  // Prompt i samples with seed sampling.seed + i, so results do not depend on how prompts are
  // batched.
  SamplerParams sampling = {};
  int n_parallel = 8;  // sequences decoded together (KV-cache slots), > 0
  // Cache context per sequence; 0: the longest prompt + max_new_tokens, capped by the model's.
  int n_ctx = 0;
  // KV cache format: "f32", "f16", "bf16", "q8_0", "q4_0" (q8_0/q4_0: head sizes that are multiples
  // of 32, CPU), or "KEYS/VALUES" such as "q8_0/f16".
  std::string cache_type = "f32";
  bool stop_at_eos = true;
};

struct SessionOptions {
  int n_parallel = 8;              // most sequences decoding together, > 0
  int n_ctx = 0;                   // tokens per sequence (prompt + generated); 0: the model's
  std::string cache_type = "f32";  // as GenerationOptions::cache_type
  // 0: every sequence reserves n_ctx positions of cache when it starts. B > 0: a paged cache of
  // B-token blocks that sequences take as they grow (admission by free blocks, preemption when
  // they run out, shared prompt prefixes reused: mlkv/session.h).
  int block_size = 0;
  // Paged: the cache's bytes (blocks = budget / (B x KV bytes per token)); 0: n_parallel x n_ctx
  // positions' worth.
  int64_t kv_budget_bytes = 0;
};

struct Request {
  std::vector<int32_t> prompt;  // token ids, at least one, at most n_ctx
  int max_new_tokens = 32;      // >= 0; 0 finishes at once with "length"
  SamplerParams sampling = {};
  bool stop_at_eos = true;
  // Set to true (from any thread) to stop the sequence at the next step ("cancelled").
  std::shared_ptr<std::atomic<bool>> cancel = nullptr;
  // Called on the thread that steps the session: every generated token, then once at the end
  // (Generation::text is left empty: decode with a StreamDecoder or Tokenizer::decode).
  std::function<void(int32_t)> on_token = nullptr;
  std::function<void(const Generation&)> on_done = nullptr;
  // Log-probabilities to report: -1 none; N >= 0 each generated token's own and the N most
  // likely alternatives at its position (Generation::logprobs; also passed to on_logprob, called
  // just before on_token). N <= n_vocab.
  int logprobs = -1;
  std::function<void(const TokenLogprob&)> on_logprob = nullptr;
  // With logprobs >= 0: the log-probs of the prompt's own tokens too (Generation::prompt_logprobs;
  // the prefill then makes logits at every prompt position: n_prompt x n_vocab floats once). With
  // max_new_tokens 0 the prompt is still prefilled, for these.
  bool prompt_logprobs = false;
};

// The requests waiting for a slot and the sequences decoding, at one moment.
struct SessionLoad {
  int queued = 0;
  int running = 0;
  int64_t cache_tokens_used = 0;      // tokens held in the KV cache by running sequences
  int64_t cache_tokens_capacity = 0;  // tokens the cache holds (paged: blocks x block size)
  int kv_blocks_total = 0;            // paged: blocks in the cache (0: not paged)
  int kv_blocks_used = 0;             // held by running sequences
  int kv_blocks_cached = 0;           // in the prefix cache
  int64_t preemptions = 0;            // sequences that gave their blocks up (recomputed later)
  int64_t prefix_tokens_reused = 0;   // prompt tokens not prefilled thanks to the prefix cache
};

}  // namespace mlkv
