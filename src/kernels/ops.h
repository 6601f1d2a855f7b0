// The op list of mlkv: every computation the decoder does, forward and backward side by side, on
// raw row-major arrays with explicit sizes. Templated on the float type T:
//   - float: the CPU kernels (kernels/cpu/), SIMD chosen at run time (kernels/cpu/isa.h) and BLAS
//     (kernels/blas/) for large products, OpenMP across cores;
//   - double: the scalar reference (kernels/ref/), the path of the finite-difference gradient
//     checks.
// A second device implements the same list behind the backend interface (kernels/backend.h).
//
// Conventions: a weight matrix is [n_out, n_in] as stored in checkpoints; "rows" are tokens.
// Parameter gradients ACCUMULATE (+=), so shared and tied parameters and gradient accumulation
// need no copies; input gradients accumulate too unless the comment says "writes"; zeroing is the
// caller's. Outputs never alias inputs unless stated. Reductions have a fixed order (never one that
// depends on the thread count), so results are reproducible bit for bit on one machine and path.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/types.h"

namespace mlkv::ops {

// ---- linear ----
// y[n, N] (+)= x[n, K] w[N, K]^T + b[N] (b may be null). float: n <= 32 streams w once (the
// decode GEMV), larger n calls sgemm.
template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, int n, int K, int N,
                    bool accumulate = false);
// The same with w [N, K] stored as F16 or BF16 (half the bytes a decode step streams), Q8_0
// (rows of K / 32 blocks of 34 bytes, core/quant.h; K a multiple of 32) or F32_P16 (f32 in panels
// of 16 rows, core/quant.h): the products are those of f32 arithmetic over the stored values
// widened exactly to f32 (for Q8_0 also over x rounded to q8 blocks). Throws mlkv::Error for
// another type or a Q8_0 K that is not a multiple of 32.
void linear_forward_lowp(const float* x, const void* w, DType wt, const float* b, float* y, int n,
                         int K, int N, bool accumulate = false);
// dx[n, K] (+)= dy[n, N] w (accumulate_dx: += or writes; dx may be null); dw[N, K] += dy^T x
// (may be null); db[N] += column sums of dy (may be null).
template <typename T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, int n, int K, int N,
                     bool accumulate_dx = true);

// ---- norms, over rows of E values ----
// y = (x - mean) rstd w + b; mean[n], rstd[n] saved when not null.
template <typename T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int n, int E,
                       T eps);
// dx += ..., dw += sum dy xhat, db += sum dy (db may be null).
template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                        T* dw, T* db, int n, int E);
// y = x rstd w, rstd = 1 / sqrt(mean(x^2) + eps); rstd[n] saved when not null.
template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int n, int E, T eps);
template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int n,
                      int E);

// ---- rotary position embedding, rotate-half layout (GPT-NeoX / HF Llama) ----
// Rotates the first n_rot dims of every head of x[n, n_heads, head_dim] in place: pairs
// (i, i + n_rot / 2) by pos[t] * inv_freq[i]; inverse rotates by -angle. pos[t] < rt.n_pos.
template <typename T>
void rope_forward(T* x, int n, int n_heads, int head_dim, const int32_t* pos,
                  const RopeTable<T>& rt, bool inverse = false);
// The backward pass: a rotation's transpose is its inverse.
template <typename T>
void rope_backward(T* dx, int n, int n_heads, int head_dim, const int32_t* pos,
                   const RopeTable<T>& rt) {
  rope_forward(dx, n, n_heads, head_dim, pos, rt, /*inverse=*/true);
}

// ---- activations, element-wise over n values ----
// Exact GELU 0.5 x (1 + erf(x / sqrt 2)), or the tanh form ("gelu_new").
template <typename T>
void gelu_forward(const T* x, T* y, int64_t n, bool tanh_form);
// Writes dx = dy gelu'(x) (dx may alias dy) and, when y is not null, y = gelu(x): the backward
// pass recomputes the activation instead of storing it.
template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, T* y, int64_t n, bool tanh_form);
// y = silu(gate) up
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n);
// Writes dgate = dy up silu'(gate) (may alias dy), dup = dy silu(gate), y = silu(gate) up when y
// is not null.
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, T* y, int64_t n);

// ---- embedding ----
// Writes x[t] = table[tok[t]] (rows of E).
template <typename T>
void embedding_forward(const int32_t* tok, const T* table, T* x, int n, int E);
// dtable[tok[t]] += dx[t], rows in order.
template <typename T>
void embedding_backward(const int32_t* tok, const T* dx, T* dtable, int n, int E);

// ---- softmax, output head ----
// log(sum exp x) of one row (so log p(i) = x[i] - logsumexp).
float logsumexp(const float* x, int n);
// In-place softmax of each row of x[rows, n] (max-subtracted).
void softmax_rows(float* x, int rows, int n);
// For each row of logits[n, V]: row_loss[t] = logsumexp - logits[t, target[t]]. With grad, the
// row is replaced by scale (softmax - onehot(target)) (the logits are consumed). Returns the sum
// of the row losses, added in row order in double. row_loss: scratch of n values.
template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int n, int V, T scale,
                                      bool grad, T* row_loss);
// The distillation term of the output head (knowledge distillation, docs/TRAINING.md) for rows
// of student and teacher logits [n, V] at temperature temp > 0: p = softmax(teacher / temp),
// q = softmax(student / temp), row_kl[t] = KL(p || q) = sum_i p_i (log p_i - log q_i). With grad,
// the teacher's row is replaced by scale d KL / d student = scale (q - p) / temp. The teacher
// logits are consumed either way; the student's are only read. Returns the sum of the row terms,
// added in row order in double. (Computed as E_p[(teacher - student) / temp] + lse_q - lse_p: in
// f32 a KL near zero may come out a few ulps of the log-normalisers below it.)
template <typename T>
double distill_kl_forward_backward(const T* student, T* teacher, int n, int V, T temp, T scale,
                                   bool grad, T* row_kl);

// ---- attention ----
// Per-thread and per-head work buffers of the training attention, grown on first use.
template <typename T>
struct AttnScratch {
  std::vector<std::vector<T>> thread_bufs;  // scores and dP blocks, one per thread
  std::vector<T> dk_heads, dv_heads;        // [B, H, ctx, d] per-query-head dK/dV (GQA only)
};
// Causal attention over whole sequences (AttnDims): o [n, H, d] and the softmax log-normaliser
// lse [B, H, ctx] that the backward pass uses to recompute the probabilities (scores are never
// stored whole: memory O(n H), not O(B H ctx^2)).
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const AttnDims& a,
                       AttnScratch<T>& s);
// Writes dq; accumulates dk and dv (several layers can share one K/V).
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse,
                        const T* dout, T* dq, T* dk, T* dv, const AttnDims& a, AttnScratch<T>& s);

// Decode attention of n_q query rows q[r * ldq + i] that read the same KV head: out[r * ldo + i]
// = softmax(scale q_r K^T) V over the positions of the chunks in order, key and value rows of d
// values in their element formats (F32, F16, BF16, Q8_0, Q4_0: read directly, never dequantized
// into a copy). Over Q8_0 / Q4_0 keys (cpu::int_key_scores) the scores are integer dot products
// with q_r rounded per block of 32 by quantize_query_q8 (core/quant.h). scores: scratch of
// min(n_q, kMaxAttendGroup) * (sum of the chunks' n) floats.
inline constexpr int kMaxAttendGroup = 64;
void attend_chunks(const float* q, int n_q, int ldq, const KvChunk* chunks, int n_chunks,
                   DType k_dtype, DType v_dtype, int d, float scale, float* out, int ldo,
                   float* scores);
// The same over one contiguous stretch of keys and values [len, d] of one format.
inline void attend_shared_kv(const float* q, int n_q, int ldq, const void* K, const void* V,
                             DType dtype, int len, int d, float scale, float* out, int ldo,
                             float* scores) {
  const KvChunk c{K, V, len};
  attend_chunks(q, n_q, ldq, &c, 1, dtype, dtype, d, scale, out, ldo, scores);
}

// ---- KV cache (inference) ----
// Writes the keys and values of n tokens into a cache slot: token t (sequence seq[t], position
// pos[t]) gets k[t, h, :] and v[t, h, :] for every KV head h, converted to the slot's element
// formats (rounded to nearest even, or quantized by core/quant.h's rule). k, v: [n, n_head_kv,
// head_dim].
void kv_store(const KvSlotView& slot, const int32_t* seq, const int32_t* pos, int n,
              const float* k, const float* v);
// Causal attention of every run's query rows q [rows, n_head, head_dim] (row stride n_head *
// head_dim) against the slot: row i of run r sits at position r.pos0 + i and sees positions
// 0 ..= that of its sequence; query head h reads KV head h / (n_head / n_head_kv). rotate_keys:
// the slot holds raw keys and this reader needs them rotated (the owner under pre sharing), so
// keys are rotated with rt on the way in. out: like q.
void attention_cached(const KvSlotView& slot, const std::vector<AttnRun>& runs, const float* q,
                      int n_head, bool rotate_keys, const RopeTable<float>& rt, float* out);

// ---- optimizer ----
// One AdamW update of n parameters in place (AdamWStep has the formula); zero_grad also zeroes g.
template <typename T>
void adamw_update(T* p, T* g, T* m, T* v, int64_t n, const AdamWStep& h, bool zero_grad);

// ---- small helpers ----
template <typename T>
void add_inplace(T* y, const T* x, int64_t n);  // y += x
// sum of x[i]^2 in double, over chunks in a fixed order (the same for any thread count).
double sum_squares(const float* x, int64_t n);
template <typename T>
void zero(T* y, int64_t n);
float dot(const float* a, const float* b, int64_t n);

}  // namespace mlkv::ops
