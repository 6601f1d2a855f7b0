#include "runtime/engine.h"

#include <algorithm>
#include <deque>

#include "core/check.h"

namespace mlkv {

namespace {

// Logits for at most this many rows per forward call keep peak memory bounded when scoring
// long sequences with large vocabularies.
constexpr int64_t kMaxLogitFloats = int64_t{64} << 20;

}  // namespace

std::vector<float> score_tokens(Model& model, const std::vector<int32_t>& tokens, bool cached,
                                DType cache_elem) {
  const ModelConfig& c = model.config();
  const int n = static_cast<int>(tokens.size());
  MLKV_REQUIRE(n >= 2, "scoring needs at least 2 tokens (got ", n, ")");
  MLKV_REQUIRE(n <= c.n_ctx, "context overflow: ", n, " tokens but the model's context is ", c.n_ctx,
               " (score longer text with a sliding window: mlkv eval)");
  KVCache cache(c, 1, n, cache_elem);
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
  for (int i = 0; i < n_req; ++i) {
    const auto& r = requests[static_cast<size_t>(i)];
    MLKV_REQUIRE(!r.prompt.empty(), "prompt ", i, " is empty");
    MLKV_REQUIRE(r.max_new_tokens >= 0, "prompt ", i, ": token budget must not be negative");
    MLKV_REQUIRE(static_cast<int>(r.prompt.size()) <= n_ctx, "context overflow: prompt ", i,
                 " has ", r.prompt.size(), " tokens but the context holds ", n_ctx);
    for (int32_t t : r.prompt) {
      MLKV_REQUIRE(t >= 0 && t < c.n_vocab, "prompt ", i, ": token id ", t,
                   " is outside the vocabulary (", c.n_vocab, " ids)");
    }
  }

  const int n_slots = std::min(opt.n_parallel, n_req);
  KVCache cache(c, n_slots, n_ctx, opt.cache_elem);
  struct Active {
    int req;
    int seq;
    int32_t next;  // token to feed in the next step (-1: prompt not yet prefilled)
    Sampler sampler;
  };
  std::vector<Active> active;
  std::deque<int> pending;
  for (int i = 0; i < n_req; ++i) pending.push_back(i);
  std::vector<float> logits;
  Batch b;

  auto finish = [&](size_t ai, const char* reason) {
    results[static_cast<size_t>(active[ai].req)].finish_reason = reason;
    cache.release_seq(active[ai].seq);
    active.erase(active.begin() + static_cast<std::ptrdiff_t>(ai));
  };

  while (!pending.empty() || !active.empty()) {
    // Admit waiting prompts into free slots.
    while (!pending.empty()) {
      const int req = pending.front();
      if (requests[static_cast<size_t>(req)].max_new_tokens == 0) {
        results[static_cast<size_t>(req)].finish_reason = "length";
        pending.pop_front();
        continue;
      }
      const int seq = cache.acquire_seq();
      if (seq < 0) break;
      pending.pop_front();
      SamplerParams sp = requests[static_cast<size_t>(req)].sampling;
      active.push_back({req, seq, -1, Sampler(sp)});
    }
    if (active.empty()) break;

    b.clear();
    for (const Active& a : active) {
      if (a.next < 0) {
        const auto& prompt = requests[static_cast<size_t>(a.req)].prompt;
        for (size_t i = 0; i < prompt.size(); ++i) {
          b.add(prompt[i], a.seq, static_cast<int32_t>(i), i + 1 == prompt.size());
        }
      } else {
        b.add(a.next, a.seq, cache.seq_len(a.seq), true);
      }
    }
    logits.resize(static_cast<size_t>(active.size()) * c.n_vocab);
    model.forward(b, cache, logits.data());

    // Every active sequence produced exactly one logits row, in order.
    for (size_t ai = active.size(); ai-- > 0;) {
      Active& a = active[ai];
      const auto& req = requests[static_cast<size_t>(a.req)];
      auto& res = results[static_cast<size_t>(a.req)];
      const int32_t tok = a.sampler.sample(logits.data() + ai * static_cast<size_t>(c.n_vocab), c.n_vocab);
      res.tokens.push_back(tok);
      a.next = tok;
      if (opt.on_token) opt.on_token(a.req, tok);
      if (opt.stop_at_eos && c.eos_token_id >= 0 && tok == c.eos_token_id) {
        finish(ai, "eos");
      } else if (static_cast<int>(res.tokens.size()) >= req.max_new_tokens) {
        finish(ai, "length");
      } else if (cache.seq_len(a.seq) >= n_ctx) {
        finish(ai, "context");
      }
    }
  }
  return results;
}

}  // namespace mlkv
