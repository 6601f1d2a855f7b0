// Decode attention: a few query rows that read the same KV head (the query heads of one GQA/MQA
// group, at one position) against keys and values [len, d] in the cache, f32 or f16.
//
// Scores go 8 keys at a time: 8 accumulators of d-wide dot products, reduced together into one
// vector (no horizontal sum per key), with the 8 keys' rows staying in L1 while every query row of
// the group uses them. The weighted sum of values runs over blocks of keys and 64-wide slices of
// d, with the slice's accumulators in registers, so each value row is read from L1/L2 once per
// query row and from memory once per group. Softmax normalisation is folded into the output.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "kernels/simd.h"

namespace mlkv::ops {

namespace {

constexpr int kValueBlock =
    128;  // keys per block of the weighted value sum (32 KiB of f32 at d = 64: L1)

using simd::load1;
using simd::load8;

// [sum(a0), sum(a1), ..., sum(a7)]
inline __m256 reduce8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

float max_n(const float* x, int n) {
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_max_ps(m0, m1));
  float m = *std::max_element(t, t + 8);
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

template <typename E>
float dot_any(const float* q, const E* k, int d) {
  float s = 0;
  for (int i = 0; i < d; ++i) s += q[i] * load1(k + i);
  return s;
}

// scores[r, j] = scale * q_r . K_j for r < n_q, j < len. d % 8 == 0.
template <typename E>
void scores_block8(const float* q, int n_q, int ldq, const E* K, int len, int d, float scale,
                   float* scores) {
  const __m256 sc = _mm256_set1_ps(scale);
  int j0 = 0;
  for (; j0 + 8 <= len; j0 += 8) {
    const E* kb = K + int64_t{j0} * d;
    // The next block of keys (8 rows) while this one is used by every query row of the group.
    for (int64_t o = 0; o < int64_t{8} * d * int64_t(sizeof(E)); o += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(kb + 8 * d) + o, _MM_HINT_T0);
    }
    for (int r = 0; r < n_q; ++r) {
      const float* qr = q + int64_t{r} * ldq;
      __m256 acc[8];
      for (int k = 0; k < 8; ++k) acc[k] = _mm256_setzero_ps();
      for (int c = 0; c < d; c += 8) {
        const __m256 qv = _mm256_loadu_ps(qr + c);
        for (int k = 0; k < 8; ++k)
          acc[k] = _mm256_fmadd_ps(qv, load8(kb + int64_t{k} * d + c), acc[k]);
      }
      _mm256_storeu_ps(scores + int64_t{r} * len + j0, _mm256_mul_ps(reduce8(acc), sc));
    }
  }
  for (; j0 < len; ++j0) {
    for (int r = 0; r < n_q; ++r) {
      scores[int64_t{r} * len + j0] = scale * dot_any(q + int64_t{r} * ldq, K + int64_t{j0} * d, d);
    }
  }
}

// out[0, NV*8) (+)= sum_{j in [j0, j1)} p[j] V[j, 0, NV*8); V rows have stride d.
template <int NV, typename E>
void weighted_sum(const float* p, const E* V, int j0, int j1, int d, float* out, bool first) {
  __m256 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(out + 8 * v);
  for (int j = j0; j < j1; ++j) {
    const __m256 pj = _mm256_broadcast_ss(p + j);
    const E* vr = V + int64_t{j} * d;
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(pj, load8(vr + 8 * v), acc[v]);
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + 8 * v, acc[v]);
}

template <typename E>
void weighted_sum_any(int nv, const float* p, const E* V, int j0, int j1, int d, float* out,
                      bool first) {
  switch (nv) {
    case 1:
      return weighted_sum<1>(p, V, j0, j1, d, out, first);
    case 2:
      return weighted_sum<2>(p, V, j0, j1, d, out, first);
    case 3:
      return weighted_sum<3>(p, V, j0, j1, d, out, first);
    case 4:
      return weighted_sum<4>(p, V, j0, j1, d, out, first);
    case 5:
      return weighted_sum<5>(p, V, j0, j1, d, out, first);
    case 6:
      return weighted_sum<6>(p, V, j0, j1, d, out, first);
    case 7:
      return weighted_sum<7>(p, V, j0, j1, d, out, first);
    default:
      return weighted_sum<8>(p, V, j0, j1, d, out, first);
  }
}

template <typename E>
void attend_impl(const float* q, int n_q, int ldq, const E* K, const E* V, int len, int d,
                 float scale, float* out, int ldo, float* scores) {
  if (d % 8 != 0) {  // unusual head sizes: plain loops
    for (int r = 0; r < n_q; ++r) {
      float* s = scores + int64_t{r} * len;
      for (int j = 0; j < len; ++j)
        s[j] = scale * dot_any(q + int64_t{r} * ldq, K + int64_t{j} * d, d);
      const float inv = 1.0f / exp_sub_sum(s, len, max_n(s, len));
      float* o = out + int64_t{r} * ldo;
      std::fill(o, o + d, 0.0f);
      for (int j = 0; j < len; ++j) {
        for (int i = 0; i < d; ++i) o[i] += s[j] * inv * load1(V + int64_t{j} * d + i);
      }
    }
    return;
  }
  scores_block8(q, n_q, ldq, K, len, d, scale, scores);
  float inv[64];  // callers pass at most kMaxGroup rows
  for (int r = 0; r < n_q; ++r) {
    float* s = scores + int64_t{r} * len;
    inv[r] = 1.0f / exp_sub_sum(s, len, max_n(s, len));
  }
  for (int j0 = 0; j0 < len; j0 += kValueBlock) {
    const int j1 = std::min(len, j0 + kValueBlock);
    for (int c = 0; c < d; c += 64) {
      const int nv = std::min(8, (d - c) / 8);
      for (int r = 0; r < n_q; ++r) {
        weighted_sum_any(nv, scores + int64_t{r} * len, V + c, j0, j1, d,
                         out + int64_t{r} * ldo + c, j0 == 0);
      }
    }
  }
  for (int r = 0; r < n_q; ++r) {
    float* o = out + int64_t{r} * ldo;
    for (int i = 0; i < d; ++i) o[i] *= inv[r];
  }
}

}  // namespace

void attend_shared_kv(const float* q, int n_q, int ldq, const float* K, const float* V, int len,
                      int d, float scale, float* out, int ldo, float* scores) {
  for (int r0 = 0; r0 < n_q; r0 += kMaxGroup) {
    attend_impl(q + int64_t{r0} * ldq, std::min(kMaxGroup, n_q - r0), ldq, K, V, len, d, scale,
                out + int64_t{r0} * ldo, ldo, scores);
  }
}

void attend_shared_kv_f16(const float* q, int n_q, int ldq, const uint16_t* K, const uint16_t* V,
                          int len, int d, float scale, float* out, int ldo, float* scores) {
  for (int r0 = 0; r0 < n_q; r0 += kMaxGroup) {
    attend_impl(q + int64_t{r0} * ldq, std::min(kMaxGroup, n_q - r0), ldq, K, V, len, d, scale,
                out + int64_t{r0} * ldo, ldo, scores);
  }
}

}  // namespace mlkv::ops
