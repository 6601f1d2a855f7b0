#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/ops.h"

namespace mlkv::eval {

std::vector<Window> make_windows(int64_t n, int window, int stride) {
  MLKV_REQUIRE(window >= 1, "window must be positive (got ", window, ")");
  MLKV_REQUIRE(stride >= 1 && stride <= window, "stride must be between 1 and the window (", window,
               "), got ", stride);
  std::vector<Window> out;
  if (n < 2) return out;
  int64_t end = std::min<int64_t>(n, int64_t{window} + 1);
  out.push_back({0, 1, end});
  while (end < n) {
    const int64_t next = std::min<int64_t>(n, end + stride);
    out.push_back({std::max<int64_t>(0, next - 1 - window), end, next});
    end = next;
  }
  return out;
}

double PerplexityResult::token_perplexity() const {
  return std::exp(loss());
}

PerplexityResult stream_perplexity(Model& model, const std::vector<int32_t>& s,
                                   const PerplexityOptions& opt, bool keep_token_logprobs) {
  const int window = opt.window > 0 ? opt.window : model.config().n_ctx;
  MLKV_REQUIRE(window <= model.config().n_ctx, "window ", window,
               " is longer than the model's context (", model.config().n_ctx, ")");
  const int stride = opt.stride > 0 ? opt.stride : window;
  std::vector<Window> windows = make_windows(static_cast<int64_t>(s.size()), window, stride);
  if (opt.limit > 0 && static_cast<int64_t>(windows.size()) > opt.limit)
    windows.resize(static_cast<size_t>(opt.limit));

  PerplexityResult res;
  res.n_windows = static_cast<int64_t>(windows.size());
  Timer timer;
  // Requests are built and scored a chunk of windows at a time, so a long stream never holds
  // all of its windows' token copies at once. With a KL base, the base's log-probabilities of a
  // chunk are kept until the same chunk is scored with the cache under test: the chunk is then
  // bounded to ~256 MiB of them.
  const int n_vocab = model.config().n_vocab;
  size_t chunk = static_cast<size_t>(std::max(1, opt.batch)) * 8;
  if (opt.kl_base) {
    const int64_t per_window = int64_t{window} * n_vocab;
    chunk = std::min<size_t>(chunk, static_cast<size_t>(std::max<int64_t>(1, (int64_t{64} << 20) / per_window)));
  }
  std::vector<double> kls;  // per target, for the percentile
  if (opt.kl_base) res.kl = KlResult{};
  LoglikOptions lo;
  lo.batch = opt.batch;
  lo.max_ctx = window;
  lo.keep_token_logprobs = keep_token_logprobs;
  lo.share_context = false;  // windows never share a context
  lo.cache_type = opt.cache_type;
  for (size_t w0 = 0; w0 < windows.size(); w0 += chunk) {
    const size_t w1 = std::min(windows.size(), w0 + chunk);
    std::vector<LoglikRequest> reqs;
    for (size_t w = w0; w < w1; ++w) {
      const Window& win = windows[w];
      reqs.push_back({std::vector<int32_t>(s.begin() + win.begin, s.begin() + win.split),
                      std::vector<int32_t>(s.begin() + win.split, s.begin() + win.end)});
    }
    if (opt.on_progress) {
      lo.on_progress = [&, w0](int64_t done) {
        opt.on_progress(static_cast<int64_t>(w0) + done, res.n_windows);
      };
    }
    // The base pass: log-softmax rows of every target, [request][index][n_vocab].
    std::vector<size_t> offset(reqs.size() + 1, 0);
    std::vector<float> base;
    if (opt.kl_base) {
      for (size_t i = 0; i < reqs.size(); ++i) offset[i + 1] = offset[i] + reqs[i].continuation.size();
      base.resize(offset.back() * static_cast<size_t>(n_vocab));
      LoglikOptions bo = lo;
      bo.cache_type = *opt.kl_base;
      bo.keep_token_logprobs = false;
      bo.on_progress = nullptr;
      bo.on_logits = [&](int r, int index, const float* logits) {
        float* dst = base.data() + (offset[static_cast<size_t>(r)] + static_cast<size_t>(index)) * n_vocab;
        const float lse = ops::logsumexp(logits, n_vocab);
        for (int v = 0; v < n_vocab; ++v) dst[v] = logits[v] - lse;
      };
      for (const LoglikResult& r : score_loglik(model, reqs, bo)) res.kl->base_nll -= r.logprob;
      lo.on_logits = [&](int r, int index, const float* logits) {
        const float* p = base.data() + (offset[static_cast<size_t>(r)] + static_cast<size_t>(index)) * n_vocab;
        // log q in f32 exactly as the base's log p were made, so equal logits give KL 0.
        const float lse = ops::logsumexp(logits, n_vocab);
        double kl = 0;
        for (int v = 0; v < n_vocab; ++v) {
          const float lq = logits[v] - lse;
          kl += std::exp(static_cast<double>(p[v])) * (static_cast<double>(p[v]) - lq);
        }
        kl = std::max(0.0, kl);  // rounding can leave a tiny negative for equal distributions
        KlResult& k = *res.kl;
        k.sum += kl;
        k.max = std::max(k.max, kl);
        ++k.n;
        k.same_top += std::max_element(p, p + n_vocab) - p ==
                      std::max_element(logits, logits + n_vocab) - logits;
        kls.push_back(kl);
      };
    }
    const std::vector<LoglikResult> out = score_loglik(model, reqs, lo);
    for (const LoglikResult& r : out) {
      res.nll -= r.logprob;
      res.n_tokens += r.n_tokens;
      if (keep_token_logprobs) {
        res.token_logprobs.insert(res.token_logprobs.end(), r.token_logprobs.begin(),
                                  r.token_logprobs.end());
      }
    }
  }
  if (res.kl && !kls.empty()) {
    const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(kls.size()))) - 1;
    std::nth_element(kls.begin(), kls.begin() + static_cast<std::ptrdiff_t>(rank), kls.end());
    res.kl->p99 = kls[rank];
  }
  res.seconds = timer.seconds();
  return res;
}

}  // namespace mlkv::eval
