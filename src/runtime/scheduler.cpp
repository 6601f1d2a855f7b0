#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "kernels/ops.h"

namespace mlkv {

namespace {

// The context a scheduler may use: positive and within the model's (positions past
// max_position_embeddings were never trained; score and logits refuse them too).
int checked_ctx(const ModelConfig& c, int n_ctx) {
  MLKV_REQUIRE(n_ctx > 0, "the context must be positive (got ", n_ctx, ")");
  MLKV_REQUIRE(n_ctx <= c.n_ctx, "a context of ", n_ctx, " tokens exceeds the model's context (",
               c.n_ctx, " positions)");
  return n_ctx;
}

}  // namespace

// Blocks of a paged cache: n_blocks, or (0) as many as a reservation of every sequence's context.
int pool_blocks(int n_parallel, int n_ctx, int block_size, int n_blocks) {
  MLKV_REQUIRE(block_size >= 0, "the KV block size must not be negative (got ", block_size, ")");
  MLKV_REQUIRE(n_blocks >= 0, "the number of KV blocks must not be negative (got ", n_blocks, ")");
  MLKV_REQUIRE(n_parallel > 0, "the number of sequences must be positive (got ", n_parallel, ")");
  if (block_size == 0) return 0;
  return n_blocks > 0 ? n_blocks : n_parallel * ((n_ctx + block_size - 1) / block_size);
}

Scheduler::Scheduler(Model& model, int n_parallel, int n_ctx, KvCacheType cache_elem,
                     int block_size, int n_blocks)
    : model_(model), n_parallel_(n_parallel), n_ctx_(checked_ctx(model.config(), n_ctx)),
      block_size_(block_size),
      cache_(model.new_cache(n_parallel, n_ctx_, cache_elem, block_size,
                             pool_blocks(n_parallel, n_ctx_, block_size, n_blocks))) {
  // Measured: serve --kv-budget 1G on huge pages held 241 MB after 3 short requests (39 MB on
  // 4 KiB pages) and the first request took 0.65 s instead of 0.06 s.
  cache_.prefer_small_pages();
  if (block_size_ > 0) {
    pool_ = std::make_unique<BlockPool>(cache_.n_blocks(), block_size_);
    for (int s = 0; s < n_parallel; ++s) cache_.set_block_table(s, {});
  }
  publish_load();
}

void Scheduler::submit(Request r) {
  const ModelConfig& c = model_.config();
  MLKV_REQUIRE(!r.prompt.empty(), "the prompt is empty");
  MLKV_REQUIRE(r.max_new_tokens >= 0, "the token budget must not be negative");
  MLKV_REQUIRE(static_cast<int>(r.prompt.size()) <= n_ctx_, "context overflow: the prompt has ",
               r.prompt.size(), " tokens but the context holds ", n_ctx_);
  for (int32_t t : r.prompt) {
    MLKV_REQUIRE(t >= 0 && t < c.n_vocab, "token id ", t, " is outside the vocabulary (", c.n_vocab, " ids)");
  }
  MLKV_REQUIRE(r.logprobs >= -1 && r.logprobs <= c.n_vocab, "logprobs must be -1 (none) or 0 to ",
               c.n_vocab, " (got ", r.logprobs, ")");
  Sampler check(r.sampling);  // validates the sampling parameters now, not on the engine thread
  (void)check;
  if (pool_) {
    // The most it will ever hold: prompt + generated tokens, within the context.
    const int64_t most = std::min<int64_t>(n_ctx_, static_cast<int64_t>(r.prompt.size()) +
                                                       std::max(r.max_new_tokens, 1));
    const int64_t need = (most + block_size_ - 1) / block_size_;
    MLKV_REQUIRE(need <= pool_->n_blocks(), "the request needs up to ", need, " KV blocks of ",
                 block_size_, " tokens (", most, " tokens) but the whole cache has ",
                 pool_->n_blocks(), " (raise --kv-budget)");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(std::move(r));
  }
  cv_.notify_one();
}

void Scheduler::release_blocks(Active& a) {
  if (pool_) {
    for (int32_t b : a.blocks) pool_->release(b);
    a.blocks.clear();
    cache_.set_block_table(a.seq, {});
  }
  cache_.release_seq(a.seq);
  a.seq = -1;
}

void Scheduler::finish(size_t i, const char* reason) {
  Active& a = active_[i];
  a.result.finish_reason = reason;
  release_blocks(a);
  if (a.req.on_done) a.req.on_done(a.result);
  active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
}

namespace {

// The log-probability of `token` under the logits row (x[token] - logsumexp, as score_tokens
// computes it) and the n_top most likely ids at that position. Throws mlkv::Error for a
// non-finite logit.
TokenLogprob logprob_of(const float* row, int n_vocab, int32_t token, int n_top,
                        std::vector<int32_t>* idx) {
  for (int v = 0; v < n_vocab; ++v) {
    MLKV_REQUIRE(std::isfinite(row[v]), "the model produced a non-finite logit (", row[v],
                 ") for token ", v);
  }
  const float lse = ops::logsumexp(row, n_vocab);
  TokenLogprob lp;
  lp.token = token;
  lp.logprob = row[token] - lse;
  if (n_top > 0) {
    const int k = std::min(n_top, n_vocab);
    idx->resize(static_cast<size_t>(n_vocab));
    std::iota(idx->begin(), idx->end(), 0);
    // Most likely first; equal logits by id, so the order is deterministic.
    std::partial_sort(idx->begin(), idx->begin() + k, idx->end(), [row](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    lp.top.reserve(static_cast<size_t>(k));
    for (int j = 0; j < k; ++j) {
      const int32_t v = (*idx)[static_cast<size_t>(j)];
      lp.top.emplace_back(v, row[v] - lse);
    }
  }
  return lp;
}

bool wants_prompt_logprobs(const Request& r) {
  return r.prompt_logprobs && r.logprobs >= 0;
}

}  // namespace

bool Scheduler::admit(Active& a) {
  const int seq = cache_.acquire_seq();
  if (seq < 0) return false;
  a.seq = seq;
  if (!pool_) return true;
  const int B = block_size_;
  const bool all_rows = a.result.tokens.empty() && wants_prompt_logprobs(a.req);
  // Reuse cached full blocks of the prefix, leaving at least one token to prefill (its logits
  // are the next token's); none when every prompt position's logits are wanted.
  const int max_match = all_rows ? 0 : (static_cast<int>(a.feed.size()) - 1) / B;
  const int matched = pool_->match_prefix(a.feed, max_match, &a.blocks);
  const int need = (static_cast<int>(a.feed.size()) + B - 1) / B - matched;
  if (pool_->n_available() < need) {
    release_blocks(a);
    return false;
  }
  for (int i = 0; i < need; ++i) a.blocks.push_back(pool_->allocate());
  cache_.set_block_table(seq, a.blocks);
  cache_.set_seq_len(seq, matched * B);
  prefix_tokens_reused_ += static_cast<int64_t>(matched) * B;
  return true;
}

void Scheduler::preempt(size_t i) {
  Active a = std::move(active_[i]);
  active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
  release_blocks(a);
  // Recomputed later: the prompt and every token generated so far (the last one not yet fed).
  a.feed = a.req.prompt;
  a.feed.insert(a.feed.end(), a.result.tokens.begin(), a.result.tokens.end());
  a.next = -1;
  ++preemptions_;
  // Resumed before anything new, oldest first.
  auto at = std::find_if(preempted_.begin(), preempted_.end(),
                         [&](const Active& p) { return p.order > a.order; });
  preempted_.insert(at, std::move(a));
}

bool Scheduler::step() {
  const ModelConfig& c = model_.config();
  // Preempted sequences first (their cache was given up to others), then new requests in order.
  while (!preempted_.empty()) {
    if (preempted_.front().req.cancel && preempted_.front().req.cancel->load()) {
      Active a = std::move(preempted_.front());
      preempted_.pop_front();
      a.result.finish_reason = "cancelled";
      if (a.req.on_done) a.req.on_done(a.result);
      continue;
    }
    if (!admit(preempted_.front())) break;
    active_.push_back(std::move(preempted_.front()));
    preempted_.pop_front();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!pending_.empty() && preempted_.empty()) {
      Request& front = pending_.front();
      const bool cancelled = front.cancel && front.cancel->load();
      if (cancelled || (front.max_new_tokens == 0 && !wants_prompt_logprobs(front))) {
        // Cancelled while waiting, or nothing to compute: done at once.
        Request r = std::move(front);
        pending_.pop_front();
        if (r.on_done) r.on_done({{}, "", cancelled ? "cancelled" : "length", "", {}, {}});
        continue;
      }
      Sampler sampler(front.sampling);
      Active a{std::move(front), -1, -1, std::move(sampler), {}, {}, {}, 0};
      a.feed = a.req.prompt;
      a.order = next_order_++;
      if (!admit(a)) {
        front = std::move(a.req);  // back where it was
        break;
      }
      pending_.pop_front();
      active_.push_back(std::move(a));
    }
  }
  for (size_t i = active_.size(); i-- > 0;) {
    if (active_[i].req.cancel && active_[i].req.cancel->load()) finish(i, "cancelled");
  }
  if (pool_) {
    // A block for every decoding sequence's next position; when none is left, the newest
    // sequence gives its blocks up (preempted, recomputed later), as many times as needed.
    std::sort(active_.begin(), active_.end(),
              [](const Active& x, const Active& y) { return x.order < y.order; });
    for (size_t i = 0; i < active_.size();) {
      Active& a = active_[i];
      if (a.next < 0 || cache_.seq_len(a.seq) < static_cast<int>(a.blocks.size()) * block_size_) {
        ++i;
        continue;
      }
      const int b = pool_->allocate();
      if (b >= 0) {
        a.blocks.push_back(b);
        cache_.set_block_table(a.seq, a.blocks);
        ++i;
        continue;
      }
      preempt(active_.size() - 1);  // the newest (possibly this one)
    }
  }
  if (active_.empty()) {
    publish_load();
    return false;
  }

  // Logits rows come out in batch order: one per sequence (its last token), or one per prompt
  // token for a prefill whose prompt log-probs were asked for. last_row_[i]: sequence i's last.
  batch_.clear();
  last_row_.resize(active_.size());
  size_t n_rows = 0;
  for (size_t i = 0; i < active_.size(); ++i) {
    const Active& a = active_[i];
    if (a.next < 0) {
      const auto& p = a.feed;
      const bool all = a.result.tokens.empty() && wants_prompt_logprobs(a.req);
      for (size_t j = static_cast<size_t>(cache_.seq_len(a.seq)); j < p.size(); ++j) {
        const bool want = all || j + 1 == p.size();
        batch_.add(p[j], a.seq, static_cast<int32_t>(j), want);
        n_rows += want ? 1 : 0;
      }
    } else {
      batch_.add(a.next, a.seq, cache_.seq_len(a.seq), true);
      ++n_rows;
    }
    last_row_[i] = n_rows - 1;
  }
  const size_t V = static_cast<size_t>(c.n_vocab);
  logits_.resize(n_rows * V);
  model_.forward(batch_, cache_, logits_.data());

  // Walk backwards so retiring keeps indices valid.
  for (size_t i = active_.size(); i-- > 0;) {
    Active& a = active_[i];
    const float* last = logits_.data() + last_row_[i] * V;
    int32_t tok;
    try {
      if (a.next < 0 && pool_) {
        // Its full blocks are written now: later requests with the same prefix reuse them.
        pool_->register_prefix(a.feed, a.blocks, static_cast<int>(a.feed.size()) / block_size_);
      }
      if (a.next < 0 && a.result.tokens.empty() && wants_prompt_logprobs(a.req)) {
        const auto& p = a.req.prompt;
        const float* first = last - (p.size() - 1) * V;
        for (size_t j = 0; j + 1 < p.size(); ++j) {
          a.result.prompt_logprobs.push_back(
              logprob_of(first + j * V, c.n_vocab, p[j + 1], a.req.logprobs, &top_idx_));
        }
        if (a.req.max_new_tokens == 0) {  // prefilled for its log-probs only
          finish(i, "length");
          continue;
        }
      }
      tok = a.sampler.sample(last, c.n_vocab);
      if (a.req.logprobs >= 0) {
        a.result.logprobs.push_back(logprob_of(last, c.n_vocab, tok, a.req.logprobs, &top_idx_));
        if (a.req.on_logprob) a.req.on_logprob(a.result.logprobs.back());
      }
    } catch (const Error& e) {  // this sequence cannot go on; the others can
      a.result.error = e.what();
      finish(i, "error");
      continue;
    }
    a.result.tokens.push_back(tok);
    a.next = tok;
    if (a.req.on_token) a.req.on_token(tok);
    if (a.req.stop_at_eos && c.is_eos(tok)) {
      finish(i, "eos");
    } else if (static_cast<int>(a.result.tokens.size()) >= a.req.max_new_tokens) {
      finish(i, "length");
    } else if (cache_.seq_len(a.seq) >= n_ctx_) {
      finish(i, "context");
    }
  }
  publish_load();
  return true;
}

void Scheduler::publish_load() {
  SchedulerLoad l;
  l.running = static_cast<int>(active_.size());
  for (const Active& a : active_) l.cache_tokens += cache_.seq_len(a.seq);
  if (pool_) {
    l.blocks_total = pool_->n_blocks();
    l.blocks_used = pool_->n_used();
    l.blocks_cached = pool_->n_cached();
    l.cache_tokens_capacity = static_cast<int64_t>(pool_->n_blocks()) * block_size_;
  } else {
    l.cache_tokens_capacity = static_cast<int64_t>(n_parallel_) * n_ctx_;
  }
  l.preemptions = preemptions_;
  l.prefix_tokens_reused = prefix_tokens_reused_;
  l.queued = static_cast<int>(preempted_.size());  // load() adds the requests waiting now
  std::lock_guard<std::mutex> lock(mu_);
  load_ = l;
}

void Scheduler::run_until_idle() {
  while (true) {
    if (step()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.empty() && preempted_.empty()) return;
  }
}

void Scheduler::serve_forever() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || !pending_.empty() || load_.running > 0 || !preempted_.empty();
      });
      if (stopping_) break;
    }
    step();
  }
  // Cancel whatever is left so waiting clients are answered.
  for (size_t i = active_.size(); i-- > 0;) finish(i, "cancelled");
  for (Active& a : preempted_) {
    a.result.finish_reason = "cancelled";
    if (a.req.on_done) a.req.on_done(a.result);
  }
  preempted_.clear();
  std::deque<Request> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(pending_);
  }
  for (auto& r : left) {
    if (r.on_done) r.on_done({{}, "", "cancelled", "", {}, {}});
  }
}

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

SchedulerLoad Scheduler::load() {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerLoad l = load_;
  l.queued += static_cast<int>(pending_.size());
  return l;
}

}  // namespace mlkv
