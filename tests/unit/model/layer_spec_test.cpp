// The per-layer sharing semantics (model/layer_spec.h), by hand for every scheme and both rotary
// modes, and the cache layout derived from them.
#include <gtest/gtest.h>

#include "model/layer_spec.h"
#include "test_util.h"

namespace mlkv {
namespace {

ModelConfig cfg(std::vector<int> src, KvShareRope share) {
  return testing::tiny_config(Family::kLlama, static_cast<int>(src.size()), 16, 4, 2, src, share);
}

TEST(LayerSpec, OwnersConsumersAndKeys) {
  // Layers 0 and 2 own; 1 reads 0; 3 reads 2; 4 owns and nobody reads it.
  for (KvShareRope share : {KvShareRope::kPost, KvShareRope::kPre}) {
    const bool pre = share == KvShareRope::kPre;
    const auto s = layer_specs(cfg({0, 0, 2, 2, 4}, share));
    ASSERT_EQ(s.size(), 5u);
    const int slot[5] = {0, 0, 1, 1, 2};
    for (int il = 0; il < 5; ++il) {
      EXPECT_EQ(s[il].layer, il);
      EXPECT_EQ(s[il].kv_slot, slot[il]);
    }
    EXPECT_TRUE(s[0].owns_kv && s[2].owns_kv && s[4].owns_kv);
    EXPECT_FALSE(s[1].owns_kv || s[3].owns_kv);
    EXPECT_TRUE(s[0].has_consumers && s[2].has_consumers);
    EXPECT_FALSE(s[4].has_consumers);
    // Owners attend with rotated keys; consumers with raw ones under pre sharing only.
    EXPECT_TRUE(s[0].reads_rotated_keys && s[2].reads_rotated_keys && s[4].reads_rotated_keys);
    EXPECT_EQ(s[1].reads_rotated_keys, !pre);
    EXPECT_EQ(s[3].reads_rotated_keys, !pre);
    // Raw keys are kept (and cached) only by pre-sharing owners that have consumers.
    EXPECT_EQ(s[0].shares_raw_keys, pre);
    EXPECT_EQ(s[2].shares_raw_keys, pre);
    EXPECT_FALSE(s[4].shares_raw_keys);
    const KvLayout k = kv_layout(cfg({0, 0, 2, 2, 4}, share));
    EXPECT_EQ(k.layer_slot, (std::vector<int>{0, 0, 1, 1, 2}));
    EXPECT_EQ(k.slot_raw_keys, (std::vector<uint8_t>{pre, pre, 0}));
    EXPECT_EQ(k.n_head_kv, 2);
    EXPECT_EQ(k.head_dim, 4);
  }
}

TEST(LayerSpec, IdentitySharingIsPlainAttention) {
  for (KvShareRope share : {KvShareRope::kPost, KvShareRope::kPre}) {
    for (const LayerSpec& s : layer_specs(cfg({0, 1, 2}, share))) {
      EXPECT_TRUE(s.owns_kv);
      EXPECT_FALSE(s.has_consumers);
      EXPECT_TRUE(s.reads_rotated_keys);
      EXPECT_FALSE(s.shares_raw_keys);
      EXPECT_EQ(s.kv_slot, s.layer);
    }
  }
}

}  // namespace
}  // namespace mlkv
