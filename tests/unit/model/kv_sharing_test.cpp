// build_kv_source (every source of kv_source and every error, in both wordings), parse_share_rope,
// and the sharing arithmetic of ModelConfig: scheme names, MHA bytes per token, the reduction.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/check.h"
#include "model/config.h"
#include "test_util.h"

namespace mlkv {
namespace {

std::string error_of(const KvSharingSpec& s) {
  try {
    build_kv_source(s);
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(BuildKvSource, Identity) {
  EXPECT_EQ(build_kv_source({.n_layer = 4}), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(build_kv_source({.n_layer = 1}), (std::vector<int>{0}));
}

TEST(BuildKvSource, KvLayersByTheAuthorsRule) {
  EXPECT_EQ(build_kv_source({.n_layer = 12, .kv_layers = 4}),
            kv_source_from_owners(12, {0, 3, 6, 9}));
  EXPECT_EQ(build_kv_source({.n_layer = 5, .kv_layers = 2}),
            (std::vector<int>{0, 0, 2, 2, 2}));  // int(5 / 2) = 2
  EXPECT_EQ(build_kv_source({.n_layer = 4, .kv_layers = 4}), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(build_kv_source({.n_layer = 4, .kv_layers = 1}), (std::vector<int>{0, 0, 0, 0}));
}

TEST(BuildKvSource, OwnersAndExplicitMap) {
  EXPECT_EQ(build_kv_source({.n_layer = 6, .owners = {0, 1, 4}}),
            (std::vector<int>{0, 1, 1, 1, 4, 4}));
  EXPECT_EQ(build_kv_source({.n_layer = 4, .kv_source = {0, 0, 2, 0}}),
            (std::vector<int>{0, 0, 2, 0}));
}

TEST(BuildKvSource, OptionErrorsNameTheOption) {
  EXPECT_EQ(error_of({.n_layer = 4, .kv_layers = 5}),
            "--kv-layers 5 is out of range: the model has 4 layers (1 <= M <= 4)");
  EXPECT_EQ(error_of({.n_layer = 4, .kv_layers = -1}),
            "--kv-layers -1 is out of range: the model has 4 layers (1 <= M <= 4)");
  EXPECT_EQ(error_of({.n_layer = 4, .owners = {1, 3}}),
            "--owners must start at layer 0 (got 1,3): layer 0 has no earlier layer to read K/V "
            "from");
  EXPECT_EQ(error_of({.n_layer = 4, .owners = {0, 3, 2}}),
            "--owners must be strictly increasing (got 0,3,2)");
  EXPECT_EQ(error_of({.n_layer = 4, .owners = {0, 0}}),
            "--owners must be strictly increasing (got 0,0)");
  EXPECT_EQ(error_of({.n_layer = 4, .owners = {0, 4}}),
            "--owners names layer 4 but the model has 4 layers (0..3)");
  EXPECT_EQ(error_of({.n_layer = 4, .kv_source = {0, 0}}),
            "--kv-source has 2 entries but the model has 4 layers");
  EXPECT_EQ(error_of({.n_layer = 4, .kv_source = {0, 0, 3, 3}}),
            "kv_source[2] = 3 points forward (a layer can only use K/V of itself or an earlier "
            "layer)");
  EXPECT_EQ(error_of({.n_layer = 4, .kv_source = {0, 0, 1, 1}}),
            "kv_source[2] = 1 points at layer 1, which does not own K/V (kv_source[1] = 0)");
  EXPECT_EQ(error_of({.n_layer = 3, .kv_source = {0, -1, 1}}), "kv_source[1] = -1 is negative");
  EXPECT_EQ(error_of({.n_layer = 4, .kv_source = {1, 1, 2, 3}}),
            "kv_source[0] = 1 points forward (a layer can only use K/V of itself or an earlier "
            "layer)");
  EXPECT_EQ(error_of({.n_layer = 4, .kv_layers = 2, .owners = {0, 2}}),
            "give at most one of --kv-layers, --owners and --kv-source");
  EXPECT_EQ(error_of({.n_layer = 4, .owners = {0, 2}, .kv_source = {0, 0, 2, 2}}),
            "give at most one of --kv-layers, --owners and --kv-source");
  EXPECT_EQ(error_of({.n_layer = 0}), "the number of layers must be positive (got 0)");
}

TEST(BuildKvSource, ConfigErrorsNameTheKey) {
  const KvSpecOrigin cfg = KvSpecOrigin::kConfig;
  EXPECT_EQ(error_of({.n_layer = 12, .kv_layers = 13, .origin = cfg}),
            "num_key_value_layers (13) must be between 1 and the number of layers (12)");
  EXPECT_EQ(error_of({.n_layer = 12, .kv_source = {0, 0, 0}, .origin = cfg}),
            "kv_source has 3 entries but the model has 12 layers");
  EXPECT_EQ(error_of({.n_layer = 4, .kv_layers = 2, .kv_source = {0, 0, 2, 2}, .origin = cfg}),
            "give at most one of num_key_value_layers, owners and kv_source");
}

TEST(ParseShareRope, SpellingsAndError) {
  EXPECT_EQ(parse_share_rope("post"), KvShareRope::kPost);
  EXPECT_EQ(parse_share_rope("pre"), KvShareRope::kPre);
  EXPECT_EQ(parse_share_rope(share_rope_name(KvShareRope::kPre)), KvShareRope::kPre);
  for (const char* bad : {"", "Post", "sideways", "pre "}) {
    try {
      parse_share_rope(bad, "--share");
      FAIL() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()),
                std::string("--share must be \"post\" or \"pre\" (got \"") + bad + "\")");
    }
  }
  EXPECT_THROW(parse_share_rope("x"), Error);
}

TEST(SharingScheme, NamesAndMhaArithmetic) {
  using testing::tiny_config;
  struct Case {
    int L, H, G;
    std::vector<int> src;
    const char* name;
    int64_t kv_f32, mha_f32;
  };
  // 4 layers, 4 heads of 8: MHA stores 2 * 4 * 4 * 8 * 4 = 1024 bytes per token in f32.
  const Case cases[] = {
      {4, 4, 4, {}, "MHA", 1024, 1024},
      {4, 4, 2, {}, "GQA (2 KV heads)", 512, 1024},
      {4, 4, 1, {}, "MQA", 256, 1024},
      {4, 4, 1, {0, 0, 2, 2}, "MLKV (2 KV layers x 1 KV heads)", 128, 1024},
      {4, 4, 4, {0, 0, 0, 0}, "MLKV (1 KV layers x 4 KV heads)", 256, 1024},
  };
  for (const Case& k : cases) {
    const ModelConfig c = tiny_config(Family::kLlama, k.L, 32, k.H, k.G, k.src, KvShareRope::kPost);
    EXPECT_EQ(sharing_scheme_name(c), k.name);
    EXPECT_EQ(c.kv_bytes_per_token(4), k.kv_f32) << k.name;
    EXPECT_EQ(c.mha_kv_bytes_per_token(4), k.mha_f32) << k.name;
    EXPECT_EQ(c.mha_kv_bytes_per_token(2), k.mha_f32 / 2) << k.name;
    EXPECT_DOUBLE_EQ(c.kv_reduction_vs_mha(),
                     static_cast<double>(k.mha_f32) / static_cast<double>(k.kv_f32))
        << k.name;
  }
}

TEST(LayerList, Spelling) {
  EXPECT_EQ(layer_list({}), "");
  EXPECT_EQ(layer_list({0}), "0");
  EXPECT_EQ(layer_list({0, 3, 6}), "0,3,6");
}

}  // namespace
}  // namespace mlkv
