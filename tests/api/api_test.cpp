// The public API (include/mlkv) on the real tiny llama2.c model of the shared data (aidreams260K:
// 4 layers, 4 heads of 16, vocabulary 512, context 128) and its tokenizer: what ModelInfo
// reports, score vs logits vs cached scoring, greedy generation vs argmax of recomputed logits,
// seeds independent of batching, sessions vs Engine::generate, and mlkv::Error for bad devices,
// weights, cache types, tokenizers, token ids and prompts. This file includes only mlkv/ headers
// and links only mlkv_api; tests/unit/api_engine_test.cpp compares the API with the engine.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "mlkv/mlkv.h"

namespace {

const std::string kDir = std::string(MLKV_SHARED_DIR) + "/data/models/aidreams260K";
const std::string kModel = kDir + "/aidreams260K.bin";
const std::string kTok = kDir + "/tok512.bin";

bool have_data() {
  return std::filesystem::exists(kModel) && std::filesystem::exists(kTok);
}

mlkv::Engine load(mlkv::LoadOptions o = {}) {
  o.tokenizer = kTok;
  o.tokenizer_mode = mlkv::TokenizerMode::kRequired;
  return mlkv::Engine::load(kModel, o);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mlkv::Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define SKIP_WITHOUT_DATA() \
  if (!have_data()) GTEST_SKIP() << "shared data not found under " << kDir

TEST(PublicApi, ModelInfo) {
  SKIP_WITHOUT_DATA();
  const mlkv::Engine e = load();
  const mlkv::ModelInfo& i = e.info();
  EXPECT_EQ(i.family, "llama");
  EXPECT_EQ(i.n_layer, 4);
  EXPECT_EQ(i.n_embd, 64);
  EXPECT_EQ(i.n_head, 4);
  EXPECT_EQ(i.n_head_kv, 4);
  EXPECT_EQ(i.n_embd_head, 16);
  EXPECT_EQ(i.n_ff, 172);
  EXPECT_EQ(i.n_vocab, 512);
  EXPECT_EQ(i.n_ctx, 128);
  EXPECT_EQ(i.n_rot, 16);
  EXPECT_EQ(i.norm, "rmsnorm");
  EXPECT_EQ(i.mlp, "swiglu");
  EXPECT_FALSE(i.parallel_residual);
  EXPECT_TRUE(i.tied_embeddings);
  EXPECT_EQ(i.kv_source, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(i.owner_layers, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(i.n_kv_layers, 4);
  EXPECT_EQ(i.kv_share_rope, "post");
  EXPECT_EQ(i.bos_token_id, 1);
  EXPECT_EQ(i.eos_token_id, 2);
  EXPECT_EQ(i.eos_token_ids, (std::vector<int>{2}));
  EXPECT_EQ(i.n_params, 230976);
  EXPECT_EQ(i.scheme, "MHA");
  EXPECT_EQ(i.summary.rfind("llama L=4 E=64 H=4 G=4 M=4", 0), 0u) << i.summary;
  // 2 * m * g * d_head * element size.
  EXPECT_EQ(i.kv_bytes_per_token(), 2 * 4 * 4 * 16 * 4);
  EXPECT_EQ(i.kv_bytes_per_token("f16"), 2 * 4 * 4 * 16 * 2);
  EXPECT_EQ(i.mha_kv_bytes_per_token("f32"), 2048);
  EXPECT_DOUBLE_EQ(i.kv_reduction_vs_mha(), 1.0);
  EXPECT_EQ(i.kv_cache_bytes(100, 3, "f16"), 3 * 100 * 1024);
  EXPECT_EQ(e.kv_bytes(128, 2), 2 * 128 * 2048);

  const mlkv::ModelInfo r = mlkv::read_model_info(kModel);
  EXPECT_EQ(r.summary, i.summary);
  EXPECT_EQ(r.kv_source, i.kv_source);
  EXPECT_EQ(r.n_params, i.n_params);
}

TEST(PublicApi, Tokenizer) {
  SKIP_WITHOUT_DATA();
  const mlkv::Engine e = load();
  ASSERT_TRUE(e.has_tokenizer());
  const mlkv::Tokenizer& tok = e.tokenizer();
  EXPECT_EQ(tok.n_vocab(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  const std::string text = "once upon a time, a little dog ran.";
  const std::vector<int32_t> ids = tok.encode(text, true);
  ASSERT_GT(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok.decode(ids), text);
  // A streaming decoder gives the same text piece by piece.
  mlkv::StreamDecoder dec(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += dec.push(id);
  streamed += dec.flush();
  EXPECT_EQ(streamed, text);
  // The same tokenizer on its own.
  const std::unique_ptr<mlkv::Tokenizer> alone = mlkv::load_tokenizer(kTok);
  EXPECT_EQ(alone->encode(text, true), ids);
  EXPECT_NE(mlkv::try_load_tokenizer(kTok), nullptr);
  EXPECT_EQ(mlkv::try_load_tokenizer(kDir + "/no_such_tokenizer.bin"), nullptr);
  EXPECT_THROW(mlkv::load_tokenizer(kDir + "/no_such_tokenizer.bin"), mlkv::Error);
}

TEST(PublicApi, ScoreLogitsAndCachedScoring) {
  SKIP_WITHOUT_DATA();
  mlkv::Engine e = load();
  const std::vector<int32_t> ids = e.tokenizer().encode("once upon a time there was a cat.", true);
  const int n = static_cast<int>(ids.size());
  const std::vector<float> full = e.score(ids);
  ASSERT_EQ(static_cast<int>(full.size()), n - 1);
  const std::vector<float> cached = e.score(ids, true);
  const std::vector<float> cached16 = e.score(ids, true, "f16");
  ASSERT_EQ(cached.size(), full.size());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_LT(full[i], 0.0f);
    EXPECT_NEAR(cached[i], full[i], 1e-4) << i;
    EXPECT_NEAR(cached16[i], full[i], 2e-2) << i;  // f16 keys/values: ~1e-3 relative
  }
  // score[i] is the log-softmax of logits row i at the next token.
  const std::vector<float> lg = e.logits(ids);
  const int V = e.info().n_vocab;
  ASSERT_EQ(lg.size(), static_cast<size_t>(n) * static_cast<size_t>(V));
  for (int i = 0; i + 1 < n; ++i) {
    const float* row = lg.data() + static_cast<size_t>(i) * static_cast<size_t>(V);
    const double mx = *std::max_element(row, row + V);
    double z = 0;
    for (int k = 0; k < V; ++k) z += std::exp(static_cast<double>(row[k]) - mx);
    const double lp = row[ids[static_cast<size_t>(i) + 1]] - mx - std::log(z);
    EXPECT_NEAR(full[static_cast<size_t>(i)], lp, 1e-4) << i;
  }
}

int argmax_row(const std::vector<float>& logits, int row, int V) {
  const float* r = logits.data() + static_cast<size_t>(row) * static_cast<size_t>(V);
  return static_cast<int>(std::max_element(r, r + V) - r);
}

// Greedy decoding picks the argmax of the model's logits after the prompt and every generated
// token: recomputed here from scratch with Engine::logits.
TEST(PublicApi, GreedyGenerationIsArgmaxOfLogits) {
  SKIP_WITHOUT_DATA();
  mlkv::Engine e = load();
  const std::vector<int32_t> prompt = e.tokenizer().encode("once upon a time", true);
  mlkv::GenerationOptions o;
  o.max_new_tokens = 24;
  o.stop_at_eos = false;
  std::vector<int32_t> streamed;
  const std::vector<mlkv::Generation> g = e.generate({prompt}, o, [&](int p, int32_t t) {
    EXPECT_EQ(p, 0);
    streamed.push_back(t);
  });
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].finish_reason, "length");
  ASSERT_EQ(g[0].tokens.size(), 24u);
  EXPECT_EQ(streamed, g[0].tokens);
  EXPECT_EQ(g[0].text, e.tokenizer().decode(g[0].tokens));
  std::vector<int32_t> seq = prompt;
  for (int32_t t : g[0].tokens) {
    const std::vector<float> lg = e.logits(seq);
    EXPECT_EQ(argmax_row(lg, static_cast<int>(seq.size()) - 1, e.info().n_vocab), t);
    seq.push_back(t);
  }
  // Stopping at EOS ends with "eos" and the EOS token, or runs to the budget.
  o.stop_at_eos = true;
  o.max_new_tokens = 100;
  const mlkv::Generation s = e.generate({prompt}, o)[0];
  if (s.finish_reason == "eos") {
    EXPECT_EQ(s.tokens.back(), e.info().eos_token_id);
  } else {
    EXPECT_EQ(s.finish_reason, "length");
  }
  // A context shorter than prompt + budget ends with "context".
  o.n_ctx = static_cast<int>(prompt.size()) + 3;
  o.stop_at_eos = false;
  const mlkv::Generation c = e.generate({prompt}, o)[0];
  EXPECT_EQ(c.finish_reason, "context");
  EXPECT_EQ(c.tokens.size(), 4u);  // the last token is sampled from the full context
}

// Prompt i samples with seed + i, so a result does not depend on the other prompts or on how
// many decode together.
TEST(PublicApi, SeedsDoNotDependOnBatching) {
  SKIP_WITHOUT_DATA();
  mlkv::Engine e = load();
  const std::vector<std::vector<int32_t>> prompts = {e.tokenizer().encode("the dog", true),
                                                     e.tokenizer().encode("a cat sat", true),
                                                     e.tokenizer().encode("once", true)};
  mlkv::GenerationOptions o;
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  o.sampling = {0.9f, 40, 0.95f, 42};
  const std::vector<mlkv::Generation> all = e.generate(prompts, o);
  o.n_parallel = 1;
  const std::vector<mlkv::Generation> one_by_one = e.generate(prompts, o);
  o.sampling.seed = 43;
  const std::vector<mlkv::Generation> second_alone = e.generate({prompts[1]}, o);
  ASSERT_EQ(all.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(all[i].tokens, one_by_one[i].tokens) << i;
  EXPECT_EQ(second_alone[0].tokens, all[1].tokens);
  o.sampling.seed = 7;
  EXPECT_NE(e.generate(prompts, o)[0].tokens, all[0].tokens);
}

TEST(PublicApi, SessionMatchesGenerate) {
  SKIP_WITHOUT_DATA();
  mlkv::Engine e = load();
  const std::vector<std::vector<int32_t>> prompts = {e.tokenizer().encode("the dog", true),
                                                     e.tokenizer().encode("a cat sat", true)};
  mlkv::GenerationOptions o;
  o.max_new_tokens = 10;
  o.stop_at_eos = false;
  o.sampling = {0.8f, 0, 1.0f, 5};
  const std::vector<mlkv::Generation> want = e.generate(prompts, o);

  mlkv::SessionOptions so;
  so.n_parallel = 2;
  so.n_ctx = 64;
  mlkv::Session s(e, so);
  EXPECT_EQ(s.n_parallel(), 2);
  EXPECT_EQ(s.n_ctx(), 64);
  EXPECT_EQ(s.cache_bytes(), e.kv_bytes(64, 2));
  std::vector<mlkv::Generation> got(3);
  std::vector<std::vector<int32_t>> streamed(3);
  for (int i = 0; i < 2; ++i) {
    mlkv::Request r;
    r.prompt = prompts[static_cast<size_t>(i)];
    r.max_new_tokens = 10;
    r.stop_at_eos = false;
    r.sampling = {0.8f, 0, 1.0f, 5 + static_cast<uint64_t>(i)};
    r.on_token = [&streamed, i](int32_t t) { streamed[static_cast<size_t>(i)].push_back(t); };
    r.on_done = [&got, i](const mlkv::Generation& g) { got[static_cast<size_t>(i)] = g; };
    s.submit(std::move(r));
  }
  mlkv::Request empty_budget;
  empty_budget.prompt = prompts[0];
  empty_budget.max_new_tokens = 0;
  empty_budget.on_done = [&got](const mlkv::Generation& g) { got[2] = g; };
  s.submit(std::move(empty_budget));
  EXPECT_EQ(s.load().queued, 3);
  s.run_until_idle();
  EXPECT_EQ(s.load().queued, 0);
  EXPECT_EQ(s.load().running, 0);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << i;
    EXPECT_EQ(got[i].finish_reason, "length");
    EXPECT_EQ(streamed[i], got[i].tokens);
  }
  EXPECT_TRUE(got[2].tokens.empty());
  EXPECT_EQ(got[2].finish_reason, "length");

  // A cancelled request stops at the next step.
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  mlkv::Generation cancelled;
  mlkv::Request r;
  r.prompt = prompts[0];
  r.max_new_tokens = 50;
  r.cancel = cancel;
  r.on_token = [&](int32_t) { cancel->store(true); };
  r.on_done = [&](const mlkv::Generation& g) { cancelled = g; };
  s.submit(std::move(r));
  s.run_until_idle();
  EXPECT_EQ(cancelled.finish_reason, "cancelled");
  EXPECT_EQ(cancelled.tokens.size(), 1u);
}

TEST(PublicApi, Errors) {
  SKIP_WITHOUT_DATA();
  mlkv::LoadOptions o;
  o.device = "cuda";
  EXPECT_EQ(error_of([&] { load(o); }),
            "device 'cuda' is not available: this build has no CUDA backend");
  o.device = "cuda:1";
  EXPECT_EQ(error_of([&] { load(o); }),
            "device 'cuda:1' is not available: this build has no CUDA backend");
  o.device = "tpu";
  EXPECT_EQ(error_of([&] { load(o); }), "unknown device 'tpu' (this build has: cpu)");
  o = {};
  o.weights = "f8";
  EXPECT_EQ(error_of([&] { load(o); }), "weights must be f32, f16, bf16 or q8_0 (got 'f8')");
  o = {};
  o.threads = -1;
  EXPECT_NE(error_of([&] { load(o); }), "(no error)");
  EXPECT_NE(error_of([] { mlkv::Engine::load(kDir + "/nope.bin"); }), "(no error)");
  EXPECT_NE(error_of([] { mlkv::read_model_info(kDir + "/nope"); }), "(no error)");

  // Tokenizers: required and missing is an error; kNone has none.
  mlkv::LoadOptions t;
  t.tokenizer = kDir + "/missing_tokenizer.bin";
  t.tokenizer_mode = mlkv::TokenizerMode::kRequired;
  EXPECT_NE(error_of([&] { mlkv::Engine::load(kModel, t); }), "(no error)");
  t.tokenizer_mode = mlkv::TokenizerMode::kAuto;
  EXPECT_FALSE(mlkv::Engine::load(kModel, t).has_tokenizer());
  t.tokenizer = "";
  EXPECT_TRUE(mlkv::Engine::load(kModel, t).has_tokenizer());  // tok512.bin next to the model
  t.tokenizer_mode = mlkv::TokenizerMode::kNone;
  mlkv::Engine bare = mlkv::Engine::load(kModel, t);
  EXPECT_FALSE(bare.has_tokenizer());
  EXPECT_NE(error_of([&] { bare.tokenizer(); }), "(no error)");

  mlkv::Engine e = std::move(bare);  // moved engines work
  EXPECT_EQ(error_of([&] {
              e.score({1, 2}, false, "f64");
            }),
            "cache_type must be one of f32, f16, bf16, q8_0, q4_0 (q8_0 / q4_0 keys may add +hadamard), or KEYS/VALUES such as q8_0/f16 (got "
            "'f64')");
  EXPECT_EQ(error_of([&] { e.kv_bytes(16, 1, "int8"); }),
            "cache_type must be one of f32, f16, bf16, q8_0, q4_0 (q8_0 / q4_0 keys may add +hadamard), or KEYS/VALUES such as q8_0/f16 (got "
            "'int8')");
  EXPECT_EQ(error_of([&] { e.kv_bytes(16, 1, "bf16"); }), "(no error)");
  EXPECT_NE(error_of([&] { e.info().kv_bytes_per_token("int8"); }), "(no error)");
  EXPECT_NE(error_of([&] { e.kv_bytes(0, 1); }), "(no error)");
  EXPECT_EQ(error_of([&] { e.score({1}); }), "scoring needs at least 2 tokens (got 1)");
  EXPECT_NE(error_of([&] {
              e.score({1, 999});
            }).find("token id 999 is outside the vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([&] { e.score(std::vector<int32_t>(130, 1)); }).find("context overflow"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { e.logits({}); }), "logits need at least one token");
  EXPECT_NE(error_of([&] { e.logits(std::vector<int32_t>(129, 1)); }).find("context overflow"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              e.logits({1, 700});
            }).find("outside the vocabulary"),
            std::string::npos);
  mlkv::GenerationOptions g;
  EXPECT_EQ(error_of([&] { e.generate({{1}, {}}, g); }), "prompt 1: the prompt is empty");
  g.sampling.top_p = 1.5f;
  EXPECT_EQ(error_of([&] { e.generate({{1}}, g); }), "prompt 0: top-p must be in (0, 1] (got 1.5)");
  g = {};
  g.cache_type = "f64";
  EXPECT_NE(error_of([&] { e.generate({{1}}, g); }), "(no error)");
  g = {};
  g.max_new_tokens = -1;
  EXPECT_NE(error_of([&] { e.generate({{1}}, g); }), "(no error)");

  mlkv::SessionOptions so;
  so.cache_type = "f64";
  EXPECT_NE(error_of([&] { mlkv::Session s(e, so); }), "(no error)");
  so = {};
  so.n_parallel = 0;
  EXPECT_NE(error_of([&] { mlkv::Session s(e, so); }), "(no error)");
  mlkv::Session s(e);
  EXPECT_EQ(s.n_ctx(), 128);
  EXPECT_EQ(error_of([&] { s.submit({}); }), "the prompt is empty");
  mlkv::Request r;
  r.prompt = {1, 512};
  EXPECT_NE(error_of([&] { s.submit(r); }).find("outside the vocabulary"), std::string::npos);
  r.prompt = {1};
  r.max_new_tokens = -1;
  EXPECT_NE(error_of([&] { s.submit(r); }), "(no error)");
  EXPECT_EQ(s.load().queued, 0);
}

}  // namespace
