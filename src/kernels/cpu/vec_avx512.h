// The vector type of the AVX-512 kernel build: 16 floats in a zmm register (AVX-512 F/BW/VL/DQ),
// with the same operations as vec_avx2.h. Included by kernels_avx512.cpp inside namespace
// mlkv::ops::cpu::avx512 and an AVX-512 target region; needs <immintrin.h> before it.

inline constexpr int kLanes = 16;

struct V {
  __m512 v;
};

inline V vzero() { return {_mm512_setzero_ps()}; }
inline V vset1(float a) { return {_mm512_set1_ps(a)}; }
inline V vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline V vload(const uint16_t* p) {
  return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
inline V vload_bf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
}
inline V vload_i8(const int8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
}
inline V vload_u4(const uint8_t* p, bool high) {
  __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  if (high) w = _mm512_srli_epi32(w, 4);
  w = _mm512_sub_epi32(_mm512_and_si512(w, _mm512_set1_epi32(15)), _mm512_set1_epi32(8));
  return {_mm512_cvtepi32_ps(w)};
}
inline __mmask16 lane_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline V vload_partial(const float* p, int n) { return {_mm512_maskz_loadu_ps(lane_mask(n), p)}; }
// One element as f32 (tails).
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return _cvtsh_ss(*p); }
inline void vstore(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline void vstore_partial(float* p, V a, int n) { _mm512_mask_storeu_ps(p, lane_mask(n), a.v); }

inline V vadd(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V vsub(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline V vmul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V vdiv(V a, V b) { return {_mm512_div_ps(a.v, b.v)}; }
inline V vmax(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V vmin(V a, V b) { return {_mm512_min_ps(a.v, b.v)}; }
inline bool vany_nan(V a) { return _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q) != 0; }
// max that keeps a NaN of either operand.
inline V vmax_nan(V a, V b) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_max_ps(a.v, b.v), a.v)};
}
inline V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline V vfnma(V a, V b, V c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }
inline V vsqrt(V a) { return {_mm512_sqrt_ps(a.v)}; }
inline V vabs(V a) { return {_mm512_abs_ps(a.v)}; }
inline V vcopysign(V mag, V sgn) {
  const __m512 s = _mm512_set1_ps(-0.0f);
  return {_mm512_or_ps(_mm512_andnot_ps(s, mag.v), _mm512_and_ps(s, sgn.v))};
}

inline __m256 half_sum(__m512 a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}
inline float vsum(V a) {
  const __m256 h = half_sum(a.v);
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}
inline float vmaxall(V a) {
  const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
  __m128 lo = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_max_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
// a[i] lane j <-> a[j] lane i: a 16 x 16 transpose in registers (64 shuffles).
inline void vtranspose(V* a) {
  // 1: pairs of rows interleaved; per 128-bit lane L, t[2m] holds rows 2m, 2m + 1 of columns
  // 4L, 4L + 1 and t[2m + 1] of columns 4L + 2, 4L + 3.
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(a[i].v, a[i + 1].v);
    t[i + 1] = _mm512_unpackhi_ps(a[i].v, a[i + 1].v);
  }
  // 2: u[4g + m], lane L: rows 4g .. 4g + 3 of column 4L + c(m), c = {0, 2, 1, 3}.
  for (int g = 0; g < 4; ++g) {
    const __m512d t0 = _mm512_castps_pd(t[4 * g]), t1 = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d t2 = _mm512_castps_pd(t[4 * g + 2]), t3 = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
  // 3, 4: column 4L + c(m) gathers lane L of u[m], u[4 + m], u[8 + m], u[12 + m].
  constexpr int kCol[4] = {0, 2, 1, 3};
  for (int m = 0; m < 4; ++m) {
    const __m512 x = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88);   // lanes 0, 2 of each
    const __m512 y = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd);   // lanes 1, 3
    const __m512 z = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
    const __m512 w = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
    a[0 + kCol[m]].v = _mm512_shuffle_f32x4(x, z, 0x88);
    a[4 + kCol[m]].v = _mm512_shuffle_f32x4(y, w, 0x88);
    a[8 + kCol[m]].v = _mm512_shuffle_f32x4(x, z, 0xdd);
    a[12 + kCol[m]].v = _mm512_shuffle_f32x4(y, w, 0xdd);
  }
}
inline void vsum8(const V* a, float* out) {
  __m256 h[8];
  for (int k = 0; k < 8; ++k) h[k] = half_sum(a[k].v);
  const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                      _mm256_permute2f128_ps(u0, u1, 0x31)));
}

// e^x, the same algorithm and constants as vec_avx2.h (NaN for NaN).
inline V vexp(V xv) {
  __m512 x = xv.v;
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512 hi = _mm512_set1_ps(88.7228391f), lo = _mm512_set1_ps(-87.3365448f);
  const __mmask16 over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i ni = _mm512_cvtps_epi32(n);
  const __m512i h1 = _mm512_srai_epi32(ni, 1), h2 = _mm512_sub_epi32(ni, h1);
  const __m512i bias = _mm512_set1_epi32(127);
  const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(h1, bias), 23));
  const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(h2, bias), 23));
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
  y = _mm512_mask_blend_ps(over, y, _mm512_set1_ps(__builtin_inff()));
  y = _mm512_mask_blend_ps(under, y, _mm512_setzero_ps());
  return {_mm512_mask_blend_ps(nan, y, xv.v)};
}

#include "kernels/cpu/vec_i8x32.h"

inline void vprefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
