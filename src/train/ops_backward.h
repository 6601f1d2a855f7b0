// Training kernels: every op of both model families as a forward/backward pair, templated on the
// float type. float is the training path (BLAS sgemm, AVX2 exp/erf); double is the reference path
// the finite-difference gradient checks run (dgemm, libm), so the checks test the very code that
// trains. Instantiated for float and double in ops_backward.cpp / ops_attention.cpp.
//
// Conventions (see also kernels/ops.h): row-major; a weight is [n_out, n_in]; "rows" are tokens,
// n_rows = batch * ctx with row t = b * ctx + s at position s. Parameter gradients always
// ACCUMULATE (+=) so that shared and tied parameters and gradient accumulation need no copies;
// input gradients accumulate too unless a comment says "writes". Zeroing is the caller's.
// All reductions have a fixed order (never one that depends on the thread count or the schedule),
// so a step is bit-for-bit reproducible: what checkpoint/resume identity relies on.
#pragma once

#include <cstdint>
#include <vector>

namespace mlkv::train {

// C[M, N] = alpha * op(A) op(B) + beta * C; op transposes when trans_*. BLAS underneath.
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

// ---- linear: y[n, N] (+)= x[n, K] w[N, K]^T + b[N] (b may be null; accumulate: y +=) ----
template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, int n, int K, int N,
                    bool accumulate = false);
// dx[n, K] (+)= dy w (accumulate_dx selects += or =; dx may be null); dw += dy^T x; db += sum dy.
template <typename T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, int n, int K, int N,
                     bool accumulate_dx = true);

// db[N] += column sums of dy[n, N]. Columns split across threads, rows summed in order.
template <typename T>
void colsum_add(const T* dy, int n, int N, T* db);

// ---- LayerNorm / RMSNorm over rows of x[n, E] ----
// y = (x - mean) * rstd * w + b; saves mean[n], rstd[n].
template <typename T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int n, int E,
                       T eps);
// dx += ..., dw += sum dy * xhat, db += sum dy (db may be null).
template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                        T* dw, T* db, int n, int E);
// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps); saves rstd[n].
template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int n, int E, T eps);
template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int n,
                      int E);

// ---- activations (element-wise over n values) ----
template <typename T>
void gelu_forward(const T* x, T* y, int64_t n, bool tanh_approx);
// Writes dx = dy * gelu'(x) (dx may alias dy) and, when y is not null, y = gelu(x): the backward
// pass recomputes the activation instead of storing it.
template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, T* y, int64_t n, bool tanh_approx);
// y = silu(gate) * up
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n);
// Writes dgate = dy * up * silu'(gate) (may alias dy), dup = dy * silu(gate), and y = silu(gate) *
// up when y is not null.
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, T* y, int64_t n);

// ---- rotary position embedding, rotate-half layout ----
// cos/sin of pos * inv_freq[i] for pos in [0, n_pos), i in [0, n_rot / 2), computed in double
// (the same values as kernels/ops.h RopeTable).
template <typename T>
struct RopeTab {
  int n_rot = 0, n_pos = 0;
  std::vector<T> cos, sin;  // [n_pos, n_rot / 2]
  // inv_freq: the n_rot / 2 inverse frequencies (ModelConfig::rope_inv_freq, scaling applied).
  void build(int n_rot, int n_pos, const std::vector<double>& inv_freq);
};
// Rotates the first n_rot dims of every head of x[n, n_heads, head_dim] in place; row t is at
// position t % ctx. inverse rotates by -angle, which is also the backward pass (a rotation's
// transpose is its inverse): rope_backward(dx) == rope_forward(dx, inverse = true).
template <typename T>
void rope_forward(T* x, int n, int n_heads, int head_dim, int ctx, const RopeTab<T>& tab,
                  bool inverse = false);
template <typename T>
void rope_backward(T* dx, int n, int n_heads, int head_dim, int ctx, const RopeTab<T>& tab) {
  rope_forward(dx, n, n_heads, head_dim, ctx, tab, /*inverse=*/true);
}

// ---- embedding ----
// Writes x[t] = table[tok[t]].
template <typename T>
void embedding_forward(const int32_t* tok, const T* table, T* x, int n, int E);
// dtable[tok[t]] += dx[t], rows in order (deterministic).
template <typename T>
void embedding_backward(const int32_t* tok, const T* dx, T* dtable, int n, int E);

// ---- cross-entropy on logits rows ----
// For each row of logits[n, V]: loss[t] = logsumexp - logits[t, target[t]]. With grad, replaces the
// row in place by scale * (softmax - onehot(target)) (the logits are consumed). Returns the sum of
// the row losses, added in row order in double.
template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int n, int V, T scale,
                                      bool grad, T* row_loss_scratch);

// ---- causal attention with grouped KV heads ----
// q[b * ctx + s, H, d]; k, v[b * ctx + s, G, d]; query head h reads KV head h / (H / G); row s of a
// sequence sees keys 0..s of the same sequence; scale 1 / sqrt(d). Outputs o[n, H, d] and the
// softmax log-normaliser lse[B, H, ctx] that the backward pass uses to recompute probabilities
// (scores are never stored: memory O(n H), not O(B H ctx^2)).
struct AttnDims {
  int batch = 0, ctx = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int64_t n_rows() const { return int64_t{batch} * ctx; }
};

// Per-thread and per-head work buffers, grown on first use and reused.
template <typename T>
struct AttnScratch {
  std::vector<std::vector<T>> thread_bufs;  // scores and dP blocks, one per thread
  std::vector<T> dk_heads, dv_heads;        // [B, H, ctx, d] per-query-head dK/dV (GQA only)
  std::vector<T> delta;                     // [B, H, ctx] rowwise dO . O
};

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const AttnDims& a,
                       AttnScratch<T>& s);
// Writes dq; accumulates dk and dv (several layers can share one K/V).
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout,
                        T* dq, T* dk, T* dv, const AttnDims& a, AttnScratch<T>& s);

// ---- small helpers ----
template <typename T>
void add_inplace(T* y, const T* x, int64_t n);  // y += x
template <typename T>
void zero(T* y, int64_t n);

}  // namespace mlkv::train
