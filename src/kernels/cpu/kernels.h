// The per-instruction-set micro-kernels of the CPU backend: one table of function pointers per
// build (scalar, AVX2, AVX-512; kernels/cpu/isa.h), all built from the same source
// (kernels/cpu/*-inl.h). Every entry is single-threaded and works on f32 (f16 only where stated);
// the threading, blocking across cores and BLAS calls are in kernels/cpu/*.cpp, which pick the
// table with kernels() once per call.
#pragma once

#include <cstdint>

#include "kernels/cpu/isa.h"
#include "kernels/types.h"

namespace mlkv::ops::cpu {

using ops::AdamWStep;
using ops::KvChunk;

// The element formats of KV-cache rows the kernels read: f32, f16, bf16, q8_0, q4_0.
inline constexpr int kNumKvFormats = 5;
// The index of a format in the kernel tables; MLKV_CHECK-fails for another type.
int kv_format_index(DType t);
// The weight formats of the decode GEMV: f32, f16, bf16, q8_0, indexed as by kv_format_index.
inline constexpr int kNumWeightFormats = 4;

struct Kernels {
  Isa isa;

  // ---- matrix-vector products for decode: T <= kMaxGemvRows token rows x of length K ----
  // Per weight format (kv_format_index: 0 f32, 1 f16, 2 bf16, 3 q8_0 with K a multiple of 32):
  // out[t * 4 + j] = x_t . w_j for the 4 weight rows w_j at w + j dtype_row_bytes(format, K)
  // (row-major [4, K]).
  void (*gemv4[kNumWeightFormats])(const float* x, const void* w, int T, int64_t K, float* out);
  // out[t * 4 + j] for j < rows < 4 (the last, partial block of a matrix).
  void (*gemv_tail[kNumWeightFormats])(const float* x, const void* w, int rows, int T, int64_t K,
                                       float* out);
  // q8_0 weights against token rows rounded to q8 blocks (gemv_int-inl.h), T <= kMaxGemvRows:
  // xq [T, K] int8 and xd [T, K / 32] f32 scales as quantize_q8 writes them; out[t * 4 + j] =
  // sum over blocks b of d_w[j, b] xd[t, b] (q_w[j, b] . xq[t, b]), each block's sum an exact
  // integer (linear.cpp uses it for T <= kMaxGemvIntRows).
  void (*gemv4_q8_int)(const int8_t* xq, const float* xd, const void* w, int T, int64_t K,
                       float* out);
  void (*gemv_tail_q8_int)(const int8_t* xq, const float* xd, const void* w, int rows, int T,
                           int64_t K, float* out);
  // x[0, n) (n a multiple of 32) as quantize_query_q8 (core/quant.h) rounds it: q[n] int8 and
  // d[n / 32] block scales; the same numbers as the definition, bit for bit.
  void (*quantize_q8)(const float* x, int8_t* q, float* d, int64_t n);

  // Weights in panels of 16 rows (core/quant.h; gemv_panels-inl.h), any T, per element format
  // (0 f32 DType::kF32P16, 1 f16 kF16P16, 2 bf16 kBF16P16): out[t * ldo + i] (+)= x_t . w_i for
  // t < T and the rows i < 16 n_panels of the n_panels panels at w (x [T, K] row-major;
  // accumulate: add to out, else write it).
  void (*gemv_panels[3])(const float* x, int T, int64_t K, const void* w, int n_panels, float* out,
                         int64_t ldo, bool accumulate);

  // ---- decode attention over KV-cache rows, per element format (kv_format_index) ----
  // scores[r * lds + j] = scale q_r . K_j over the chunks' positions in order (key rows of d
  // values, row_bytes apart, in the format; q8_0 / q4_0 keys: integer dot products with q_r as
  // quantize_query_q8 rounds it, see int_key_scores).
  void (*attn_scores[kNumKvFormats])(const float* q, int n_q, int ldq, const KvChunk* chunks,
                                     int n_chunks, int d, size_t row_bytes, float scale,
                                     float* scores, int64_t lds);
  // out[r * ldo + i] = sum_j p[r * ldp + j] V_j[i] (writes).
  void (*attn_values[kNumKvFormats])(const float* p, int n_q, int64_t ldp, const KvChunk* chunks,
                                     int n_chunks, int d, size_t row_bytes, float* out, int ldo);
  // n_rows rows of d values in the format, row_bytes apart, widened to f32 [n_rows, d].
  void (*rows_to_f32[kNumKvFormats])(const char* src, size_t row_bytes, int n_rows, int d,
                                     float* dst);

  // ---- rows and element-wise ----
  float (*max_n)(const float* x, int64_t n);                   // max of x[0, n); -inf for n = 0
  float (*exp_sub_sum)(float* x, int64_t n, float shift);      // x = e^(x - shift); returns sum
  void (*scale_n)(float* x, int64_t n, float a);               // x *= a
  void (*add_n)(float* y, const float* x, int64_t n);          // y += x
  float (*dot_n)(const float* a, const float* b, int64_t n);   // a . b

  // GELU (exact erf, or the tanh form) and SwiGLU, forward and backward. Backward writes
  // dx = dy * f'(x) (dx may alias dy) and y = f(x) when y is not null.
  void (*gelu_fwd)(const float* x, float* y, int64_t n, bool tanh_form);
  void (*gelu_bwd)(const float* x, const float* dy, float* dx, float* y, int64_t n, bool tanh_form);
  void (*swiglu_fwd)(const float* gate, const float* up, float* y, int64_t n);
  void (*swiglu_bwd)(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                     float* y, int64_t n);

  // One row of E values: y = (x - mean) rstd w + b (b may be null); *mean, *rstd returned.
  void (*layernorm_row)(const float* x, const float* w, const float* b, float* y, int E, float eps,
                        float* mean, float* rstd);
  // y = x rstd w, rstd = 1 / sqrt(mean(x^2) + eps).
  void (*rmsnorm_row)(const float* x, const float* w, float* y, int E, float eps, float* rstd);
  // dx += rstd (g - mean(g) - xhat mean(g xhat)), g = dy w (LayerNorm; mean = 0 and no mean(g)
  // term for RMSNorm when rms is true).
  void (*norm_bwd_row)(const float* dy, const float* x, const float* w, float mean, float rstd,
                       float* dx, int E, bool rms);
  // Column sums over rows [0, n) for columns [i0, i1) (i1 - i0 <= 64): dw[i] += sum_t dy[t, i]
  // xhat[t, i], db[i] += sum_t dy[t, i] (db may be null; xhat = (x - mean) rstd).
  void (*norm_bwd_cols)(const float* dy, const float* x, const float* mean, const float* rstd,
                        int n, int E, int i0, int i1, float* dw, float* db);
  // db[i] += sum_t dy[t, i] over rows [0, n), columns [i0, i1) (i1 - i0 <= 64).
  void (*colsum)(const float* dy, int n, int N, int i0, int i1, float* db);

  // Rotary on the n_heads head vectors of one row x [n_heads, head_dim] (rotate-half layout):
  // pairs (i, i + half) of each head rotated by the angle with cosine c[i] and sine sign * s[i].
  void (*rope_row)(float* x, int n_heads, int head_dim, const float* c, const float* s, int half,
                   float sign);

  // One AdamW update of n parameters (optimizer.h has the formula); zero_grad also sets g = 0.
  void (*adamw)(float* p, float* g, float* m, float* v, int64_t n, const AdamWStep& h,
                bool zero_grad);
};

// Whether attention over keys stored in this format reads them by integer dot products
// (attend-inl.h: q8_0 / q4_0 keys, heads of a multiple of 32 values up to kMaxIntHeadDim): the
// query rows are then read as quantize_query_q8 (core/quant.h) rounds them, in decode and, for the
// same numbers, in prefill (attention_cache.cpp).
inline constexpr int kMaxIntHeadDim = 256;
inline bool int_key_scores(DType k_dtype, int head_dim) {
  return (k_dtype == DType::kQ8_0 || k_dtype == DType::kQ4_0) && head_dim % 32 == 0 &&
         head_dim <= kMaxIntHeadDim;
}

// T above this uses sgemm rather than the streaming GEMV (sgemm packs the weights on every call;
// measured, it only wins beyond 32 rows).
inline constexpr int kMaxGemvRows = 32;
// q8_0 weights multiply activations rounded to q8 blocks on every path (linear.cpp); at most this
// many token rows take the integer GEMV (gemv4_q8_int), more the f32 one over the rounded rows.
inline constexpr int kMaxGemvIntRows = 4;
// Most query rows one attend call takes.
inline constexpr int kMaxGroup = 64;

// The table of the active path (isa.h) and of a given one (which must be supported).
const Kernels& kernels();
const Kernels& kernels_for(Isa isa);

// Defined by kernels_{scalar,avx2,avx512}.cpp.
const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();
// The AVX-512 table without its VNNI entries (tests compare the two on a CPU with VNNI).
const Kernels& avx512_kernels_without_vnni();

}  // namespace mlkv::ops::cpu
