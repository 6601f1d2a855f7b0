// The KV cache on its own (kv/kv_cache.h), with layouts written by hand rather than from a model:
// exact bytes for every element format, the slot map, the default block tables, scattered block
// tables, copy_seq across them, and the bookkeeping of sequences.
#include <gtest/gtest.h>

#include <tuple>

#include <cstring>
#include <string>
#include <vector>

#include "core/check.h"
#include "kv/kv_cache.h"

namespace mlkv {
namespace {

// 4 layers, owners 0 and 2 (layer 1 reads 0, layer 3 reads 2); slot 1 stores raw keys.
KvLayout layout() {
  KvLayout k;
  k.n_head_kv = 2;
  k.head_dim = 8;
  k.layer_slot = {0, 0, 1, 1};
  k.slot_raw_keys = {0, 1};
  return k;
}

TEST(KvCache, BytesAreTwoTokensOwnersHeadsRowBytes) {
  const KvLayout l = layout();
  for (DType e : {DType::kF32, DType::kF16}) {
    const int64_t per_token = int64_t{2} * 2 * 2 * 8 * static_cast<int64_t>(dtype_size(e));
    EXPECT_EQ(l.bytes_per_token(e), per_token);
    KVCache c(l, 3, 50, e);
    EXPECT_EQ(c.bytes(), 3 * 50 * per_token);
    EXPECT_EQ(KVCache::bytes_needed(l, 3, 50, e), c.bytes());
    EXPECT_EQ(c.n_slots(), 2);
    EXPECT_EQ(c.slot_of_layer(3), 1);
    EXPECT_TRUE(c.slot_keys_rotated(0));
    EXPECT_FALSE(c.slot_keys_rotated(1));
    EXPECT_EQ(kv_codec(e).row_bytes(8), 8 * dtype_size(e));
    EXPECT_EQ(c.type(), KvCacheType(e));
  }
  // Block formats: 34 (q8_0) and 18 (q4_0) bytes per 32 values, scales included; keys and values
  // may differ; a head size that is not a multiple of 32 cannot hold them.
  KvLayout w = l;
  w.head_dim = 64;
  EXPECT_EQ(w.bytes_per_token(DType::kQ8_0), int64_t{2} * 2 * 2 * 2 * 34);
  EXPECT_EQ(w.bytes_per_token(DType::kQ4_0), int64_t{2} * 2 * 2 * 2 * 18);
  EXPECT_EQ(w.bytes_per_token({DType::kQ8_0, DType::kF16}), int64_t{2} * 2 * (2 * 34 + 64 * 2));
  EXPECT_EQ(KVCache(w, 3, 50, {DType::kQ4_0, DType::kBF16}).bytes(), 3 * 50 * w.bytes_per_token({DType::kQ4_0, DType::kBF16}));
  try {
    KVCache bad(l, 1, 10, DType::kQ8_0);
    FAIL() << "a q8_0 cache for head size 8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_kv_cache_type("q8_0"), KvCacheType(DType::kQ8_0));
  EXPECT_EQ(parse_kv_cache_type("f16", "q4_0"), KvCacheType(DType::kQ4_0, DType::kF16));
  EXPECT_EQ(parse_kv_cache_type("", "", "bf16"), KvCacheType(DType::kF32, DType::kBF16));
  EXPECT_EQ(KvCacheType(DType::kQ8_0, DType::kF16).name(), "q8_0/f16");
  EXPECT_THROW(parse_kv_cache_type("q5_1"), Error);
  EXPECT_THROW(parse_kv_cache_type("f32", "int4"), Error);
  // Hadamard-rotated keys: a suffix of q8_0 / q4_0 key types, never of values or other formats.
  EXPECT_EQ(parse_kv_cache_type("q4_0+hadamard"), KvCacheType(DType::kQ4_0, DType::kQ4_0, true));
  EXPECT_EQ(parse_kv_cache_type("f16", "q8_0+hadamard"), KvCacheType(DType::kQ8_0, DType::kF16, true));
  EXPECT_EQ(KvCacheType(DType::kQ4_0, DType::kQ4_0, true).name(), "q4_0+hadamard");
  EXPECT_NE(KvCacheType(DType::kQ4_0, DType::kQ4_0, true), KvCacheType(DType::kQ4_0));
  // name() is what the options read back: "K" or "K/V", each half a format name.
  for (const KvCacheType& t : {KvCacheType(DType::kF16), KvCacheType(DType::kQ8_0, DType::kF16),
                               KvCacheType(DType::kQ4_0, DType::kQ4_0, true),
                               KvCacheType(DType::kQ8_0, DType::kBF16, true)}) {
    const std::string n = t.name();
    const size_t slash = n.find('/');
    const KvCacheType back = slash == std::string::npos
                                 ? parse_kv_cache_type(n)
                                 : parse_kv_cache_type("", n.substr(0, slash), n.substr(slash + 1));
    EXPECT_EQ(back, t) << n;
  }
  for (auto [both, k, v] : {std::tuple<const char*, const char*, const char*>{"f16+hadamard", "", ""},
                            {"", "", "q4_0+hadamard"},
                            {"", "bf16+hadamard", ""},
                            {"", "+hadamard", ""}}) {
    EXPECT_THROW(parse_kv_cache_type(both, k, v), Error) << both << " / " << k << " / " << v;
  }
  try {
    parse_kv_cache_type("", "", "q8_0+hadamard");
    ADD_FAILURE() << "rotated values accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keys only"), std::string::npos) << e.what();
  }
  try {
    parse_kv_cache_type("", "bf16+hadamard", "");
    ADD_FAILURE() << "rotated bf16 keys accepted";
  } catch (const Error& e) {  // the format as the user spells it
    EXPECT_NE(std::string(e.what()).find("not bf16"), std::string::npos) << e.what();
  }
  EXPECT_THROW(KVCache(l, 0, 10), Error);
  EXPECT_THROW(KVCache(l, 1, 0), Error);
  EXPECT_THROW(KVCache(l, 1, 10, DType::kF64), Error);  // not a cache format
  EXPECT_THROW(kv_codec("q4_1"), Error);
  EXPECT_EQ(kv_codec("f16").dtype, DType::kF16);
}

TEST(KvCache, DefaultLayoutIsOneContiguousBlockPerSequence) {
  KVCache c(layout(), 3, 10);
  EXPECT_EQ(c.block_size(), 10);
  EXPECT_EQ(c.blocks_per_seq(), 1);
  for (int s = 0; s < 3; ++s) EXPECT_EQ(c.block_table(s), std::vector<int32_t>{s});
  const ops::KvSlotView v = c.view(1);
  std::vector<ops::KvChunk> ch;
  v.chunks(2, 1, 7, &ch);
  ASSERT_EQ(ch.size(), 1u);
  EXPECT_EQ(ch[0].n, 7);
  EXPECT_EQ(ch[0].k, v.k_row(2, 1, 0));
  EXPECT_EQ(static_cast<const char*>(ch[0].v) - static_cast<const char*>(ch[0].k),
            static_cast<std::ptrdiff_t>(v.v - v.k));
  EXPECT_FALSE(v.keys_rotated);
}

// Rows written through the view of one block layout are read back through another's chunks,
// and copy_seq copies block by block between sequences with different tables.
TEST(KvCache, ScatteredBlockTablesAndCopy) {
  KVCache c(layout(), 2, 10, DType::kF32, Device::kCpu, 4);
  ASSERT_EQ(c.blocks_per_seq(), 3);
  c.set_block_table(0, {5, 0, 3});
  c.set_block_table(1, {1, 4, 2});
  ASSERT_EQ(c.acquire_seq(), 0);
  ASSERT_EQ(c.acquire_seq(), 1);
  const ops::KvSlotView v = c.view(0);
  for (int p = 0; p < 10; ++p) {
    for (int h = 0; h < 2; ++h) {
      float* k = reinterpret_cast<float*>(v.k_row(0, h, p));
      float* val = reinterpret_cast<float*>(v.v_row(0, h, p));
      for (int i = 0; i < 8; ++i) {
        k[i] = static_cast<float>(100 * p + 10 * h + i);
        val[i] = -k[i];
      }
    }
  }
  c.set_seq_len(0, 10);
  std::vector<ops::KvChunk> ch;
  v.chunks(0, 1, 10, &ch);
  ASSERT_EQ(ch.size(), 3u);  // blocks 5, 0, 3 are not adjacent
  EXPECT_EQ(ch[0].n + ch[1].n + ch[2].n, 10);
  int p = 0;
  for (const auto& x : ch) {
    for (int j = 0; j < x.n; ++j, ++p) {
      EXPECT_EQ(static_cast<const float*>(x.k)[j * 8 + 3], static_cast<float>(100 * p + 10 + 3));
      EXPECT_EQ(static_cast<const float*>(x.v)[j * 8 + 3], -static_cast<float>(100 * p + 10 + 3));
    }
  }
  c.copy_seq(0, 1, 9);
  EXPECT_EQ(c.seq_len(1), 9);
  for (int q = 0; q < 9; ++q) {
    EXPECT_EQ(std::memcmp(v.k_row(1, 1, q), v.k_row(0, 1, q), 32), 0) << q;
    EXPECT_EQ(std::memcmp(v.v_row(1, 0, q), v.v_row(0, 0, q), 32), 0) << q;
  }
  EXPECT_NE(std::memcmp(c.view(1).k_row(1, 0, 0), v.k_row(0, 0, 0), 32), 0);  // slot 1 untouched
  EXPECT_THROW(c.set_block_table(0, {0, 1, 2, 3}), Error);  // more blocks than positions
  EXPECT_THROW(c.set_block_table(0, {0, 1, 1}), Error);
  EXPECT_THROW(c.set_block_table(0, {0, 1, 6}), Error);
}

// A paged pool: fewer blocks than sequences x positions, tables mapped as sequences grow.
TEST(KvCache, PagedPoolMapsOnlyWhatItHolds) {
  KVCache c(layout(), 3, 10, DType::kF32, Device::kCpu, 4, 5);  // 5 blocks of 4 for 3 x 10
  EXPECT_EQ(c.n_blocks(), 5);
  EXPECT_EQ(c.bytes(), int64_t{5} * 4 * layout().bytes_per_token(DType::kF32));
  for (int s = 0; s < 3; ++s) EXPECT_EQ(c.mapped_positions(s), 0);
  c.set_block_table(0, {4, 1, 0});
  c.set_block_table(1, {2});
  EXPECT_EQ(c.mapped_positions(0), 10);  // 3 blocks of 4, capped at the context
  EXPECT_EQ(c.mapped_positions(1), 4);
  ASSERT_EQ(c.acquire_seq(), 0);
  ASSERT_EQ(c.acquire_seq(), 1);
  c.set_seq_len(0, 6);
  EXPECT_THROW(c.copy_seq(0, 1, 6), Error);  // sequence 1 maps 4 positions
  c.copy_seq(0, 1, 4);
  EXPECT_EQ(c.seq_len(1), 4);
}

TEST(KvCache, Sequences) {
  KVCache c(layout(), 2, 10);
  EXPECT_EQ(c.acquire_seq(), 0);
  EXPECT_EQ(c.acquire_seq(), 1);
  EXPECT_EQ(c.acquire_seq(), -1);
  c.set_seq_len(1, 4);
  c.release_seq(0);
  EXPECT_FALSE(c.seq_in_use(0));
  EXPECT_EQ(c.acquire_seq(), 0);
  EXPECT_EQ(c.seq_len(0), 0);
  EXPECT_EQ(c.seq_len(1), 4);
}

}  // namespace
}  // namespace mlkv

#include "kv/block_pool.h"

namespace mlkv {
namespace {

// The block pool: holds and releases, the prefix cache's matches (whole blocks, in order, only
// under the same parents), LRU eviction of unheld cached blocks, and a reused id never matching
// a stale child.
TEST(BlockPool, HoldsCachesAndEvicts) {
  BlockPool p(4, 2);
  EXPECT_EQ(p.n_available(), 4);
  std::vector<int32_t> toks = {1, 2, 3, 4, 5};
  std::vector<int32_t> a = {p.allocate(), p.allocate(), p.allocate()};
  EXPECT_EQ(p.n_used(), 3);
  p.register_prefix(toks, a, 2);  // blocks 0, 1 hold [1 2] [3 4]
  EXPECT_EQ(p.n_cached(), 2);
  std::vector<int32_t> m;
  EXPECT_EQ(p.match_prefix({1, 2, 3, 4, 9}, 2, &m), 2);
  EXPECT_EQ(m, (std::vector<int32_t>{a[0], a[1]}));
  m.clear();
  EXPECT_EQ(p.match_prefix({1, 2, 9, 9}, 2, &m), 1);  // diverges in the second block
  EXPECT_EQ(p.match_prefix({3, 4}, 1, &m), 0);        // same tokens, other parent
  for (int32_t b : a) p.release(b);
  p.release(a[0]);
  p.release(a[0]);  // the two matches' extra holds on block 0 ...
  p.release(a[1]);  // ... and block 1
  EXPECT_EQ(p.n_used(), 0);
  EXPECT_EQ(p.n_cached(), 2) << "unheld cached blocks stay cached";
  // Four allocations: the free ones first, then the least recently used cached blocks.
  std::vector<int32_t> b;
  for (int i = 0; i < 4; ++i) b.push_back(p.allocate());
  EXPECT_EQ(p.allocate(), -1);
  EXPECT_EQ(p.evictions(), 2);
  EXPECT_EQ(p.n_cached(), 0);
  m.clear();
  EXPECT_EQ(p.match_prefix(toks, 2, &m), 0) << "evicted blocks never match";
  EXPECT_THROW(BlockPool(0, 16), Error);
  EXPECT_THROW(BlockPool(4, 0), Error);
}

}  // namespace
}  // namespace mlkv
