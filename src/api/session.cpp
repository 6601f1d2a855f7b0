// mlkv::Session (include/mlkv/session.h): the runtime Scheduler behind the public request type.
#include "mlkv/session.h"

#include <utility>

#include "api/engine_impl.h"
#include "core/check.h"
#include "model/layer_spec.h"
#include "runtime/options.h"
#include "runtime/scheduler.h"

namespace mlkv {

struct Session::Impl {
  Impl(Model& model, int n_parallel, int n_ctx, KvCacheType elem, int block_size, int n_blocks)
      : sched(model, n_parallel, n_ctx, elem, block_size, n_blocks) {}
  Scheduler sched;
};

Session::Session(Engine& engine, const SessionOptions& opt) {
  Model& model = engine.impl_->model;
  const KvCacheType elem = parse_cache_type(opt.cache_type, "cache_type");
  MLKV_REQUIRE(opt.n_parallel > 0, "n_parallel must be positive (got ", opt.n_parallel, ")");
  MLKV_REQUIRE(opt.n_ctx >= 0, "n_ctx must not be negative (got ", opt.n_ctx, ")");
  const int n_ctx = opt.n_ctx > 0 ? opt.n_ctx : model.config().n_ctx;
  MLKV_REQUIRE(opt.block_size >= 0, "block_size must not be negative (got ", opt.block_size, ")");
  MLKV_REQUIRE(opt.kv_budget_bytes >= 0, "kv_budget_bytes must not be negative (got ",
               opt.kv_budget_bytes, ")");
  int n_blocks = 0;
  if (opt.block_size > 0 && opt.kv_budget_bytes > 0) {
    const int64_t per_block =
        static_cast<int64_t>(opt.block_size) * kv_layout(model.config()).bytes_per_token(elem);
    const int64_t nb = opt.kv_budget_bytes / per_block;
    MLKV_REQUIRE(nb >= 1, "a KV budget of ", opt.kv_budget_bytes, " bytes holds no block of ",
                 opt.block_size, " tokens (", per_block, " bytes each)");
    MLKV_REQUIRE(nb <= (int64_t{1} << 30), "a KV budget of ", opt.kv_budget_bytes,
                 " bytes is too large");
    n_blocks = static_cast<int>(nb);
  }
  impl_ = std::make_unique<Impl>(model, opt.n_parallel, n_ctx, elem, opt.block_size, n_blocks);
}

Session::~Session() = default;

void Session::submit(Request r) {
  impl_->sched.submit(std::move(r));
}

bool Session::step() {
  return impl_->sched.step();
}

void Session::run_until_idle() {
  impl_->sched.run_until_idle();
}

void Session::serve_forever() {
  impl_->sched.serve_forever();
}

void Session::stop() {
  impl_->sched.stop();
}

int Session::n_ctx() const {
  return impl_->sched.n_ctx();
}

int Session::n_parallel() const {
  return impl_->sched.n_parallel();
}

int64_t Session::cache_bytes() const {
  return impl_->sched.cache_bytes();
}

SessionLoad Session::load() const {
  SessionLoad l;
  const SchedulerLoad s = impl_->sched.load();
  l.queued = s.queued;
  l.running = s.running;
  l.cache_tokens_used = s.cache_tokens;
  l.cache_tokens_capacity = s.cache_tokens_capacity;
  l.kv_blocks_total = s.blocks_total;
  l.kv_blocks_used = s.blocks_used;
  l.kv_blocks_cached = s.blocks_cached;
  l.preemptions = s.preemptions;
  l.prefix_tokens_reused = s.prefix_tokens_reused;
  return l;
}

}  // namespace mlkv
