// Causal attention of a batch's query rows against the KV cache, for every sharing scheme.
// Work is split over (run, group of query heads) items. Query head h reads KV head h / (n_head /
// n_head_kv) of the slot that owns layer il's K/V. Keys are read as stored, except when a
// pre-rotary slot (pre sharing) is read by its owner: the owner attends with rotated keys, so it
// rotates a copy. Long runs (prefill) use two GEMMs per head; short runs (decode) go to
// ops::attend_shared_kv, one call per group of query heads that share a KV head, reading f32 or f16
// cache entries directly.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "kernels/blas/blas.h"
#include "model/model.h"

namespace mlkv {

namespace {

constexpr int kGemmMinRows = 16;    // runs at least this long use the GEMM path
constexpr int kGemmRowBlock = 128;  // rows per score block (bounds the scratch to block x ctx)

struct Scratch {
  std::vector<float> keys, values, scores;
  float* grow(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

// Keys [0, len) of one KV head as f32, rotated if the slot stores raw keys and the reader is the
// owner. Returns the cache memory itself when no conversion is needed.
const float* keys_f32(KVCache& cache, int slot, int seq, int kvh, int len, int d, bool rotate,
                      const ops::RopeTable<float>& rt, Scratch& s) {
  const bool f16 = cache.elem() == DType::kF16;
  if (!f16 && !rotate) return static_cast<const float*>(cache.k_ptr(slot, seq, kvh));
  float* buf = s.grow(s.keys, size_t(len) * d);
  if (f16) {
    f16_to_f32_n(static_cast<const uint16_t*>(cache.k_ptr(slot, seq, kvh)), buf, size_t(len) * d);
  } else {
    std::memcpy(buf, cache.k_ptr(slot, seq, kvh), size_t(len) * d * 4);
  }
  if (rotate) {
    std::vector<int32_t> pos(static_cast<size_t>(len));
    for (int j = 0; j < len; ++j) pos[static_cast<size_t>(j)] = j;
    ops::rope_forward<float>(buf, len, 1, d, pos.data(), rt);
  }
  return buf;
}

const float* values_f32(KVCache& cache, int slot, int seq, int kvh, int len, int d, Scratch& s) {
  if (cache.elem() != DType::kF16) return static_cast<const float*>(cache.v_ptr(slot, seq, kvh));
  float* buf = s.grow(s.values, size_t(len) * d);
  f16_to_f32_n(static_cast<const uint16_t*>(cache.v_ptr(slot, seq, kvh)), buf, size_t(len) * d);
  return buf;
}

// Rows of one run for one head via GEMM: S = Q K^T * scale, causal mask, softmax, O = S V.
void head_gemm(const float* q, int ldq, const float* K, const float* V, int n_rows, int pos0, int d,
               float scale, float* out, int ldo, Scratch& s) {
  for (int r0 = 0; r0 < n_rows; r0 += kGemmRowBlock) {
    const int rows = std::min(kGemmRowBlock, n_rows - r0);
    const int len = pos0 + r0 + rows;  // keys visible to the last row of the block
    float* S = s.grow(s.scores, size_t(rows) * len);
    blas::gemm(false, true, rows, len, d, scale, q + int64_t{r0} * ldq, ldq, K, d, 0.0f, S, len);
    for (int t = 0; t < rows; ++t) {
      float* row = S + int64_t{t} * len;
      const int visible = pos0 + r0 + t + 1;
      std::fill(row + visible, row + len, -INFINITY);
    }
    ops::softmax_rows(S, rows, len);
    blas::gemm(false, false, rows, d, len, 1.0f, S, len, V, d, 0.0f, out + int64_t{r0} * ldo, ldo);
  }
}

}  // namespace

// A unit of work: query heads [h0, h0 + nh) of one run. Decode items group the query heads that
// read one KV head (split further when there are too few items to keep every thread busy);
// GEMM items (long runs) are one head each.
struct Item {
  int run, h0, nh;
};

void attention_forward(const ModelConfig& c, KVCache& cache, int il, const ops::RopeTable<float>& rt,
                       const float* q, const std::vector<AttnRun>& runs, float* out) {
  const int H = c.n_head, G = c.n_head_kv, d = c.n_embd_head, rep = H / G;
  const int ldq = H * d;
  const int slot = cache.slot_of_layer(il);
  // Pre sharing: the slot holds raw keys; only the owner itself attends with rotated ones.
  const bool rotate = !cache.slot_keys_rotated(slot) && c.owns_kv(il);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const bool f16 = cache.elem() == DType::kF16;

  int n_decode = 0;
  for (const AttnRun& r : runs) n_decode += r.n_rows < kGemmMinRows;
  const int want = 2 * omp_get_max_threads();
  const int split = n_decode * G >= want
                        ? 1
                        : std::min(rep, (want + n_decode * G - 1) / std::max(1, n_decode * G));
  const int per = (rep + split - 1) / split;
  std::vector<Item> items;
  for (int ir = 0; ir < static_cast<int>(runs.size()); ++ir) {
    const bool gemm = runs[static_cast<size_t>(ir)].n_rows >= kGemmMinRows;
    for (int g = 0; g < G; ++g) {
      for (int h = g * rep; h < (g + 1) * rep; h += gemm ? 1 : per) {
        items.push_back({ir, h, gemm ? 1 : std::min(per, (g + 1) * rep - h)});
      }
    }
  }

#pragma omp parallel
  {
    Scratch s;
#pragma omp for schedule(dynamic, 1)
    for (size_t ii = 0; ii < items.size(); ++ii) {
      const Item& it = items[ii];
      const AttnRun& r = runs[static_cast<size_t>(it.run)];
      const int kvh = it.h0 / rep;
      const int len = r.pos0 + r.n_rows;
      const float* qh = q + int64_t{r.row0} * ldq + int64_t{it.h0} * d;
      float* oh = out + int64_t{r.row0} * ldq + int64_t{it.h0} * d;
      if (r.n_rows >= kGemmMinRows) {
        const float* K = keys_f32(cache, slot, r.seq, kvh, len, d, rotate, rt, s);
        const float* V = values_f32(cache, slot, r.seq, kvh, len, d, s);
        head_gemm(qh, ldq, K, V, r.n_rows, r.pos0, d, scale, oh, ldq, s);
        continue;
      }
      float* sc = s.grow(s.scores, size_t(std::min(it.nh, ops::kMaxAttendGroup)) * len);
      if (f16 && !rotate) {
        const auto* K = static_cast<const uint16_t*>(cache.k_ptr(slot, r.seq, kvh));
        const auto* V = static_cast<const uint16_t*>(cache.v_ptr(slot, r.seq, kvh));
        for (int t = 0; t < r.n_rows; ++t) {
          ops::attend_shared_kv_f16(qh + int64_t{t} * ldq, it.nh, d, K, V, r.pos0 + t + 1, d, scale,
                                    oh + int64_t{t} * ldq, d, sc);
        }
      } else {
        // Scratch copies only when converting (f16) or rotating (pre-sharing owner).
        const float* K = keys_f32(cache, slot, r.seq, kvh, len, d, rotate, rt, s);
        const float* V = values_f32(cache, slot, r.seq, kvh, len, d, s);
        for (int t = 0; t < r.n_rows; ++t) {
          ops::attend_shared_kv(qh + int64_t{t} * ldq, it.nh, d, K, V, r.pos0 + t + 1, d, scale,
                                oh + int64_t{t} * ldq, d, sc);
        }
      }
    }
  }
}

}  // namespace mlkv
