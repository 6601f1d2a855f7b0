// The public API (src/api) against the engine it wraps, on the real tiny model of the shared
// data: Engine::score equals score_tokens bit for bit (full and cached, f32 and f16 caches),
// Engine::logits equals Model::forward, Engine::generate equals runtime generate() with seed + i
// per prompt (tokens and finish reasons), ModelInfo copies the config.
#include <gtest/gtest.h>

#include <filesystem>

#include "mlkv/model.h"
#include "io/hf_model.h"
#include "model/config.h"
#include "model/layer_spec.h"
#include "model/model.h"
#include "runtime/engine.h"

namespace mlkv {
namespace {

const std::string kDir = std::string(MLKV_SHARED_DIR) + "/data/models/aidreams260K";

struct Pair {
  Engine api;
  Model model;
};

Pair load_both() {
  LoadOptions o;
  o.tokenizer_mode = TokenizerMode::kNone;
  return {Engine::load(kDir + "/aidreams260K.bin", o), Model(load_model(kDir + "/aidreams260K.bin"))};
}

#define SKIP_WITHOUT_DATA()                                                                    \
  if (!std::filesystem::exists(kDir + "/aidreams260K.bin")) GTEST_SKIP() << "shared data not " \
                                                                            "found"

TEST(ApiEngine, InfoCopiesTheConfig) {
  SKIP_WITHOUT_DATA();
  Pair p = load_both();
  const ModelConfig& c = p.model.config();
  const ModelInfo& i = p.api.info();
  EXPECT_EQ(i.summary, c.summary());
  EXPECT_EQ(i.scheme, sharing_scheme_name(c));
  EXPECT_EQ(i.kv_source, c.kv_source);
  EXPECT_EQ(i.n_params, c.n_params());
  EXPECT_EQ(i.kv_bytes_per_token("f16"), c.kv_bytes_per_token(2));
  EXPECT_EQ(i.mha_kv_bytes_per_token("f32"), c.mha_kv_bytes_per_token(4));
  EXPECT_EQ(i.kv_cache_bytes(77, 3, "f32"), kv_cache_bytes(c, 3, 77, DType::kF32));
}

TEST(ApiEngine, ScoreAndLogitsAreTheEngines) {
  SKIP_WITHOUT_DATA();
  Pair p = load_both();
  const std::vector<int32_t> ids = {1, 403, 295, 429, 444, 445, 265, 20, 300, 511, 0, 7};
  for (bool cached : {false, true}) {
    for (DType elem : {DType::kF32, DType::kF16}) {
      const std::vector<float> want = score_tokens(p.model, ids, cached, elem);
      const std::vector<float> got = p.api.score(ids, cached, elem == DType::kF32 ? "f32" : "f16");
      EXPECT_EQ(got, want) << "cached " << cached;  // bit for bit
    }
  }
  const int n = static_cast<int>(ids.size()), V = p.model.config().n_vocab;
  KVCache cache = p.model.new_cache(1, n);
  cache.acquire_seq();
  Batch b;
  for (int i = 0; i < n; ++i) b.add(ids[static_cast<size_t>(i)], 0, i, true);
  std::vector<float> want(static_cast<size_t>(n) * static_cast<size_t>(V));
  p.model.forward(b, cache, want.data());
  EXPECT_EQ(p.api.logits(ids), want);
}

TEST(ApiEngine, GenerateIsTheEngines) {
  SKIP_WITHOUT_DATA();
  Pair p = load_both();
  const std::vector<std::vector<int32_t>> prompts = {{1, 403, 295}, {1, 20}, {1}};
  for (float temp : {0.0f, 0.9f}) {
    GenerationOptions o;
    o.max_new_tokens = 30;
    o.sampling = {temp, 20, 0.9f, 11};
    o.n_parallel = 2;
    std::vector<GenerateRequest> reqs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      reqs.push_back({prompts[i], 30, {temp, 20, 0.9f, 11 + i}});
    }
    GenerateOptions go;
    go.n_parallel = 2;
    const std::vector<GenerateResult> want = generate(p.model, reqs, go);
    const std::vector<Generation> got = p.api.generate(prompts, o);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].tokens, want[i].tokens) << "temp " << temp << " prompt " << i;
      EXPECT_EQ(got[i].finish_reason, want[i].finish_reason);
      EXPECT_EQ(got[i].text, "");  // no tokenizer loaded
    }
  }
}

}  // namespace
}  // namespace mlkv
