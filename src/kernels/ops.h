// Op signatures: the forward kernels of the decoder, on raw f32 pointers with explicit sizes.
// Implementations: kernels/*.cpp (AVX2/FMA where it pays, OpenMP-parallel, BLAS for large GEMMs);
// kernels/ref.h holds scalar reference versions that the unit tests compare against.
// Conventions: row-major; a weight matrix is [n_out, n_in] as stored in checkpoints; shapes in
// comments; outputs never alias inputs unless stated.
#pragma once

#include <cstdint>
#include <vector>

namespace mlkv::ops {

// y[T, N] = x[T, K] @ w[N, K]^T (+ b[N]). accumulate: y += instead of y =.
// T <= 32 streams w once (a multi-row GEMV, token rows in register tiles); larger T goes to
// OpenBLAS sgemm.
void matmul(const float* x, const float* w, const float* b, float* y, int T, int K, int N,
            bool accumulate = false);

// The same with w stored as IEEE f16 [N, K] (half the bytes to stream in decode).
void matmul_f16(const float* x, const uint16_t* w, const float* b, float* y, int T, int K, int N,
                bool accumulate = false);

// y = LayerNorm(x) * w + b per row of x[T, E]. mean/rstd ([T], optional) are saved for backward.
void layernorm_forward(const float* x, const float* w, const float* b, float* y, int T, int E,
                       float eps, float* mean = nullptr, float* rstd = nullptr);
// y = x * rsqrt(mean(x^2) + eps) * w per row. rstd ([T], optional) saved for backward.
void rmsnorm_forward(const float* x, const float* w, float* y, int T, int E, float eps,
                     float* rstd = nullptr);

// Exact GELU: 0.5 x (1 + erf(x / sqrt 2)); tanh_approx: the tanh form ("gelu_new").
void gelu_forward(const float* x, float* y, int64_t n, bool tanh_approx);
// SwiGLU: y = silu(gate) * up.
void swiglu_forward(const float* gate, const float* up, float* y, int64_t n);

// Rotary position embedding tables: cos/sin of pos * theta^(-2i/n_rot), [n_pos, n_rot/2].
struct RopeTable {
  int n_rot = 0;
  int n_pos = 0;
  std::vector<float> cos, sin;
  // inv_freq: the n_rot / 2 inverse frequencies (rope_inv_freq, scaled by the caller if need be).
  void build(int n_rot, int n_pos, const std::vector<double>& inv_freq);
};
// theta^(-2i / n_rot) for i < n_rot / 2, in double.
std::vector<double> rope_inv_freq(int n_rot, double theta);

// Rotates the first n_rot dims of every head of x[T, n_heads, head_dim] in place, rotate-half
// layout: pairs (i, i + n_rot/2), angle pos[t] * inv_freq[i]. inverse: rotate by -angle.
void rope_apply(float* x, int T, int n_heads, int head_dim, const int* pos, const RopeTable& rt,
                bool inverse = false);

// x[i] = exp(x[i] - shift) in place; returns the sum of the results.
float exp_sub_sum(float* x, int n, float shift);

// In-place softmax of each row of x[rows, n] (max-subtracted).
void softmax_rows(float* x, int rows, int n);

// y[i] += a * x[i]
void axpy(float a, const float* x, float* y, int64_t n);
float dot(const float* a, const float* b, int64_t n);

// Same with f16 (IEEE half) second operand, converted on the fly (F16C): KV caches in f16.
float dot_f16(const float* a, const uint16_t* b, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);

// Decode attention of n_q query rows q[r * ldq + i] that read the same KV head: out[r * ldo + i] =
// softmax(scale * q_r K^T) V over keys and values [len, d]. scores: scratch of
// min(n_q, kMaxGroup) * len floats. The f16 form reads an f16 cache directly.
constexpr int kMaxGroup = 64;
void attend_shared_kv(const float* q, int n_q, int ldq, const float* K, const float* V, int len,
                      int d, float scale, float* out, int ldo, float* scores);
void attend_shared_kv_f16(const float* q, int n_q, int ldq, const uint16_t* K, const uint16_t* V,
                          int len, int d, float scale, float* out, int ldo, float* scores);

// Log-softmax of one row, returning logsumexp (so log p(i) = x[i] - lse).
float logsumexp(const float* x, int n);

}  // namespace mlkv::ops
