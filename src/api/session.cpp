// mlkv::Session (include/mlkv/session.h): the runtime Scheduler behind the public request type.
#include "mlkv/session.h"

#include <utility>

#include "api/engine_impl.h"
#include "core/check.h"
#include "runtime/options.h"
#include "runtime/scheduler.h"

namespace mlkv {

struct Session::Impl {
  Impl(Model& model, int n_parallel, int n_ctx, KvCacheType elem)
      : sched(model, n_parallel, n_ctx, elem) {}
  Scheduler sched;
};

Session::Session(Engine& engine, const SessionOptions& opt) {
  Model& model = engine.impl_->model;
  const KvCacheType elem = parse_cache_type(opt.cache_type, "cache_type");
  MLKV_REQUIRE(opt.n_parallel > 0, "n_parallel must be positive (got ", opt.n_parallel, ")");
  MLKV_REQUIRE(opt.n_ctx >= 0, "n_ctx must not be negative (got ", opt.n_ctx, ")");
  const int n_ctx = opt.n_ctx > 0 ? opt.n_ctx : model.config().n_ctx;
  impl_ = std::make_unique<Impl>(model, opt.n_parallel, n_ctx, elem);
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
  impl_->sched.load(&l.queued, &l.running, &l.cache_tokens_used);
  l.cache_tokens_capacity = static_cast<int64_t>(impl_->sched.n_parallel()) * impl_->sched.n_ctx();
  return l;
}

}  // namespace mlkv
