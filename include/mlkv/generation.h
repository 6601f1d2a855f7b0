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
#include <vector>

#include "mlkv/sampling.h"

namespace mlkv {

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
  int n_parallel = 8;              // sequences decoding together (cache slots), > 0
  int n_ctx = 0;                   // tokens per sequence (prompt + generated); 0: the model's
  std::string cache_type = "f32";  // as GenerationOptions::cache_type
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
};

// The requests waiting for a slot and the sequences decoding, at one moment.
struct SessionLoad {
  int queued = 0;
  int running = 0;
};

}  // namespace mlkv
