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

namespace mlkv {
namespace {

// Runs every request through a scheduler to the end; results in request order.
std::vector<Generation> run_all(Scheduler& s, const std::vector<Request>& reqs) {
  std::vector<Generation> out(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request r = reqs[i];
    r.on_done = [&out, i](const Generation& g) { out[i] = g; };
    s.submit(std::move(r));
  }
  s.run_until_idle();
  return out;
}

std::vector<Request> mixed_requests(const ModelConfig& c, int n, int shared_prefix) {
  std::vector<Request> reqs;
  const auto prefix = testing::random_tokens(shared_prefix, c.n_vocab, 99);
  for (int i = 0; i < n; ++i) {
    Request r;
    r.prompt = prefix;
    const auto own = testing::random_tokens(1 + (i * 7) % 23, c.n_vocab, 40 + i);
    r.prompt.insert(r.prompt.end(), own.begin(), own.end());
    r.max_new_tokens = 3 + (i * 5) % 17;
    r.stop_at_eos = false;
    r.sampling.temperature = i % 3 == 0 ? 0.0f : 0.9f;
    r.sampling.seed = 100 + i;
    reqs.push_back(r);
  }
  return reqs;
}

// Paged blocks of 4 tokens, a pool too small for every sequence at once (so sequences are
// preempted and recomputed), shared prompt prefixes (so blocks are reused): every generation
// equals the one-sequence-at-a-time reservation's (greedy and seeded sampling; recomputation
// prefills what was decoded, equal within f32 rounding, which this model's logits do not tip).
TEST(Scheduler, PagedWithPreemptionAndPrefixReuseGivesTheSameTokens) {
  Model m = make_model(tiny_config(Family::kLlama, 3, 32, 4, 2, {0, 0, 2}, KvShareRope::kPre), 4);
  const auto reqs = mixed_requests(m.config(), 12, 9);
  Scheduler ref(m, 1, 64);
  const auto want = run_all(ref, reqs);
  Scheduler paged(m, 8, 64, {}, /*block_size=*/4, /*n_blocks=*/24);
  const auto got = run_all(paged, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << i;
    EXPECT_EQ(got[i].finish_reason, "length") << i;
  }
  const SchedulerLoad l = paged.load();
  EXPECT_GT(l.preemptions, 0) << "the pool was meant to run out";
  EXPECT_GE(l.prefix_tokens_reused, 8) << "the shared 9-token prefix holds two full blocks";
  EXPECT_EQ(l.blocks_used, 0) << "every block released at the end";
  EXPECT_EQ(l.running, 0);
}

// The prefix cache: a second request with the same 40-token prompt prefills only its last
// block's worth, and its prompt log-probs (none reused: echo needs every position) and tokens
// equal the first's.
TEST(Scheduler, PrefixCacheSkipsTheCachedPrefill) {
  Model m = make_model(tiny_config(Family::kGptNeoX, 2, 32, 4, 4, {}, KvShareRope::kPost), 5);
  Scheduler s(m, 2, 64, {}, 8, 16);
  Request r;
  r.prompt = testing::random_tokens(40, m.config().n_vocab, 3);
  r.max_new_tokens = 5;
  r.stop_at_eos = false;
  const auto a = run_all(s, {r});
  EXPECT_EQ(s.load().prefix_tokens_reused, 0);
  const auto b = run_all(s, {r});
  EXPECT_EQ(s.load().prefix_tokens_reused, 32) << "four of five blocks (one token must be fed)";
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  Request e = r;
  e.logprobs = 2;
  e.prompt_logprobs = true;
  const auto c = run_all(s, {e});
  EXPECT_EQ(s.load().prefix_tokens_reused, 32) << "echo prefills the whole prompt";
  EXPECT_EQ(c[0].tokens, a[0].tokens);
  ASSERT_EQ(c[0].prompt_logprobs.size(), r.prompt.size() - 1);
  // The prompt log-probs are the model's scores of the prompt.
  const auto want = score_tokens(m, r.prompt, false);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(c[0].prompt_logprobs[i].logprob, want[i], 1e-5) << i;
    EXPECT_EQ(c[0].prompt_logprobs[i].token, r.prompt[i + 1]);
    ASSERT_EQ(c[0].prompt_logprobs[i].top.size(), 2u);
    EXPECT_GE(c[0].prompt_logprobs[i].top[0].second, c[0].prompt_logprobs[i].top[1].second);
  }
  // A greedy token is the most likely one.
  ASSERT_EQ(c[0].logprobs.size(), 5u);
  for (const auto& lp : c[0].logprobs) EXPECT_EQ(lp.top[0].first, lp.token);
}

// A request that could never fit the pool is refused when it is made; max_new_tokens 0 with
// prompt log-probs still prefills.
TEST(Scheduler, PagedRefusesWhatCanNeverFit) {
  Model m = make_model(tiny_config(Family::kLlama, 2, 32, 4, 4, {}, KvShareRope::kPost), 6);
  Scheduler s(m, 4, 64, {}, 4, 5);  // 20 tokens in all
  Request r;
  r.prompt = testing::random_tokens(12, m.config().n_vocab, 1);
  r.max_new_tokens = 10;
  EXPECT_THROW(s.submit(r), Error);
  r.max_new_tokens = 0;
  r.logprobs = 0;
  r.prompt_logprobs = true;
  const auto g = run_all(s, {r});
  EXPECT_EQ(g[0].finish_reason, "length");
  EXPECT_TRUE(g[0].tokens.empty());
  EXPECT_EQ(g[0].prompt_logprobs.size(), 11u);
  EXPECT_THROW(Scheduler(m, 1, 64, {}, -1), Error);
}

}  // namespace
}  // namespace mlkv
