#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/timer.h"

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
  // all of its windows' token copies at once.
  const size_t chunk = static_cast<size_t>(std::max(1, opt.batch)) * 8;
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
  res.seconds = timer.seconds();
  return res;
}

}  // namespace mlkv::eval
