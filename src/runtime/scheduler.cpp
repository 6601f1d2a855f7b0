#include "runtime/scheduler.h"

#include "core/check.h"

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

Scheduler::Scheduler(Model& model, int n_parallel, int n_ctx, KvCacheType cache_elem)
    : model_(model), n_parallel_(n_parallel), n_ctx_(checked_ctx(model.config(), n_ctx)),
      cache_(model.new_cache(n_parallel, n_ctx_, cache_elem)) {}

void Scheduler::submit(Request r) {
  const ModelConfig& c = model_.config();
  MLKV_REQUIRE(!r.prompt.empty(), "the prompt is empty");
  MLKV_REQUIRE(r.max_new_tokens >= 0, "the token budget must not be negative");
  MLKV_REQUIRE(static_cast<int>(r.prompt.size()) <= n_ctx_, "context overflow: the prompt has ",
               r.prompt.size(), " tokens but the context holds ", n_ctx_);
  for (int32_t t : r.prompt) {
    MLKV_REQUIRE(t >= 0 && t < c.n_vocab, "token id ", t, " is outside the vocabulary (", c.n_vocab, " ids)");
  }
  Sampler check(r.sampling);  // validates the sampling parameters now, not on the engine thread
  (void)check;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(std::move(r));
  }
  cv_.notify_one();
}

void Scheduler::finish(size_t i, const char* reason) {
  Active& a = active_[i];
  a.result.finish_reason = reason;
  cache_.release_seq(a.seq);
  if (a.req.on_done) a.req.on_done(a.result);
  active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
}

bool Scheduler::step() {
  const ModelConfig& c = model_.config();
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!pending_.empty()) {
      if (pending_.front().max_new_tokens == 0) {  // nothing to generate: done at once
        Request r = std::move(pending_.front());
        pending_.pop_front();
        if (r.on_done) r.on_done({{}, "", "length", ""});
        continue;
      }
      const int seq = cache_.acquire_seq();
      if (seq < 0) break;
      Request r = std::move(pending_.front());
      pending_.pop_front();
      Sampler sampler(r.sampling);
      active_.push_back({std::move(r), seq, -1, std::move(sampler), {}});
    }
    running_ = static_cast<int>(active_.size());
  }
  for (size_t i = active_.size(); i-- > 0;) {
    if (active_[i].req.cancel && active_[i].req.cancel->load()) finish(i, "cancelled");
  }
  if (active_.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = 0;
    return false;
  }

  batch_.clear();
  for (const Active& a : active_) {
    if (a.next < 0) {
      const auto& p = a.req.prompt;
      for (size_t i = 0; i < p.size(); ++i) batch_.add(p[i], a.seq, static_cast<int32_t>(i), i + 1 == p.size());
    } else {
      batch_.add(a.next, a.seq, cache_.seq_len(a.seq), true);
    }
  }
  logits_.resize(active_.size() * static_cast<size_t>(c.n_vocab));
  model_.forward(batch_, cache_, logits_.data());

  // One logits row per active sequence, in order; walk backwards so retiring keeps indices valid.
  for (size_t i = active_.size(); i-- > 0;) {
    Active& a = active_[i];
    int32_t tok;
    try {
      tok = a.sampler.sample(logits_.data() + i * static_cast<size_t>(c.n_vocab), c.n_vocab);
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
  std::lock_guard<std::mutex> lock(mu_);
  running_ = static_cast<int>(active_.size());
  return true;
}

void Scheduler::run_until_idle() {
  while (true) {
    if (step()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.empty()) return;
  }
}

void Scheduler::serve_forever() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !pending_.empty() || running_ > 0; });
      if (stopping_) break;
    }
    step();
  }
  // Cancel whatever is left so waiting clients are answered.
  for (size_t i = active_.size(); i-- > 0;) finish(i, "cancelled");
  std::deque<Request> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(pending_);
  }
  for (auto& r : left) {
    if (r.on_done) r.on_done({{}, "", "cancelled", ""});
  }
}

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

void Scheduler::load(int* queued, int* running) {
  std::lock_guard<std::mutex> lock(mu_);
  *queued = static_cast<int>(pending_.size());
  *running = running_;
}

}  // namespace mlkv
