// Causal attention of a batch's query rows against the KV cache, for every sharing scheme.
// Work is split over (run, query head) pairs. Query head h reads KV head h / (n_head / n_head_kv)
// of the slot that owns layer il's K/V. Keys are read as stored, except when a pre-rotary slot
// (pre sharing) is read by its owner: the owner attends with rotated keys, so it rotates a copy.
// Long runs (prefill) use two GEMMs per head; short runs (decode) use dot/axpy loops that read
// f32 or f16 cache entries directly.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "model/model.h"

namespace mlkv {

namespace {

constexpr int kGemmMinRows = 16;   // runs at least this long use the GEMM path
constexpr int kGemmRowBlock = 128; // rows per score block (bounds the scratch to block x ctx)

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
                      const ops::RopeTable& rt, Scratch& s) {
  const bool f16 = cache.elem() == DType::kF16;
  if (!f16 && !rotate) return static_cast<const float*>(cache.k_ptr(slot, seq, kvh));
  float* buf = s.grow(s.keys, size_t(len) * d);
  if (f16) {
    f16_to_f32_n(static_cast<const uint16_t*>(cache.k_ptr(slot, seq, kvh)), buf, size_t(len) * d);
  } else {
    std::memcpy(buf, cache.k_ptr(slot, seq, kvh), size_t(len) * d * 4);
  }
  if (rotate) {
    std::vector<int> pos(static_cast<size_t>(len));
    for (int j = 0; j < len; ++j) pos[static_cast<size_t>(j)] = j;
    ops::rope_apply(buf, len, 1, d, pos.data(), rt);
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
void head_gemm(const float* q, int ldq, const float* K, const float* V, int n_rows, int pos0,
               int d, float scale, float* out, int ldo, Scratch& s) {
  for (int r0 = 0; r0 < n_rows; r0 += kGemmRowBlock) {
    const int rows = std::min(kGemmRowBlock, n_rows - r0);
    const int len = pos0 + r0 + rows;  // keys visible to the last row of the block
    float* S = s.grow(s.scores, size_t(rows) * len);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, len, d, scale,
                q + int64_t{r0} * ldq, ldq, K, d, 0.0f, S, len);
    for (int t = 0; t < rows; ++t) {
      float* row = S + int64_t{t} * len;
      const int visible = pos0 + r0 + t + 1;
      std::fill(row + visible, row + len, -INFINITY);
    }
    ops::softmax_rows(S, rows, len);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, len, 1.0f, S, len, V, d, 0.0f,
                out + int64_t{r0} * ldo, ldo);
  }
}

// One query row against keys [0, len): scores, softmax, weighted sum of values.
template <typename Elem>
void row_attend(const float* qv, const Elem* K, const Elem* V, int len, int d, float scale,
                float* out, Scratch& s) {
  float* sc = s.grow(s.scores, size_t(len));
  float mx = -INFINITY;
  for (int j = 0; j < len; ++j) {
    float v;
    if constexpr (sizeof(Elem) == 2) {
      v = ops::dot_f16(qv, K + int64_t{j} * d, d);
    } else {
      v = ops::dot(qv, K + int64_t{j} * d, d);
    }
    sc[j] = v * scale;
    mx = std::max(mx, sc[j]);
  }
  const float inv = 1.0f / ops::exp_sub_sum(sc, len, mx);
  std::fill(out, out + d, 0.0f);
  for (int j = 0; j < len; ++j) {
    if constexpr (sizeof(Elem) == 2) {
      ops::axpy_f16(sc[j] * inv, V + int64_t{j} * d, out, d);
    } else {
      ops::axpy(sc[j] * inv, V + int64_t{j} * d, out, d);
    }
  }
}

}  // namespace

void attention_forward(const ModelConfig& c, KVCache& cache, int il, const ops::RopeTable& rt,
                       const float* q, const std::vector<AttnRun>& runs, float* out) {
  const int H = c.n_head, d = c.n_embd_head, rep = c.n_head / c.n_head_kv;
  const int ldq = H * d;
  const int slot = cache.slot_of_layer(il);
  // Pre sharing: the slot holds raw keys; only the owner itself attends with rotated ones.
  const bool rotate = !cache.slot_keys_rotated(slot) && c.owns_kv(il);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int n_items = static_cast<int>(runs.size()) * H;

#pragma omp parallel
  {
    Scratch s;
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < n_items; ++item) {
      const AttnRun& r = runs[static_cast<size_t>(item / H)];
      const int h = item % H, kvh = h / rep;
      const int len = r.pos0 + r.n_rows;
      const float* qh = q + int64_t{r.row0} * ldq + int64_t{h} * d;
      float* oh = out + int64_t{r.row0} * ldq + int64_t{h} * d;
      if (r.n_rows >= kGemmMinRows || rotate) {
        const float* K = keys_f32(cache, slot, r.seq, kvh, len, d, rotate, rt, s);
        const float* V = values_f32(cache, slot, r.seq, kvh, len, d, s);
        if (r.n_rows >= kGemmMinRows) {
          head_gemm(qh, ldq, K, V, r.n_rows, r.pos0, d, scale, oh, ldq, s);
        } else {
          for (int t = 0; t < r.n_rows; ++t) {
            row_attend<float>(qh + int64_t{t} * ldq, K, V, r.pos0 + t + 1, d, scale,
                              oh + int64_t{t} * ldq, s);
          }
        }
        continue;
      }
      for (int t = 0; t < r.n_rows; ++t) {
        const int visible = r.pos0 + t + 1;
        if (cache.elem() == DType::kF16) {
          row_attend<uint16_t>(qh + int64_t{t} * ldq,
                               static_cast<const uint16_t*>(cache.k_ptr(slot, r.seq, kvh)),
                               static_cast<const uint16_t*>(cache.v_ptr(slot, r.seq, kvh)), visible, d,
                               scale, oh + int64_t{t} * ldq, s);
        } else {
          row_attend<float>(qh + int64_t{t} * ldq, static_cast<const float*>(cache.k_ptr(slot, r.seq, kvh)),
                            static_cast<const float*>(cache.v_ptr(slot, r.seq, kvh)), visible, d, scale,
                            oh + int64_t{t} * ldq, s);
        }
      }
    }
  }
}

}  // namespace mlkv
