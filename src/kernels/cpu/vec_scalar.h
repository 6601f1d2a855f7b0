// The "vector" type of the scalar kernel build: one float, with the same operations as
// vec_avx2.h written in portable C++ (no intrinsics). The kernels built on it are the fallback
// path and a check of the kernels' blocking and tail logic independent of any SIMD unit.
// Included by kernels_scalar.cpp inside namespace mlkv::ops::cpu::scalar; needs <cmath>,
// <cstring> and core/half.h before it.

inline constexpr int kLanes = 1;

struct V {
  float v;
};

inline V vzero() { return {0.0f}; }
inline V vset1(float a) { return {a}; }
inline V vload(const float* p) { return {*p}; }
inline V vload(const uint16_t* p) { return {f16_to_f32(*p)}; }
inline V vload_bf16(const uint16_t* p) { return {bf16_to_f32(*p)}; }
inline V vload_i8(const int8_t* p) { return {static_cast<float>(*p)}; }
inline V vload_u4(const uint8_t* p, bool high) {
  return {static_cast<float>(((high ? *p >> 4 : *p) & 15) - 8)};
}
inline V vload_partial(const float* p, int n) { return {n > 0 ? *p : 0.0f}; }
// One element as f32 (tails).
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return f16_to_f32(*p); }
inline void vstore(float* p, V a) { *p = a.v; }
inline void vstore_partial(float* p, V a, int n) {
  if (n > 0) *p = a.v;
}

inline V vadd(V a, V b) { return {a.v + b.v}; }
inline V vsub(V a, V b) { return {a.v - b.v}; }
inline V vmul(V a, V b) { return {a.v * b.v}; }
inline V vdiv(V a, V b) { return {a.v / b.v}; }
inline V vmax(V a, V b) { return {a.v > b.v ? a.v : b.v}; }
inline V vmin(V a, V b) { return {a.v < b.v ? a.v : b.v}; }
inline bool vany_nan(V a) { return a.v != a.v; }
inline V vmax_nan(V a, V b) { return {a.v != a.v ? a.v : b.v != b.v ? b.v : a.v > b.v ? a.v : b.v}; }
inline V vfma(V a, V b, V c) { return {std::fma(a.v, b.v, c.v)}; }
inline V vfnma(V a, V b, V c) { return {std::fma(-a.v, b.v, c.v)}; }
inline V vsqrt(V a) { return {std::sqrt(a.v)}; }
inline V vabs(V a) { return {std::fabs(a.v)}; }
inline V vcopysign(V mag, V sgn) { return {std::copysign(mag.v, sgn.v)}; }

inline float vsum(V a) { return a.v; }
inline float vmaxall(V a) { return a.v; }
// A 1 x 1 transpose: nothing to do (the interface of the vector builds).
inline void vtranspose(V*) {}
inline void vsum8(const V* a, float* out) {
  for (int k = 0; k < 8; ++k) out[k] = a[k].v;
}

// e^x, the same algorithm and constants as vec_avx2.h, one value at a time.
inline V vexp(V xv) {
  float x = xv.v;
  if (x != x) return {x};  // NaN
  if (x > 88.7228391f) return {__builtin_inff()};
  if (x < -87.3365448f) return {0.0f};
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(-n, 0.693359375f, x);
  r = std::fma(-n, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r + 1.0f);
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t h1 = ni >> 1, h2 = ni - h1;
  const uint32_t b1 = static_cast<uint32_t>(h1 + 127) << 23, b2 = static_cast<uint32_t>(h2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  return {p * s1 * s2};
}

// ---- blocks of 32 int8 values: as in vec_avx2.h, one product at a time ----
struct I8x32 {
  int8_t v[32];
};
struct I32Sums {
  int32_t s;
};
inline I8x32 iload32(const int8_t* p) {
  I8x32 r;
  std::memcpy(r.v, p, 32);
  return r;
}
inline I8x32 iload_q4(const uint8_t* p) {
  I8x32 r;
  for (int j = 0; j < 16; ++j) {
    r.v[j] = static_cast<int8_t>((p[j] & 15) - 8);
    r.v[j + 16] = static_cast<int8_t>((p[j] >> 4) - 8);
  }
  return r;
}
inline I8x32 iabs(I8x32 q) {
  for (int8_t& x : q.v) x = static_cast<int8_t>(x < 0 ? -x : x);
  return q;
}
inline I32Sums idot(I8x32 aq, I8x32 q, I8x32 k) {
  int32_t s = 0;
  for (int i = 0; i < 32; ++i) s += int32_t{aq.v[i]} * (q.v[i] < 0 ? -k.v[i] : q.v[i] > 0 ? k.v[i] : 0);
  return {s};
}
inline void isum8(const I32Sums* a, float* out) {
  for (int k = 0; k < 8; ++k) out[k] = static_cast<float>(a[k].s);
}
inline float iquantize32(const float* x, int8_t* q) {
  float d;
  quantize_query_q8(x, q, &d, 32);
  return d;
}
struct F32x8 {
  float s;
};
inline F32x8 fzero8() { return {0.0f}; }
inline F32x8 ifma(I32Sums s, float scale, F32x8 acc) { return {std::fma(static_cast<float>(s.s), scale, acc.s)}; }
inline float fsum8(F32x8 a) { return a.s; }

inline void vprefetch(const void* p) { __builtin_prefetch(p); }
