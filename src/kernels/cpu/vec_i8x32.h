// Blocks of 32 int8 values in a 256-bit register: the integer dot products of attention over
// q8_0 / q4_0 keys (attend-inl.h), the same for the AVX2 and AVX-512 builds (included by
// vec_avx2.h and vec_avx512.h; the AVX-512 region built with MLKV_VNNI uses dpbusd). vec_scalar.h
// defines the same names one product at a time.

struct I8x32 {
  __m256i v;
};
struct I32Sums {  // partial sums of one block's 32 products, summed by isum8
  __m256i v;
};
inline I8x32 iload32(const int8_t* p) { return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))}; }
// 32 values in [-8, 7] from 16 bytes of nibbles: value j in the low nibble of byte j, value j + 16
// in its high nibble.
inline I8x32 iload_q4(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i w = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return {_mm256_sub_epi8(_mm256_and_si256(w, _mm256_set1_epi8(15)), _mm256_set1_epi8(8))};
}
inline I8x32 iabs(I8x32 q) { return {_mm256_abs_epi8(q.v)}; }
// The products q_i k_i as |q_i| (k_i with the sign of q_i), summed in fours: one dpbusd with
// AVX-512 VNNI, else unsigned x signed bytes summed in pairs (maddubs; |q|, |k| <= 127 keep the
// pair sums below the int16 limit, core/quant.h), then madd.
inline I32Sums idot(I8x32 aq, I8x32 q, I8x32 k) {
  const __m256i s = _mm256_sign_epi8(k.v, q.v);
#ifdef MLKV_VNNI
  return {_mm256_dpbusd_epi32(_mm256_setzero_si256(), aq.v, s)};
#else
  return {_mm256_madd_epi16(_mm256_maddubs_epi16(aq.v, s), _mm256_set1_epi16(1))};
#endif
}
// out[k] = the sum of a[k]'s lanes for k < 8, as f32 (exact: |sums| < 2^24).
inline void isum8(const I32Sums* a, float* out) {
  const __m256i t0 = _mm256_hadd_epi32(a[0].v, a[1].v), t1 = _mm256_hadd_epi32(a[2].v, a[3].v);
  const __m256i t2 = _mm256_hadd_epi32(a[4].v, a[5].v), t3 = _mm256_hadd_epi32(a[6].v, a[7].v);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
  const __m256i s = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                                     _mm256_permute2x128_si256(u0, u1, 0x31));
  _mm256_storeu_ps(out, _mm256_cvtepi32_ps(s));
}

// ---- quantizing a block of 32 floats, and f32 sums of blocks (the q8_0 x q8_0 GEMV) ----

// quantize_query_q8's rule (core/quant.h) for one block x[0, 32): q = round(x / d) (half away from
// zero, as std::lround), d = max|x| / 127 returned; a block holding a NaN or an infinity gives
// q = 0 and d = NaN. The same IEEE operations in the same order as the definition, so the results
// are identical: |x|'s maximum, d = amax / 127, id = 1 / d (0 when d = 0 or 1 / d overflows),
// v = x id, then round(v) = trunc(v) + sign(v) where |v - trunc(v)| >= 0.5 (exact: the fraction of
// a float below 2^23 is a float).
inline float iquantize32(const float* x, int8_t* q) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4], amax = _mm256_setzero_ps();
  int finite = 0xFF;
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    const __m256 a = _mm256_andnot_ps(sign, v[i]);
    finite &= _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(__builtin_inff()), _CMP_LT_OQ));
    amax = _mm256_max_ps(amax, a);
  }
  if (finite != 0xFF) {
    std::memset(q, 0, 32);
    return __builtin_nanf("");
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  const float d = _mm_cvtss_f32(m) / 127.0f;
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  const __m256 id = _mm256_set1_ps(inv != __builtin_inff() ? inv : 0.0f);
  __m256i r[4];
  for (int i = 0; i < 4; ++i) {
    const __m256 s = _mm256_mul_ps(v[i], id);
    const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_andnot_ps(sign, _mm256_sub_ps(s, t));
    const __m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, s));  // +-1
    const __m256 up = _mm256_and_ps(_mm256_cmp_ps(f, _mm256_set1_ps(0.5f), _CMP_GE_OQ), step);
    r[i] = _mm256_cvttps_epi32(_mm256_add_ps(t, up));
  }
  // int32 -> int8 (|r| <= 127, no saturation): the packs interleave 128-bit lanes, the permute
  // puts the 8 groups of four back in order.
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  return d;
}

struct F32x8 {  // 8 partial f32 sums
  __m256 v;
};
inline F32x8 fzero8() { return {_mm256_setzero_ps()}; }
// acc + s scale, lane by lane: the partial sums of one block's integer products (exact in f32,
// |s| < 2^24) times the block's scale.
inline F32x8 ifma(I32Sums s, float scale, F32x8 acc) {
  return {_mm256_fmadd_ps(_mm256_cvtepi32_ps(s.v), _mm256_set1_ps(scale), acc.v)};
}
inline float fsum8(F32x8 a) {
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}
