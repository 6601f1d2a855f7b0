// ModelConfig and config.json parsing: the authors' owner rule, kv_source validation, the
// family keys, and clear errors for impossible configurations.
#include "model/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/check.h"
#include "io/hf_config.h"

namespace mlkv {
namespace {

void expect_config_error(const std::string& json, const std::string& needle) {
  try {
    parse_hf_config(json, "config.json");
    FAIL() << "accepted: " << json;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

const char* kNeox =
    R"({"model_type":"gpt_neox","vocab_size":100,"hidden_size":64,"num_hidden_layers":12,
 "num_attention_heads":4,"intermediate_size":256,"rotary_pct":0.25)";

std::string neox(const std::string& extra) {
  return std::string(kNeox) + extra + "}";
}

TEST(OwnerRule, PaperExamples) {
  EXPECT_EQ(owners_by_authors_rule(12, 6), (std::vector<int>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(owners_by_authors_rule(12, 4), (std::vector<int>{0, 3, 6, 9}));
  EXPECT_EQ(owners_by_authors_rule(12, 2), (std::vector<int>{0, 6}));
  EXPECT_EQ(owners_by_authors_rule(12, 1), (std::vector<int>{0}));
  EXPECT_EQ(owners_by_authors_rule(32, 4), (std::vector<int>{0, 8, 16, 24}));
  EXPECT_EQ(owners_by_authors_rule(12, 12).size(), 12u);
  EXPECT_EQ(kv_source_from_owners(6, {0, 3}), (std::vector<int>{0, 0, 0, 3, 3, 3}));
  EXPECT_THROW(owners_by_authors_rule(12, 13), Error);
  EXPECT_THROW(kv_source_from_owners(6, {1, 3}), Error);
}

TEST(HfConfig, NeoxDefaultsAndAuthorsFormat) {
  ModelConfig c = parse_hf_config(neox(""), "x");
  EXPECT_EQ(c.family, Family::kGptNeoX);
  EXPECT_EQ(c.n_rot, 4);  // int(16 * 0.25)
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_FALSE(c.shares_across_layers());
  EXPECT_EQ(c.share_rope, KvShareRope::kPost);
  // The authors' checkpoints: num_key_value_layers without kv_share_rope means pre.
  c = parse_hf_config(neox(R"(,"num_key_value_heads":1,"num_key_value_layers":4)"), "x");
  EXPECT_EQ(c.share_rope, KvShareRope::kPre);
  EXPECT_EQ(c.owner_layers(), (std::vector<int>{0, 3, 6, 9}));
  EXPECT_EQ(c.kv_source[5], 3);
  c = parse_hf_config(neox(R"(,"num_key_value_layers":4,"kv_share_rope":"post")"), "x");
  EXPECT_EQ(c.share_rope, KvShareRope::kPost);
}

TEST(HfConfig, ExplicitKvSourceWins) {
  ModelConfig c = parse_hf_config(neox(R"(,"kv_source":[0,0,2,2,2,5,5,5,5,5,5,5])"), "x");
  EXPECT_EQ(c.owner_layers(), (std::vector<int>{0, 2, 5}));
  c = parse_hf_config(neox(R"(,"kv_source":[0,0,2,2,2,5,5,5,5,5,5,5],"num_key_value_layers":3)"),
                      "x");
  EXPECT_EQ(c.n_kv_layers(), 3);
  expect_config_error(neox(R"(,"kv_source":[0,0,2,2,2,5,5,5,5,5,5,5],"num_key_value_layers":4)"),
                      "num_key_value_layers is 4 but kv_source has 3 owner layers");
}

TEST(HfConfig, BadConfigs) {
  expect_config_error(neox(R"(,"kv_source":[0,2,2,2,2,2,2,2,2,2,2,2])"), "points forward");
  expect_config_error(neox(R"(,"kv_source":[0,0,1,3,3,3,3,3,3,3,3,3])"), "does not own K/V");
  expect_config_error(neox(R"(,"kv_source":[0,0,0])"), "kv_source has 3 entries");
  expect_config_error(neox(R"(,"num_key_value_heads":3)"), "not divisible by num_key_value_heads");
  expect_config_error(neox(R"(,"kv_share_rope":"sideways")"), "kv_share_rope must be");
  expect_config_error(neox(R"(,"num_key_value_layers":13)"), "num_key_value_layers (13)");
  expect_config_error(R"({"model_type":"gpt_neox","hidden_size":64})",
                      "missing required key 'vocab_size'");
  expect_config_error(R"({"model_type":"bert"})", "model_type 'bert' is not supported");
  expect_config_error("{not json", "not valid JSON");
  expect_config_error(neox(R"(,"hidden_act":"relu")"), "hidden_act 'relu'");
  expect_config_error(
      R"({"model_type":"llama","vocab_size":10,"hidden_size":60,"num_hidden_layers":2,
    "num_attention_heads":7,"intermediate_size":8})",
      "not divisible by num_attention_heads");
  expect_config_error(neox(R"(,"rope_scaling":{"rope_type":"yarn","factor":4})"),
                      "rope_scaling type 'yarn'");
  expect_config_error(neox(R"(,"rope_scaling":{"type":"dynamic","factor":2})"),
                      "rope_scaling type 'dynamic'");
  expect_config_error(neox(R"(,"rope_scaling":{"rope_type":"linear"})"), "needs a 'factor'");
  expect_config_error(neox(R"(,"rope_scaling":{"rope_type":"linear","factor":-1})"),
                      "factor must be positive");
  expect_config_error(neox(R"(,"rope_scaling":{"rope_type":"llama3","factor":8})"),
                      "original_max_position_embeddings");
  expect_config_error(neox(R"(,"rope_scaling":"big")"), "rope_scaling must be an object");
}

// Llama 3.1's rope_scaling: frequencies with wavelengths beyond original / low_freq_factor are
// divided by factor, those below original / high_freq_factor kept, the band between blended; round
// trip exact.
TEST(HfConfig, RopeScaling) {
  const ModelConfig c = parse_hf_config(R"({"model_type":"llama","vocab_size":10,"hidden_size":512,
    "num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"rope_theta":500000.0,
    "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
    "original_max_position_embeddings":8192}})",
                                        "x");
  const auto f = c.rope_inv_freq();
  ASSERT_EQ(f.size(), 64u);
  int kept = 0, scaled = 0, blended = 0;
  for (int i = 0; i < 64; ++i) {
    const double plain = std::pow(500000.0, -2.0 * i / 128), wavelen = 2 * M_PI / plain;
    const double got = f[static_cast<size_t>(i)];
    if (wavelen < 8192 / 4.0) {
      EXPECT_DOUBLE_EQ(got, plain);
      ++kept;
    } else if (wavelen > 8192) {
      EXPECT_DOUBLE_EQ(got, plain / 8);
      ++scaled;
    } else {
      EXPECT_GT(got, plain / 8);
      EXPECT_LT(got, plain);
      ++blended;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(scaled, 0);
  EXPECT_GT(blended, 0);
  const ModelConfig d = parse_hf_config(hf_config_to_json(c), "y");
  EXPECT_EQ(d.rope_inv_freq(), f);
  ModelConfig lin = parse_hf_config(neox(R"(,"rope_scaling":{"type":"linear","factor":4.0})"), "z");
  EXPECT_DOUBLE_EQ(lin.rope_inv_freq()[1], std::pow(10000.0, -2.0 / 4) / 4);
  EXPECT_EQ(parse_hf_config(hf_config_to_json(lin), "w").rope_inv_freq(), lin.rope_inv_freq());
}

TEST(HfConfig, RoundTrip) {
  ModelConfig c = parse_hf_config(
      neox(
          R"(,"num_key_value_heads":2,"kv_source":[0,0,2,2,2,5,5,5,5,5,5,5],"kv_share_rope":"pre","use_parallel_residual":false)"),
      "x");
  const ModelConfig d = parse_hf_config(hf_config_to_json(c), "y");
  EXPECT_EQ(d.kv_source, c.kv_source);
  EXPECT_EQ(d.share_rope, c.share_rope);
  EXPECT_EQ(d.n_rot, c.n_rot);
  EXPECT_EQ(d.n_head_kv, 2);
  EXPECT_EQ(d.parallel_residual, false);
  EXPECT_EQ(d.n_params(), c.n_params());
  const char* llama =
      R"({"model_type":"llama","vocab_size":10,"hidden_size":64,"num_hidden_layers":2,
    "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":8,"tie_word_embeddings":true,"rope_theta":500000.0})";
  c = parse_hf_config(llama, "x");
  const ModelConfig e = parse_hf_config(hf_config_to_json(c), "y");
  EXPECT_EQ(e.family, Family::kLlama);
  EXPECT_TRUE(e.tied_embeddings);
  EXPECT_EQ(e.rope_theta, 500000.0);
  // Floats in config.json come back exactly (no f32 rounding on the way through).
  c.norm_eps = 1e-5;
  EXPECT_EQ(parse_hf_config(hf_config_to_json(c), "z").norm_eps, 1e-5);
  EXPECT_EQ(e.n_rot, 16);
}

TEST(Config, KvBytesPerToken) {
  ModelConfig c =
      parse_hf_config(neox(R"(,"num_key_value_heads":1,"num_key_value_layers":4)"), "x");
  // 2 (K and V) * m=4 * g=1 * d=16 * 4 bytes
  EXPECT_EQ(c.kv_bytes_per_token(4), 2 * 4 * 1 * 16 * 4);
}

}  // namespace
}  // namespace mlkv
