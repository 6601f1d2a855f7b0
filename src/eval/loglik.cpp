// Batched log-likelihood scoring with shared context prefill. See loglik.h.
#include "eval/loglik.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/ops.h"

namespace mlkv {

namespace {

// Bounds the logits buffer of one forward pass (rows x n_vocab floats); a single request larger
// than this still runs whole.
constexpr int64_t kMaxLogitFloats = int64_t{32} << 20;

// A request after left truncation: the model reads ctx + cont[:-1] and scores cont.
struct Prepared {
  std::vector<int32_t> ctx, cont;
  int ctx_len() const { return static_cast<int>(ctx.size()); }
  int fed() const { return static_cast<int>(ctx.size() + cont.size()) - 1; }
};

bool same_context(const Prepared& a, const Prepared& b) {
  return a.ctx == b.ctx;
}

struct Group {
  int first, count;  // requests [first, first + count)
};

}  // namespace

std::vector<LoglikResult> score_loglik(Model& model, const std::vector<LoglikRequest>& requests,
                                       const LoglikOptions& opt) {
  const ModelConfig& c = model.config();
  const int max_ctx = opt.max_ctx > 0 ? std::min(opt.max_ctx, c.n_ctx) : c.n_ctx;
  MLKV_REQUIRE(opt.batch > 0, "batch must be positive (got ", opt.batch, ")");
  const int n_req = static_cast<int>(requests.size());
  std::vector<LoglikResult> results(static_cast<size_t>(n_req));
  if (n_req == 0) return results;

  // Validate and truncate from the left: keep the last max_ctx + 1 tokens of ctx + cont.
  std::vector<Prepared> prep;
  prep.reserve(static_cast<size_t>(n_req));
  int cache_ctx = 1;
  for (int i = 0; i < n_req; ++i) {
    const LoglikRequest& r = requests[static_cast<size_t>(i)];
    MLKV_REQUIRE(!r.context.empty(), "request ", i,
                 ": empty context (give at least a prefix token)");
    MLKV_REQUIRE(!r.continuation.empty(), "request ", i, ": empty continuation");
    for (const auto* v : {&r.context, &r.continuation}) {
      for (int32_t t : *v) {
        MLKV_REQUIRE(t >= 0 && t < c.n_vocab, "request ", i, ": token id ", t,
                     " is outside the vocabulary (", c.n_vocab, " ids)");
      }
    }
    // lm-eval: feed (context + continuation)[-(max_ctx + 1):][:-1]. When even the continuation
    // is longer than that, its first tokens become context and go unscored.
    const int n_ctx_tok = static_cast<int>(r.context.size());
    const int n_cont = static_cast<int>(r.continuation.size());
    const int cut = std::max(0, n_ctx_tok + n_cont - 1 - max_ctx);
    Prepared p;
    if (cut < n_ctx_tok) {
      p.ctx.assign(r.context.begin() + cut, r.context.end());
      p.cont = r.continuation;
    } else {
      // Kept: continuation[cut - n_ctx_tok ..]; its first kept token is read, not scored.
      const int moved = cut - n_ctx_tok + 1;  // continuation tokens not scored
      p.ctx.assign(r.continuation.begin() + (moved - 1), r.continuation.begin() + moved);
      p.cont.assign(r.continuation.begin() + moved, r.continuation.end());
      results[static_cast<size_t>(i)].truncated_tokens = moved;
    }
    cache_ctx = std::max(cache_ctx, p.fed());
    prep.push_back(std::move(p));
  }

  // Groups: runs of consecutive requests with the same effective context.
  std::vector<Group> groups;
  for (int i = 0; i < n_req; ++i) {
    if (opt.share_context && !groups.empty() &&
        same_context(prep[static_cast<size_t>(groups.back().first)],
                     prep[static_cast<size_t>(i)])) {
      ++groups.back().count;
    } else {
      groups.push_back({i, 1});
    }
  }

  int max_group = 1;
  for (const Group& g : groups) max_group = std::max(max_group, g.count);
  const int n_slots = std::max(opt.batch, max_group);
  KVCache cache = model.new_cache(n_slots, cache_ctx, opt.cache_type);
  std::vector<float> logits;
  Batch b;
  int64_t done = 0;

  size_t gi = 0;
  while (gi < groups.size()) {
    // A wave: whole groups while they fit the slots and the logits bound.
    size_t g_end = gi;
    int slots = 0;
    int64_t rows = 0;
    while (g_end < groups.size()) {
      const Group& g = groups[g_end];
      int64_t g_rows = 0;
      for (int k = 0; k < g.count; ++k)
        g_rows += static_cast<int64_t>(prep[static_cast<size_t>(g.first + k)].cont.size());
      const bool fits =
          slots + g.count <= n_slots && (rows + g_rows) * c.n_vocab <= kMaxLogitFloats;
      if (!fits && g_end > gi) break;
      slots += g.count;
      rows += g_rows;
      ++g_end;
    }

    // Phase 1: every group's context minus its last token, into the group's first slot.
    b.clear();
    int slot = 0;
    std::vector<int> first_slot;
    for (size_t g = gi; g < g_end; ++g) {
      first_slot.push_back(slot);
      cache.set_seq_len(slot, 0);
      const Prepared& p = prep[static_cast<size_t>(groups[g].first)];
      for (int j = 0; j < p.ctx_len() - 1; ++j)
        b.add(p.ctx[static_cast<size_t>(j)], slot, j, false);
      slot += groups[g].count;
    }
    if (b.size() > 0) model.forward(b, cache, nullptr);

    // Fork the prefix, then phase 2: [last context token, cont[:-1]] per request, all rows scored.
    b.clear();
    for (size_t g = gi; g < g_end; ++g) {
      const int s0 = first_slot[g - gi];
      const Group& grp = groups[g];
      for (int k = 0; k < grp.count; ++k) {
        const Prepared& p = prep[static_cast<size_t>(grp.first + k)];
        const int s = s0 + k;
        const int n_prefix = p.ctx_len() - 1;
        if (k > 0) cache.copy_seq(s0, s, n_prefix);
        b.add(p.ctx.back(), s, n_prefix, true);
        for (size_t j = 0; j + 1 < p.cont.size(); ++j) {
          b.add(p.cont[j], s, n_prefix + 1 + static_cast<int>(j), true);
        }
      }
    }
    logits.resize(static_cast<size_t>(rows) * static_cast<size_t>(c.n_vocab));
    model.forward(b, cache, logits.data());

    int64_t row = 0;
    for (size_t g = gi; g < g_end; ++g) {
      for (int k = 0; k < groups[g].count; ++k) {
        const int ri = groups[g].first + k;
        const Prepared& p = prep[static_cast<size_t>(ri)];
        LoglikResult& res = results[static_cast<size_t>(ri)];
        int index = 0;
        for (int32_t target : p.cont) {
          const float* lr = logits.data() + row * c.n_vocab;
          if (opt.on_logits) opt.on_logits(ri, index++, lr);
          const float lp = lr[target] - ops::logsumexp(lr, c.n_vocab);
          // Greedy: the target is the first maximum (what torch.argmax returns on ties).
          const int32_t best = static_cast<int32_t>(std::max_element(lr, lr + c.n_vocab) - lr);
          res.logprob += lp;
          res.greedy = res.greedy && best == target;
          ++res.n_tokens;
          if (opt.keep_token_logprobs) res.token_logprobs.push_back(lp);
          ++row;
        }
        ++done;
      }
    }
    MLKV_CHECK(row == rows);
    gi = g_end;
    if (opt.on_progress) opt.on_progress(done);
  }
  return results;
}

}  // namespace mlkv
