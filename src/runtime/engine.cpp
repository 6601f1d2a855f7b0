#include "runtime/engine.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/ops.h"
#include "runtime/scheduler.h"

namespace mlkv {

namespace {

// Logits for at most this many rows per forward call keep peak memory bounded when scoring
// long sequences with large vocabularies.
constexpr int64_t kMaxLogitFloats = int64_t{64} << 20;

}  // namespace

std::vector<float> score_tokens(Model& model, const std::vector<int32_t>& tokens, bool cached,
                                KvCacheType cache_elem) {
  const ModelConfig& c = model.config();
  const int n = static_cast<int>(tokens.size());
  MLKV_REQUIRE(n >= 2, "scoring needs at least 2 tokens (got ", n, ")");
  // The last token is only a target: n - 1 positions go through the model.
  MLKV_REQUIRE(n - 1 <= c.n_ctx, "context overflow: scoring ", n, " tokens feeds ", n - 1,
               " positions but the model's context is ", c.n_ctx,
               " (score longer text with a sliding window: mlkv eval)");
  KVCache cache = model.new_cache(1, n - 1, cache_elem);
  cache.acquire_seq();
  std::vector<float> out;
  out.reserve(static_cast<size_t>(n - 1));
  // One pass over the whole sequence, or (cached) one token per pass. A pass's logits are
  // bounded in memory by splitting very long sequences into consecutive prefill chunks.
  const int chunk = cached ? 1 : std::max<int>(1, static_cast<int>(kMaxLogitFloats / c.n_vocab));
  std::vector<float> logits;
  Batch b;
  for (int start = 0; start < n - 1; start += chunk) {
    const int end = std::min(n - 1, start + chunk);
    b.clear();
    for (int i = start; i < end; ++i) b.add(tokens[static_cast<size_t>(i)], 0, i, true);
    logits.resize(static_cast<size_t>(end - start) * c.n_vocab);
    model.forward(b, cache, logits.data());
    for (int i = start; i < end; ++i) {
      const float* row = logits.data() + static_cast<size_t>(i - start) * c.n_vocab;
      const int32_t next = tokens[static_cast<size_t>(i + 1)];
      MLKV_REQUIRE(next >= 0 && next < c.n_vocab, "token id ", next,
                   " is outside the vocabulary (", c.n_vocab, " ids)");
      out.push_back(row[next] - ops::logsumexp(row, c.n_vocab));
    }
  }
  return out;
}

std::vector<GenerateResult> generate(Model& model, const std::vector<GenerateRequest>& requests,
                                     const GenerateOptions& opt) {
  const ModelConfig& c = model.config();
  const int n_req = static_cast<int>(requests.size());
  std::vector<GenerateResult> results(static_cast<size_t>(n_req));
  if (n_req == 0) return results;
  MLKV_REQUIRE(opt.n_parallel > 0, "parallel sequences must be positive");
  int n_ctx = opt.n_ctx;
  if (n_ctx <= 0) {
    for (const auto& r : requests) {
      n_ctx = std::max(n_ctx, static_cast<int>(r.prompt.size()) + std::max(r.max_new_tokens, 0));
    }
    n_ctx = std::min(n_ctx, c.n_ctx);
  }
  Scheduler sched(model, std::min(opt.n_parallel, n_req), n_ctx, opt.cache_elem);
  std::string first_error;  // a sequence that could not go on (non-finite logits)
  for (int i = 0; i < n_req; ++i) {
    const GenerateRequest& g = requests[static_cast<size_t>(i)];
    Request r;
    r.prompt = g.prompt;
    r.max_new_tokens = g.max_new_tokens;
    r.sampling = g.sampling;
    r.stop_at_eos = opt.stop_at_eos;
    if (opt.on_token) r.on_token = [&opt, i](int32_t t) { opt.on_token(i, t); };
    r.on_done = [&results, &first_error, i](const Generation& s) {
      results[static_cast<size_t>(i)] = {s.tokens, s.finish_reason};
      if (s.finish_reason == "error" && first_error.empty()) first_error = cat("prompt ", i, ": ", s.error);
    };
    try {
      sched.submit(std::move(r));
    } catch (const Error& e) {
      fail("prompt ", i, ": ", e.what());
    }
  }
  sched.run_until_idle();
  MLKV_REQUIRE(first_error.empty(), first_error);
  return results;
}

}  // namespace mlkv
