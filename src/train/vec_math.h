// Vectorised transcendental helpers for the float training kernels (AVX2 + FMA), internal to
// src/train. exp: Cephes-style range reduction (x = n ln2 + r) and a degree-6 polynomial,
// relative error ~1e-7 over the clamped range. erf: Abramowitz & Stegun 7.1.26, absolute error
// <= 1.5e-7, sharing its exp(-x^2) with the GELU derivative. The double path of the kernels uses
// std::exp / std::erf; these exist because libm calls cost 10-20 ns each and a training step
// evaluates ~10^8 of them (softmax, cross-entropy, GELU/SiLU and their derivatives).
#pragma once

#include <immintrin.h>

#include <cmath>

namespace mlkv::train::vec {

// e^x for 8 floats; inputs are clamped to [-87.3, 88] (so -inf gives ~1e-38, not 0; the upper
// bound keeps 2^n a finite float).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447504019f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two so that n * ln2_hi is exact.
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n through the exponent bits.
  __m256i n = _mm256_cvtps_epi32(fx);
  n = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(n));
}

inline float hsum8(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  lo = _mm_add_ps(lo, _mm256_extractf128_ps(v, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  lo = _mm_add_ss(lo, sh);
  return _mm_cvtss_f32(lo);
}

inline float hmax8(__m256 v) {
  __m128 lo = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_max_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// Scalar versions of the same approximations, for loop tails (so a row gets one formula).
inline float exp1(float x) {
  alignas(32) float b[8] = {x, 0, 0, 0, 0, 0, 0, 0};
  _mm256_store_ps(b, exp8(_mm256_load_ps(b)));
  return b[0];
}

// max of x[0, n)
inline float max_n(const float* x, int n) {
  int i = 0;
  float m = -INFINITY;
  if (n >= 8) {
    __m256 mv = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    m = hmax8(mv);
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// x[i] = exp(a * x[i] - b) for i in [0, n); returns the sum of the new values.
inline float exp_affine_sum(float* x, int n, float a, float b) {
  const __m256 av = _mm256_set1_ps(a), bv = _mm256_set1_ps(b);
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_fmsub_ps(av, _mm256_loadu_ps(x + i), bv));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float s = hsum8(acc);
  for (; i < n; ++i) {
    x[i] = exp1(a * x[i] - b);
    s += x[i];
  }
  return s;
}

// x[i] *= a for i in [0, n)
inline void scale_n(float* x, int n, float a) {
  const __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(av, _mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] *= a;
}

// Exact-erf GELU on 8 floats: returns gelu(x) and, through *deriv, gelu'(x).
//   gelu(x)  = x Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2
//   gelu'(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
inline __m256 gelu8(__m256 x, __m256* deriv) {
  const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));  // x / sqrt 2
  const __m256 az = _mm256_andnot_ps(sign_mask, z);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, one));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  const __m256 e = exp8(_mm256_mul_ps(_mm256_mul_ps(z, z), _mm256_set1_ps(-1.0f)));  // exp(-x^2/2)
  const __m256 erf_abs = _mm256_fnmadd_ps(p, e, one);
  const __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(z, sign_mask));
  const __m256 phi_cdf = _mm256_mul_ps(half, _mm256_add_ps(one, erf));
  if (deriv) {
    *deriv = _mm256_fmadd_ps(_mm256_mul_ps(x, e), _mm256_set1_ps(0.3989422804014327f), phi_cdf);
  }
  return _mm256_mul_ps(x, phi_cdf);
}

// tanh-approximation GELU ("gelu_new") on 8 floats, with its derivative.
//   u = k (x + c x^3), gelu = x (1 + tanh u) / 2,
//   gelu' = (1 + tanh u) / 2 + x (1 - tanh^2 u) k (1 + 3 c x^2) / 2
inline __m256 gelu_tanh8(__m256 x, __m256* deriv) {
  const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const __m256 k = _mm256_set1_ps(0.7978845608028654f), c = _mm256_set1_ps(0.044715f);
  const __m256 x2 = _mm256_mul_ps(x, x);
  const __m256 u = _mm256_mul_ps(k, _mm256_fmadd_ps(_mm256_mul_ps(c, x2), x, x));
  // tanh u = 1 - 2 / (1 + e^{2u})
  const __m256 e2u = exp8(_mm256_add_ps(u, u));
  const __m256 th =
      _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e2u)));
  const __m256 a = _mm256_mul_ps(half, _mm256_add_ps(one, th));
  if (deriv) {
    const __m256 sech2 = _mm256_fnmadd_ps(th, th, one);
    const __m256 du =
        _mm256_mul_ps(k, _mm256_fmadd_ps(_mm256_set1_ps(3.0f), _mm256_mul_ps(c, x2), one));
    *deriv = _mm256_fmadd_ps(_mm256_mul_ps(half, x), _mm256_mul_ps(sech2, du), a);
  }
  return _mm256_mul_ps(x, a);
}

// sigmoid on 8 floats
inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

}  // namespace mlkv::train::vec
