// Log-likelihood scoring (src/eval/loglik.h) against the engine's plain scorer: shared-context
// groups, batching and truncation give the log-probs of score_tokens; the greedy (LAMBADA) rule;
// the KV cache fork; sliding-window perplexity equals exp of the mean score_tokens log-probs over
// the same windows; lm-eval's context/continuation split on a mock and a real tokenizer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include "core/check.h"
#include "eval/loglik.h"
#include "eval/metrics.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace mlkv {
namespace {

using testing::random_weights;
using testing::tiny_config;

std::vector<int32_t> tokens(int n, int vocab, std::mt19937& rng) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

Model make_model(Family fam, int G, std::vector<int> kv_source, int n_ctx = 64, uint64_t seed = 5) {
  ModelConfig c = tiny_config(fam, 4, 32, 4, G, std::move(kv_source), KvShareRope::kPost);
  c.n_ctx = n_ctx;
  LoadedModel lm;
  lm.config = c;
  lm.weights = random_weights(c, seed);
  return Model(std::move(lm));
}

// Sum and per-token log-probs of cont given ctx, from one plain score_tokens pass.
std::vector<float> reference(Model& m, const std::vector<int32_t>& ctx,
                             const std::vector<int32_t>& cont) {
  std::vector<int32_t> all = ctx;
  all.insert(all.end(), cont.begin(), cont.end());
  const std::vector<float> lp = score_tokens(m, all, false);
  return std::vector<float>(lp.end() - static_cast<std::ptrdiff_t>(cont.size()), lp.end());
}

// Groups of requests sharing a context (answer choices) mixed with singletons, in every batch
// size, with and without the shared prefill: the same log-probs as scoring each pair alone.
TEST(Loglik, MatchesPlainScoring) {
  for (Family fam : {Family::kGptNeoX, Family::kLlama}) {
    Model m = make_model(fam, 2, {0, 0, 2, 2});
    std::mt19937 rng(17);
    std::vector<LoglikRequest> reqs;
    for (int item = 0; item < 9; ++item) {
      const auto ctx = tokens(1 + static_cast<int>(rng() % 30), m.config().n_vocab, rng);
      const int n_choices = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < n_choices; ++k)
        reqs.push_back({ctx, tokens(1 + static_cast<int>(rng() % 12), m.config().n_vocab, rng)});
    }
    std::vector<std::vector<float>> want;
    for (const auto& r : reqs) want.push_back(reference(m, r.context, r.continuation));
    for (int batch : {1, 3, 16}) {
      for (bool share : {true, false}) {
        LoglikOptions opt;
        opt.batch = batch;
        opt.share_context = share;
        opt.keep_token_logprobs = true;
        int64_t last_progress = 0;
        opt.on_progress = [&](int64_t done) {
          EXPECT_GT(done, last_progress);
          last_progress = done;
        };
        const auto got = score_loglik(m, reqs, opt);
        EXPECT_EQ(last_progress, static_cast<int64_t>(reqs.size()));
        ASSERT_EQ(got.size(), reqs.size());
        for (size_t i = 0; i < reqs.size(); ++i) {
          ASSERT_EQ(got[i].token_logprobs.size(), want[i].size());
          double sum = 0;
          for (size_t j = 0; j < want[i].size(); ++j) {
            EXPECT_NEAR(got[i].token_logprobs[j], want[i][j], 2e-5)
                << family_name(fam) << " batch " << batch;
            sum += want[i][j];
          }
          EXPECT_NEAR(got[i].logprob, sum, 1e-4);
          EXPECT_EQ(got[i].n_tokens, static_cast<int>(want[i].size()));
          EXPECT_EQ(got[i].truncated_tokens, 0);
        }
      }
    }
  }
}

// LAMBADA's accuracy rule: the target counts only if every one of its tokens is the argmax.
TEST(Loglik, GreedyRule) {
  Model m = make_model(Family::kLlama, 4, {});
  std::mt19937 rng(3);
  const auto ctx = tokens(12, m.config().n_vocab, rng);
  // The greedy continuation, one argmax at a time.
  std::vector<int32_t> greedy;
  std::vector<int32_t> seq = ctx;
  std::vector<float> logits(static_cast<size_t>(m.config().n_vocab));
  for (int step = 0; step < 4; ++step) {
    KVCache cache = m.new_cache(1, 64);
    cache.acquire_seq();
    Batch b;
    for (size_t i = 0; i < seq.size(); ++i)
      b.add(seq[i], 0, static_cast<int32_t>(i), i + 1 == seq.size());
    m.forward(b, cache, logits.data());
    const int32_t best =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    greedy.push_back(best);
    seq.push_back(best);
  }
  std::vector<int32_t> wrong_last = greedy;
  wrong_last.back() = (wrong_last.back() + 1) % m.config().n_vocab;
  std::vector<int32_t> wrong_first = greedy;
  wrong_first.front() = (wrong_first.front() + 7) % m.config().n_vocab;
  const auto res =
      score_loglik(m, {{ctx, greedy}, {ctx, wrong_last}, {ctx, wrong_first}, {ctx, {greedy[0]}}});
  EXPECT_TRUE(res[0].greedy);
  EXPECT_FALSE(res[1].greedy);
  EXPECT_FALSE(res[2].greedy);
  EXPECT_TRUE(res[3].greedy);
  EXPECT_GT(res[0].logprob, res[1].logprob);
}

// Too long: (ctx + cont)[-(max_ctx + 1):][:-1] is fed, as lm-eval does; a continuation longer
// than the context on its own has its first tokens read unscored.
TEST(Loglik, LeftTruncation) {
  Model m = make_model(Family::kGptNeoX, 4, {}, 64);
  std::mt19937 rng(8);
  const auto ctx = tokens(20, m.config().n_vocab, rng);
  const auto cont = tokens(5, m.config().n_vocab, rng);
  LoglikOptions opt;
  opt.max_ctx = 16;
  opt.keep_token_logprobs = true;
  auto res = score_loglik(m, {{ctx, cont}}, opt);
  std::vector<int32_t> all = ctx;
  all.insert(all.end(), cont.begin(), cont.end());
  std::vector<int32_t> kept(all.end() - 17, all.end());
  auto lp = score_tokens(m, kept, false);
  for (size_t j = 0; j < 5; ++j) EXPECT_NEAR(res[0].token_logprobs[j], lp[lp.size() - 5 + j], 2e-5);

  const auto short_ctx = tokens(3, m.config().n_vocab, rng);
  const auto long_cont = tokens(20, m.config().n_vocab, rng);
  res = score_loglik(m, {{short_ctx, long_cont}}, opt);
  EXPECT_EQ(res[0].truncated_tokens, 4);
  EXPECT_EQ(res[0].n_tokens, 16);
  lp = score_tokens(m, std::vector<int32_t>(long_cont.begin() + 3, long_cont.end()), false);
  ASSERT_EQ(lp.size(), 16u);
  for (size_t j = 0; j < 16; ++j) EXPECT_NEAR(res[0].token_logprobs[j], lp[j], 2e-5);

  EXPECT_THROW(score_loglik(m, {{{}, cont}}), Error);
  EXPECT_THROW(score_loglik(m, {{ctx, {}}}), Error);
  EXPECT_THROW(score_loglik(m, {{ctx, {m.config().n_vocab}}}), Error);
}

// A forked sequence continues exactly like the original (every sharing scheme, f32 and f16).
TEST(KvCopySeq, ForkContinuesLikeOriginal) {
  for (const auto& src : std::vector<std::vector<int>>{{}, {0, 0, 2, 2}, {0, 0, 0, 0}}) {
    for (DType elem : {DType::kF32, DType::kF16}) {
      Model m = make_model(Family::kGptNeoX, 2, src);
      std::mt19937 rng(4);
      const auto prefix = tokens(10, m.config().n_vocab, rng);
      const auto next = tokens(3, m.config().n_vocab, rng);
      const int V = m.config().n_vocab;
      KVCache cache = m.new_cache(3, 32, elem);
      Batch b;
      for (int i = 0; i < 10; ++i) b.add(prefix[static_cast<size_t>(i)], 0, i, false);
      m.forward(b, cache, nullptr);
      cache.copy_seq(0, 2, 7);  // fork the first 7 tokens into slot 2
      EXPECT_EQ(cache.seq_len(2), 7);
      // Slot 1: the same 10 tokens computed again by the same pass, then truncated to 7 in place.
      b.clear();
      for (int i = 0; i < 10; ++i) b.add(prefix[static_cast<size_t>(i)], 1, i, false);
      m.forward(b, cache, nullptr);
      cache.copy_seq(1, 1, 7);
      EXPECT_EQ(cache.seq_len(1), 7);
      std::vector<float> a(3 * static_cast<size_t>(V)), c(3 * static_cast<size_t>(V));
      b.clear();
      for (int i = 0; i < 3; ++i) b.add(next[static_cast<size_t>(i)], 1, 7 + i, true);
      m.forward(b, cache, a.data());
      b.clear();
      for (int i = 0; i < 3; ++i) b.add(next[static_cast<size_t>(i)], 2, 7 + i, true);
      m.forward(b, cache, c.data());
      // Same computation, same cache contents: bit for bit.
      for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], c[i]) << i;
    }
  }
}

// Perplexity over windows == exp(mean) of score_tokens log-probs over the same windows.
TEST(Perplexity, EqualsScoreOverTheSameWindows) {
  // score_tokens takes at most n_ctx tokens (window + 1 per window): a context above the windows.
  Model m = make_model(Family::kLlama, 2, {0, 0, 2, 2}, 40);
  std::mt19937 rng(99);
  const auto s = tokens(150, m.config().n_vocab, rng);
  for (auto [window, stride] :
       std::vector<std::pair<int, int>>{{32, 32}, {32, 12}, {20, 7}, {8, 1}}) {
    eval::PerplexityOptions opt;
    opt.window = window;
    opt.stride = stride;
    opt.batch = 4;
    const eval::PerplexityResult r = eval::stream_perplexity(m, s, opt, true);
    double nll = 0;
    int64_t n = 0;
    std::vector<float> per_token;
    for (const eval::Window& w :
         eval::make_windows(static_cast<int64_t>(s.size()), window, stride)) {
      const std::vector<int32_t> fed(s.begin() + w.begin, s.begin() + w.end);
      const std::vector<float> lp = score_tokens(m, fed, false);
      for (int64_t j = w.split - w.begin - 1; j < static_cast<int64_t>(lp.size()); ++j) {
        nll -= lp[static_cast<size_t>(j)];
        per_token.push_back(lp[static_cast<size_t>(j)]);
        ++n;
      }
    }
    EXPECT_EQ(n, 149);
    EXPECT_EQ(r.n_tokens, n);
    EXPECT_NEAR(r.nll, nll, 1e-3) << window << "/" << stride;
    EXPECT_NEAR(r.token_perplexity(), std::exp(nll / static_cast<double>(n)),
                1e-5 * r.token_perplexity());
    ASSERT_EQ(r.token_logprobs.size(), per_token.size());
    // Different batch shapes take different f32 paths (GEMM vs row attention, prefill splits):
    // a few ulps of the logits, relative to the log-prob's size.
    for (size_t i = 0; i < per_token.size(); ++i) {
      EXPECT_NEAR(r.token_logprobs[i], per_token[i], 1e-5 + 1e-5 * std::fabs(per_token[i]));
    }
  }
  eval::PerplexityOptions limited;
  limited.window = 32;
  limited.limit = 2;
  EXPECT_EQ(eval::stream_perplexity(m, s, limited).n_tokens, 32 + 32);
}

// A byte-level tokenizer with two merges, "ab" and " y", so splits at token boundaries can be
// crafted: lm-eval's _encode_pair behaviour shows up exactly.
class MockTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> out;
    if (add_bos) out.push_back(kBos);
    for (size_t i = 0; i < text.size(); ++i) {
      if (text.substr(i, 2) == "ab") {
        out.push_back(256);
        ++i;
      } else if (text.substr(i, 2) == " y") {
        out.push_back(257);
        ++i;
      } else {
        out.push_back(static_cast<unsigned char>(text[i]));
      }
    }
    return out;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s += token_bytes(id);
    return s;
  }
  std::string token_piece(int32_t id) const override { return token_bytes(id); }
  std::string token_bytes(int32_t id) const override {
    if (id == 256) return "ab";
    if (id == 257) return " y";
    if (id == kBos) return "";
    return std::string(1, static_cast<char>(id));
  }
  int32_t n_vocab() const override { return 259; }
  int32_t bos_id() const override { return kBos; }
  std::string kind() const override { return "mock"; }
  static constexpr int32_t kBos = 258;
};

std::vector<int32_t> bytes_of(std::string_view s) {
  std::vector<int32_t> v;
  for (char ch : s) v.push_back(static_cast<unsigned char>(ch));
  return v;
}

TEST(EncodePair, LmEvalSplitRules) {
  MockTokenizer tok;
  // The context's trailing space moves into the continuation, so " y" stays one token.
  auto [ctx, cont] = eval::encode_pair(tok, "Q: x\nA: ", "y", -1);
  EXPECT_EQ(ctx, bytes_of("Q: x\nA:"));
  EXPECT_EQ(cont, (std::vector<int32_t>{257}));
  // Several trailing whitespace characters move together.
  std::tie(ctx, cont) = eval::encode_pair(tok, "Q:\n\n", "z", -1);
  EXPECT_EQ(ctx, bytes_of("Q:"));
  EXPECT_EQ(cont, bytes_of("\n\nz"));
  // The usual case: a continuation that starts with its own space.
  std::tie(ctx, cont) = eval::encode_pair(tok, "A:", " y", -1);
  EXPECT_EQ(ctx, bytes_of("A:"));
  EXPECT_EQ(cont, (std::vector<int32_t>{257}));
  // Split at the context's token count of the whole encoding: "x a" + "b c" -> [x, ' ', ab, ' ', c]
  // with the context "x a" being 3 tokens, so the continuation starts after "ab".
  std::tie(ctx, cont) = eval::encode_pair(tok, "x a", "b c", -1);
  EXPECT_EQ(ctx, bytes_of("x a"));
  EXPECT_EQ(cont, bytes_of(" c"));
  // Empty context: the prefix token stands for it.
  std::tie(ctx, cont) = eval::encode_pair(tok, "", " y", 7);
  EXPECT_EQ(ctx, (std::vector<int32_t>{7}));
  EXPECT_EQ(cont, (std::vector<int32_t>{257}));
  EXPECT_THROW(eval::encode_pair(tok, "", "q", -1), Error);
  // add_bos puts BOS in front of the context only.
  std::tie(ctx, cont) = eval::encode_pair(tok, "A:", " y", -1, true);
  EXPECT_EQ(ctx, (std::vector<int32_t>{MockTokenizer::kBos, 'A', ':'}));
  EXPECT_EQ(cont, (std::vector<int32_t>{257}));
}

// The same rules with GPT-2's real BPE: the continuation's leading space joins its word.
TEST(EncodePair, Gpt2Tokenizer) {
  const std::string dir = std::string(MLKV_SHARED_DIR) + "/data/tokenizers/gpt2";
  if (!std::filesystem::exists(dir + "/encoder.json")) GTEST_SKIP() << "no " << dir;
  const auto tok = load_tokenizer(dir + "/encoder.json");
  const std::string c1 = "Question: Which is a gas?\nAnswer:";
  auto [ctx, cont] = eval::encode_pair(*tok, c1, " oxygen", -1);
  EXPECT_EQ(ctx, tok->encode(c1));
  EXPECT_EQ(cont, tok->encode(" oxygen"));
  // Trailing space on the context: same tokens as the space on the continuation.
  auto [ctx2, cont2] = eval::encode_pair(*tok, c1 + " ", "oxygen", -1);
  EXPECT_EQ(ctx2, ctx);
  EXPECT_EQ(cont2, cont);
  // The whole pair always re-encodes to context + continuation.
  std::vector<int32_t> all = ctx2;
  all.insert(all.end(), cont2.begin(), cont2.end());
  EXPECT_EQ(all, tok->encode(c1 + " oxygen"));
}

// run_task: acc / acc_norm / LAMBADA metrics are the rules of metrics.h applied to score_loglik
// results (checked against the scorer run by hand), and sharing the context changes nothing.
TEST(RunTask, MetricsFollowTheScores) {
  MockTokenizer tok;
  // The mock's ids reach 258: the model's vocabulary covers them.
  ModelConfig c = tiny_config(Family::kLlama, 4, 32, 4, 2, {0, 0, 2, 2}, KvShareRope::kPost, 259);
  LoadedModel lm;
  lm.config = c;
  lm.weights = random_weights(c, 12);
  Model model(std::move(lm));

  eval::Task task;
  task.name = "mini";
  task.tmpl = "qa";
  const char* questions[] = {
      "Question: a?\nAnswer:", "Question: bb?\nAnswer:", "Question: ccc?\nAnswer:"};
  for (int i = 0; i < 3; ++i) {
    eval::TaskDoc d;
    d.context = questions[i];
    d.choices = {"yes", "no way", "maybe so"};
    for (const auto& ch : d.choices) d.continuations.push_back(" " + ch);
    d.gold = i;
    task.docs.push_back(d);
  }
  eval::TaskOptions opt;
  opt.batch = 2;
  const eval::TaskResult r = eval::run_task(model, tok, task, opt);
  opt.share_context = false;
  const eval::TaskResult r2 = eval::run_task(model, tok, task, opt);
  EXPECT_EQ(r.predictions, r2.predictions);
  double acc = 0, acc_norm = 0;
  for (size_t i = 0; i < task.docs.size(); ++i) {
    std::vector<double> ll;
    std::vector<int64_t> chars;
    for (size_t k = 0; k < 3; ++k) {
      auto [ctx, cont] =
          eval::encode_pair(tok, task.docs[i].context, task.docs[i].continuations[k], -1);
      double s = 0;
      for (float v : reference(model, ctx, cont)) s += v;
      ll.push_back(s);
      chars.push_back(eval::utf8_length(task.docs[i].choices[k]));
    }
    const eval::ChoiceScores cs = eval::score_choices(ll, chars);
    EXPECT_EQ(r.predictions[i], cs.pred);
    acc += cs.pred == task.docs[i].gold;
    acc_norm += cs.pred_norm == task.docs[i].gold;
  }
  EXPECT_NEAR(r.find("acc")->value, acc / 3, 1e-12);
  EXPECT_NEAR(r.find("acc_norm")->value, acc_norm / 3, 1e-12);
  EXPECT_EQ(r.n_requests, 9);

  eval::Task lam;
  lam.name = "lam";
  lam.tmpl = "lambada";
  lam.kind = eval::TaskKind::kLambada;
  lam.docs.push_back({"the cat", {" sat"}, {"sat"}, 0});
  lam.docs.push_back({"a b", {" c"}, {"c"}, 0});
  const eval::TaskResult lr = eval::run_task(model, tok, lam, {});
  ASSERT_EQ(lr.target_loglik.size(), 2u);
  std::vector<double> ll;
  for (const auto& d : lam.docs) {
    auto [ctx, cont] = eval::encode_pair(tok, d.context, d.continuations[0], -1);
    double s = 0;
    for (float v : reference(model, ctx, cont)) s += v;
    ll.push_back(s);
  }
  EXPECT_NEAR(lr.target_loglik[0], ll[0], 1e-4);
  EXPECT_NEAR(lr.find("perplexity")->value, eval::perplexity(ll), 1e-3 * eval::perplexity(ll));
}

// The KL divergence of a cache format from a base format, against an independent computation: each
// window's logits from one plain forward pass per format (its own cache), KL(base || test) in double
// per target. Same format: exactly zero. q8_0 needs 32-value heads: a 2-head, 64-wide model.
TEST(Perplexity, KlDivergenceFromABaseCache) {
  for (auto [fam, cache] : std::vector<std::pair<Family, DType>>{
           {Family::kLlama, DType::kF16}, {Family::kGptNeoX, DType::kBF16},
           {Family::kLlama, DType::kQ8_0}, {Family::kGptNeoX, DType::kQ4_0}}) {
    ModelConfig c = tiny_config(fam, 3, 64, 2, 1, {0, 0, 2}, KvShareRope::kPost);
    c.n_ctx = 40;
    LoadedModel lm;
    lm.config = c;
    lm.weights = random_weights(c, 21);
    Model m(std::move(lm));
    std::mt19937 rng(7);
    const auto s = tokens(90, c.n_vocab, rng);
    const int window = 24, stride = 24;
    eval::PerplexityOptions opt;
    opt.window = window;
    opt.stride = stride;
    opt.batch = 2;
    opt.cache_type = cache;
    opt.kl_base = KvCacheType(DType::kF32);
    const eval::PerplexityResult r = eval::stream_perplexity(m, s, opt);
    ASSERT_TRUE(r.kl.has_value());

    // Independent: full logits of every window, once per format.
    const int V = c.n_vocab;
    double sum = 0, mx = 0, base_nll = 0, nll = 0;
    int64_t n = 0, same = 0;
    std::vector<double> all;
    for (const eval::Window& w : eval::make_windows(static_cast<int64_t>(s.size()), window, stride)) {
      const int len = static_cast<int>(w.end - w.begin) - 1;  // tokens fed
      std::vector<std::vector<float>> lg(2, std::vector<float>(static_cast<size_t>(len) * V));
      for (int f = 0; f < 2; ++f) {
        KVCache cache_f = m.new_cache(1, len, f == 0 ? KvCacheType(DType::kF32) : KvCacheType(cache));
        Batch b;
        for (int j = 0; j < len; ++j) b.add(s[static_cast<size_t>(w.begin + j)], 0, j, true);
        m.forward(b, cache_f, lg[static_cast<size_t>(f)].data());
      }
      for (int64_t t = w.split; t < w.end; ++t) {
        const size_t row = static_cast<size_t>(t - 1 - w.begin);
        const float* p = lg[0].data() + row * V;
        const float* q = lg[1].data() + row * V;
        double mp = -INFINITY, mq = -INFINITY;
        for (int v = 0; v < V; ++v) mp = std::max(mp, double{p[v]}), mq = std::max(mq, double{q[v]});
        double zp = 0, zq = 0;
        for (int v = 0; v < V; ++v) zp += std::exp(p[v] - mp), zq += std::exp(q[v] - mq);
        const double lzp = mp + std::log(zp), lzq = mq + std::log(zq);
        double kl = 0;
        for (int v = 0; v < V; ++v) {
          const double lp = p[v] - lzp, lq = q[v] - lzq;
          kl += std::exp(lp) * (lp - lq);
        }
        kl = std::max(0.0, kl);
        const int32_t target = s[static_cast<size_t>(t)];
        base_nll -= p[target] - lzp;
        nll -= q[target] - lzq;
        sum += kl;
        mx = std::max(mx, kl);
        all.push_back(kl);
        same += std::max_element(p, p + V) - p == std::max_element(q, q + V) - q;
        ++n;
      }
    }
    const char* name = kv_codec(cache).name;
    ASSERT_EQ(r.kl->n, n) << name;
    EXPECT_GT(sum, 0) << name << ": the format must change something";
    // Batched windows take other f32 paths than one window alone: a few ulps of the logits.
    EXPECT_NEAR(r.kl->sum / n, sum / n, 1e-6 + 1e-3 * sum / n) << name;
    EXPECT_NEAR(r.kl->max, mx, 1e-6 + 1e-3 * mx) << name;
    // Summed over every token: a batched window's K/V can round to the other neighbour in a
    // 16-bit or block format (measured with bf16 on the AVX-512 kernels: 0.008 of 633).
    EXPECT_NEAR(r.kl->base_nll, base_nll, 1e-3 + 1e-6 * std::abs(base_nll)) << name;
    EXPECT_NEAR(r.nll, nll, 1e-3 + 5e-5 * std::abs(nll)) << name;
    EXPECT_NEAR(static_cast<double>(r.kl->same_top), static_cast<double>(same), 1.0) << name;
    std::sort(all.begin(), all.end());
    EXPECT_NEAR(r.kl->p99, all[static_cast<size_t>(std::ceil(0.99 * n)) - 1], 1e-6 + 1e-3 * mx) << name;

    // The same format on both sides: nothing differs.
    opt.cache_type = KvCacheType(DType::kF32);
    const eval::PerplexityResult z = eval::stream_perplexity(m, s, opt);
    EXPECT_EQ(z.kl->max, 0.0);
    EXPECT_EQ(z.kl->same_top, z.kl->n);
    EXPECT_EQ(z.kl->base_nll, z.nll);
  }
}

}  // namespace
}  // namespace mlkv
