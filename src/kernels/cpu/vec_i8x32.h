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
