// The KV-cache ops of the CUDA backend (kv_store, attention_cached) against the CPU backend, on
// real KVCaches made on each device (kv/kv_cache.h) with the same scattered block tables: several
// sequences, prefill runs of many rows and decode runs of one row in the same batch, a block size
// smaller than the context (so the block tables matter), keys stored rotated (post sharing) or raw
// and rotated by the reader (pre sharing's owner: rotate_keys), MHA / GQA / MQA, head sizes 64
// and 128, cache formats f32, f16, bf16; q8_0 and q4_0 either work or are refused with a clear
// mlkv::Error (never a crash).
//
// What is compared: the stored bytes (f32 / f16 / bf16 rows round to nearest even on both
// devices: bit for bit; q8_0 / q4_0: decoded values within one quantisation step), then the
// attention output with both devices reading the same bytes (the CPU's are copied into the GPU
// cache first, so a store difference cannot hide in or excuse an attention difference): 1e-4
// normalised (f32 arithmetic in another order over values the cache holds exactly).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kv/kv_cache.h"
#include "kernels/types.h"

namespace mlkv::cuda_test {
namespace {

struct KvCase {
  DType format;
  int n_head, n_head_kv, head_dim;
  bool rotate;  // the slot stores raw keys and the reader rotates them (pre sharing's owner)
};

std::string kv_name(const KvCase& c) {
  std::string f = dtype_name(c.format);
  std::transform(f.begin(), f.end(), f.begin(), [](char ch) { return std::tolower(ch); });
  const char* kind = c.n_head_kv == c.n_head ? "mha" : c.n_head_kv == 1 ? "mqa" : "gqa";
  return f + "_" + kind + "_d" + std::to_string(c.head_dim) + (c.rotate ? "_raw_keys" : "_rotated");
}

void PrintTo(const KvCase& c, std::ostream* os) { *os << kv_name(c); }

std::vector<KvCase> kv_cases() {
  std::vector<KvCase> out;
  for (DType f : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    for (bool rotate : {false, true}) {
      out.push_back({f, 8, 8, 64, rotate});
      out.push_back({f, 8, 2, 128, rotate});
      out.push_back({f, 6, 1, 64, rotate});
    }
  }
  return out;
}

bool quantized(DType f) { return f == DType::kQ8_0 || f == DType::kQ4_0; }

// The bytes of one K or V region of a cache's slot 0 (on its device), as host bytes.
std::vector<char> region_bytes(const KVCache& cache, bool keys) {
  const ops::KvSlotView s = cache.view(0);
  const size_t n = size_t(s.n_head_kv) * (keys ? s.k_head_stride : s.v_head_stride);
  std::vector<char> out(n);
  const char* src = keys ? s.k : s.v;
  if (cache.device() == Device::kCpu) {
    std::copy(src, src + n, out.begin());
  } else {
    device_allocator(cache.device()).to_host(out.data(), src, n);
  }
  return out;
}

// Overwrites a device cache's slot 0 with host bytes (the same layout).
void set_region_bytes(KVCache& cache, bool keys, const std::vector<char>& bytes) {
  const ops::KvSlotView s = cache.view(0);
  device_allocator(cache.device()).from_host(keys ? s.k : s.v, bytes.data(), bytes.size());
}

// Rows of head_dim values in a block format, decoded to f32.
std::vector<float> decode_rows(const std::vector<char>& bytes, DType dt, int head_dim) {
  const size_t rb = dtype_row_bytes(dt, head_dim);
  Tensor t({int64_t(bytes.size() / rb), head_dim}, dt);
  std::copy(bytes.begin(), bytes.end(), static_cast<char*>(t.raw()));
  return values(t.to(DType::kF32));
}

// Compares what the two caches store: bit for bit for f32 / f16 / bf16, within one quantisation
// step per block of 32 for q8_0 / q4_0 (the GPU may round a tie or the f16 scale differently).
void expect_same_store(const std::string& tag, const KVCache& c, const KVCache& g, DType dt,
                       int head_dim) {
  for (bool keys : {true, false}) {
    const auto bc = region_bytes(c, keys), bg = region_bytes(g, keys);
    ASSERT_EQ(bc.size(), bg.size());
    const std::string what = tag + (keys ? " stored keys" : " stored values");
    if (!quantized(dt)) {
      size_t bad = 0;
      for (size_t i = 0; i < bc.size(); ++i) bad += bc[i] != bg[i];
      EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << bc.size() << " bytes differ";
      continue;
    }
    const auto vc = decode_rows(bc, dt, head_dim), vg = decode_rows(bg, dt, head_dim);
    const double levels = dt == DType::kQ8_0 ? 127.0 : 7.0;
    size_t bad = 0, differ = 0;
    for (size_t b0 = 0; b0 < vc.size(); b0 += 32) {
      double amax = 0;
      for (size_t i = b0; i < b0 + 32; ++i) amax = std::max(amax, std::fabs(double(vc[i])));
      const double step = amax / levels;
      for (size_t i = b0; i < b0 + 32; ++i) {
        const double e = std::fabs(double(vc[i]) - double(vg[i]));
        differ += e > 0;
        bad += !(e <= 1.05 * step + 1e-7);
      }
    }
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " values more than one step apart";
    std::printf("  %-58s %zu of %zu values differ (within a step)\n", what.c_str(), differ,
                vc.size());
  }
}

class CudaKvCache : public CudaParamTest<KvCase> {};

// Three rounds on three sequences whose blocks are scattered through the pool:
//   1. prefill: seq 0 rows 0..22, seq 1 rows 0..40, seq 2 one row at 0 (a prompt of one token);
//   2. decode: one row for each sequence;
//   3. a prefill chunk continuing seq 1 (29 rows) between decode rows of seq 2 and seq 0.
// Each round stores its rows first, then attends, as the model does.
TEST_P(CudaKvCache, StoreAndAttend) {
  const KvCase kc = GetParam();
  const int n_seq = 3, n_ctx = 80, block = 16, H = kc.n_head, G = kc.n_head_kv, d = kc.head_dim;
  KvLayout layout;
  layout.n_head_kv = G;
  layout.head_dim = d;
  layout.layer_slot = {0};
  layout.slot_raw_keys = {static_cast<uint8_t>(kc.rotate ? 1 : 0)};
  KVCache cc(layout, n_seq, n_ctx, kc.format, Device::kCpu, block);
  std::unique_ptr<KVCache> gc;
  const std::string tag = kv_name(kc);
  // Every sequence's 5 blocks scattered through the pool of 15, the same on both devices.
  const std::vector<std::vector<int32_t>> tables = {
      {14, 3, 7, 0, 9}, {2, 11, 5, 13, 1}, {8, 4, 12, 6, 10}};
  ops::RopeTable<float> rt;
  rt.build(d, n_ctx, ops::rope_inv_freq(d, 10000.0));

  try {
    gc = std::make_unique<KVCache>(layout, n_seq, n_ctx, kc.format, gpu_device(), block);
    for (int s = 0; s < n_seq; ++s) {
      cc.set_block_table(s, tables[size_t(s)]);
      gc->set_block_table(s, tables[size_t(s)]);
    }
    ASSERT_TRUE(cc.view(0).keys_rotated == !kc.rotate);
    ASSERT_TRUE(gc->view(0).keys_rotated == !kc.rotate);

    // (seq, n_rows) per run; positions continue each sequence.
    const std::vector<std::vector<std::pair<int, int>>> rounds = {
        {{0, 23}, {1, 41}, {2, 1}}, {{0, 1}, {1, 1}, {2, 1}}, {{2, 1}, {1, 29}, {0, 1}}};
    std::vector<int> len(n_seq, 0);
    uint32_t seed = 200;
    for (size_t r = 0; r < rounds.size(); ++r) {
      std::vector<ops::AttnRun> runs;
      std::vector<int32_t> seq, pos;
      int rows = 0;
      for (auto [s, nr] : rounds[r]) {
        runs.push_back({s, rows, nr, len[size_t(s)]});
        for (int i = 0; i < nr; ++i) {
          seq.push_back(s);
          pos.push_back(len[size_t(s)] + i);
        }
        len[size_t(s)] += nr;
        rows += nr;
      }
      const std::string rtag = tag + " round " + std::to_string(r + 1);
      Pair K(randn(size_t(rows) * G * d, seed++, 1.5f)), V(randn(size_t(rows) * G * d, seed++)),
          Q(randn(size_t(rows) * H * d, seed++, 1.5f));
      cpu().kv_store(cc.view(0), seq.data(), pos.data(), rows, K.cp(), V.cp());
      gpu().kv_store(gc->view(0), seq.data(), pos.data(), rows, K.gp(), V.gp());
      expect_same_store(rtag, cc, *gc, kc.format, d);
      // Attend over the same bytes on both devices.
      set_region_bytes(*gc, true, region_bytes(cc, true));
      set_region_bytes(*gc, false, region_bytes(cc, false));
      Pair O = Pair::zeros(int64_t(rows) * H * d);
      cpu().attention_cached(cc.view(0), runs, Q.cp(), H, kc.rotate, rt, O.cp());
      gpu().attention_cached(gc->view(0), runs, Q.gp(), H, kc.rotate, rt, O.gp());
      O.expect(rtag + " attention", kF32Tol);
    }
  } catch (const Error& e) {
    // q8_0 / q4_0 may be refused by the CUDA backend, clearly; anything else must work.
    const std::string msg = e.what();
    ASSERT_TRUE(quantized(kc.format)) << tag << ": the CUDA backend threw: " << msg;
    EXPECT_FALSE(msg.empty()) << tag << ": refused without a message";
    std::printf("  %s: refused by the CUDA backend: %s\n", tag.c_str(), msg.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaKvCache, ::testing::ValuesIn(kv_cases()),
                         [](const ::testing::TestParamInfo<KvCase>& p) {
                           return kv_name(p.param);
                         });

// Keys and values in different formats (f16 keys, bf16 values; f32 keys, f16 values), one shape.
TEST_F(CudaTest, KvCacheMixedFormats) {
  const int n_seq = 2, n_ctx = 48, block = 8, H = 4, G = 2, d = 64;
  for (KvCacheType type : {KvCacheType(DType::kF16, DType::kBF16),
                           KvCacheType(DType::kF32, DType::kF16)}) {
    KvLayout layout;
    layout.n_head_kv = G;
    layout.head_dim = d;
    layout.layer_slot = {0};
    layout.slot_raw_keys = {0};
    KVCache cc(layout, n_seq, n_ctx, type, Device::kCpu, block);
    KVCache gc(layout, n_seq, n_ctx, type, gpu_device(), block);
    const std::vector<int32_t> seq = {0, 0, 0, 0, 0, 1, 1, 1}, pos = {0, 1, 2, 3, 4, 0, 1, 2};
    const int rows = int(seq.size());
    const std::vector<ops::AttnRun> runs = {{0, 0, 5, 0}, {1, 5, 3, 0}};
    Pair K(randn(size_t(rows) * G * d, 300)), V(randn(size_t(rows) * G * d, 301)),
        Q(randn(size_t(rows) * H * d, 302));
    cpu().kv_store(cc.view(0), seq.data(), pos.data(), rows, K.cp(), V.cp());
    gpu().kv_store(gc.view(0), seq.data(), pos.data(), rows, K.gp(), V.gp());
    const std::string tag = "mixed " + type.name();
    EXPECT_EQ(region_bytes(gc, true), region_bytes(cc, true)) << tag << " keys";
    EXPECT_EQ(region_bytes(gc, false), region_bytes(cc, false)) << tag << " values";
    ops::RopeTable<float> rt;
    rt.build(d, n_ctx, ops::rope_inv_freq(d, 10000.0));
    Pair O = Pair::zeros(int64_t(rows) * H * d);
    cpu().attention_cached(cc.view(0), runs, Q.cp(), H, false, rt, O.cp());
    gpu().attention_cached(gc.view(0), runs, Q.gp(), H, false, rt, O.gp());
    O.expect(tag + " attention", kF32Tol);
  }
}

}  // namespace
}  // namespace mlkv::cuda_test
