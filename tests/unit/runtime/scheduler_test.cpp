// The continuous-batching scheduler (runtime/scheduler.h) and generate() on it: results do not
// depend on how many sequences decode together, finished sequences free their slot for waiting
// requests, cancellation stops a sequence at the next step, and impossible requests or contexts
// are errors when they are made, not when they run.
#include <gtest/gtest.h>

#include <algorithm>
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

// A model with several EOS ids (Llama 3 lists three): whichever of them comes first ends the
// sequence, with finish reason "eos" and that id as the last token; none stops without
// stop_at_eos.
TEST(Scheduler, AnyEosIdStops) {
  ModelConfig c = tiny_config(Family::kLlama, 2, 32, 4, 4, {}, KvShareRope::kPost);
  GenerateRequest r;
  r.prompt = {5, 6};
  r.max_new_tokens = 12;
  GenerateOptions free_run;
  free_run.stop_at_eos = false;
  Model plain = make_model(c, 11);
  const std::vector<int32_t> seq = generate(plain, {r}, free_run)[0].tokens;
  ASSERT_EQ(seq.size(), 12u);
  // The second id of the list is the 4th greedy token; the first never comes (or comes later).
  const int late = seq[3];
  int never = 0;
  while (std::find(seq.begin(), seq.end(), never) != seq.end()) ++never;
  c.eos_token_ids = {never, late};
  Model m = make_model(c, 11);  // same weights, same greedy tokens
  const size_t stop = static_cast<size_t>(std::find(seq.begin(), seq.end(), late) - seq.begin());
  for (int parallel : {1, 3}) {
    GenerateOptions opt;
    opt.n_parallel = parallel;
    const auto out = generate(m, {r, r}, opt);
    for (const auto& g : out) {
      EXPECT_EQ(g.finish_reason, "eos");
      EXPECT_EQ(g.tokens, std::vector<int32_t>(seq.begin(), seq.begin() + static_cast<long>(stop) + 1));
    }
  }
  EXPECT_EQ(generate(m, {r}, free_run)[0].tokens, seq);
}

}  // namespace
}  // namespace mlkv
