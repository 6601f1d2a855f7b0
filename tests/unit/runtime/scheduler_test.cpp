// The continuous-batching scheduler (runtime/scheduler.h) and generate() on it: results do not
// depend on how many sequences decode together, finished sequences free their slot for waiting
// requests, cancellation stops a sequence at the next step, and impossible requests or contexts
// are errors when they are made, not when they run.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>

#include "core/check.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"
#include "test_util.h"

namespace mlkv {
namespace {

using testing::make_model;
using testing::random_tokens;
using testing::tiny_config;

TEST(Scheduler, ResultsDoNotDependOnParallelism) {
  Model m = make_model(tiny_config(Family::kLlama, 3, 32, 4, 2, {0, 0, 2}, KvShareRope::kPre), 4);
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 5; ++i) {
    GenerateRequest r;
    r.prompt = random_tokens(3 + i, m.config().n_vocab, 20 + i);
    r.max_new_tokens = 6 + i;
    r.sampling.temperature = i % 2 ? 0.8f : 0.0f;
    r.sampling.seed = 7 + i;
    reqs.push_back(r);
  }
  GenerateOptions one, many;
  one.n_parallel = 1;
  many.n_parallel = 4;  // fewer slots than requests: slots are reused
  one.stop_at_eos = many.stop_at_eos = false;
  const auto a = generate(m, reqs, one), b = generate(m, reqs, many);
  ASSERT_EQ(a.size(), reqs.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens) << i;
    EXPECT_EQ(a[i].tokens.size(), static_cast<size_t>(reqs[i].max_new_tokens)) << i;
    EXPECT_EQ(a[i].finish_reason, "length");
  }
}

TEST(Scheduler, CancelFreesTheSlotAndErrorsComeEarly) {
  Model m = make_model(tiny_config(Family::kGptNeoX, 2, 32, 4, 4, {}, KvShareRope::kPost), 5);
  Scheduler s(m, 1, 64);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  Generation first, second;
  Request r;
  r.prompt = {1, 2, 3};
  r.max_new_tokens = 50;
  r.stop_at_eos = false;
  r.cancel = cancel;
  int seen = 0;
  r.on_token = [&](int32_t) {
    if (++seen == 2) cancel->store(true);  // stops at the next step
  };
  r.on_done = [&](const Generation& g) { first = g; };
  s.submit(r);
  Request r2;
  r2.prompt = {4, 5};
  r2.max_new_tokens = 3;
  r2.stop_at_eos = false;
  r2.on_done = [&](const Generation& g) { second = g; };
  s.submit(r2);
  s.run_until_idle();
  EXPECT_EQ(first.finish_reason, "cancelled");
  EXPECT_LE(first.tokens.size(), 3u);
  EXPECT_EQ(second.finish_reason, "length");  // got the slot once the first was cancelled
  EXPECT_EQ(second.tokens.size(), 3u);

  Request bad;
  EXPECT_THROW(s.submit(bad), Error);  // empty prompt
  bad.prompt = {m.config().n_vocab};
  EXPECT_THROW(s.submit(bad), Error);  // id outside the vocabulary
  bad.prompt = std::vector<int32_t>(65, 1);
  EXPECT_THROW(s.submit(bad), Error);  // longer than the context
  // A context beyond the model's positions is refused when the scheduler is made.
  EXPECT_THROW(Scheduler(m, 1, m.config().n_ctx + 1), Error);
  EXPECT_THROW(Scheduler(m, 1, 0), Error);
}

}  // namespace
}  // namespace mlkv
