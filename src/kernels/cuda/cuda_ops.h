// The CUDA kernels of the op list (kernels/ops.h), as launch functions on a stream. Every pointer
// is a device pointer unless its comment says host; every array is row-major f32 unless its
// comment names another element type; sizes are elements. Each function has the semantics of its
// namesake in kernels/ops.h (what accumulates, what is written, what may alias), so the CUDA
// backend (cuda_backend.cu) is a thin layer of argument conversion over them. Launches are
// asynchronous on `stream`; errors of the launch itself throw mlkv::Error (cuda_check).
//
// Compiled only with -DMLKV_CUDA=ON; nothing outside src/kernels/cuda includes this header.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/tensor.h"  // DType

namespace mlkv::cuda {

// Throws mlkv::Error naming `what` and the CUDA error when e != cudaSuccess.
void cuda_check(cudaError_t e, const char* what);
// Checks the last kernel launch (cudaGetLastError).
void check_launch(const char* kernel);

// ---- norms, over rows of E values; eps as in ops ----
void layernorm_forward(cudaStream_t s, const float* x, const float* w, const float* b, float* y,
                       float* mean, float* rstd, int n, int E, float eps);  // b, mean, rstd may be null
void layernorm_backward(cudaStream_t s, const float* dy, const float* x, const float* w,
                        const float* mean, const float* rstd, float* dx, float* dw, float* db,
                        int n, int E);  // dx, dw, db accumulate; db may be null
void rmsnorm_forward(cudaStream_t s, const float* x, const float* w, float* y, float* rstd, int n,
                     int E, float eps);  // rstd may be null
void rmsnorm_backward(cudaStream_t s, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw, int n, int E);

// ---- rotary (rotate-half layout), in place on x [n, n_heads, head_dim] ----
// cos_t, sin_t: [n_pos, n_rot / 2] (ops::RopeTable's tables on the device); pos [n] on the device.
void rope(cudaStream_t s, float* x, int n, int n_heads, int head_dim, const int32_t* pos,
          const float* cos_t, const float* sin_t, int n_rot, bool inverse);

// ---- activations ----
void gelu_forward(cudaStream_t s, const float* x, float* y, int64_t n, bool tanh_form);
void gelu_backward(cudaStream_t s, const float* x, const float* dy, float* dx, float* y,
                   int64_t n, bool tanh_form);  // y may be null
void swiglu_forward(cudaStream_t s, const float* gate, const float* up, float* y, int64_t n);
void swiglu_backward(cudaStream_t s, const float* gate, const float* up, const float* dy,
                     float* dgate, float* dup, float* y, int64_t n);  // y may be null

// ---- embedding: tok [n] on the device ----
void embedding_forward(cudaStream_t s, const int32_t* tok, const float* table, float* x, int n,
                       int E);
void embedding_backward(cudaStream_t s, const int32_t* tok, const float* dx, float* dtable, int n,
                        int E);

// ---- output head ----
// ops::cross_entropy_forward_backward over logits [n, V] with target [n] (device): row_loss [n]
// (device) gets each row's loss; with grad the logits become scale (softmax - onehot). The sum of
// the row losses is the caller's (it reads row_loss back and adds in row order in double).
void cross_entropy(cudaStream_t s, float* logits, const int32_t* target, int n, int V, float scale,
                   bool grad, float* row_loss);

// ---- training attention (ops::attention_forward / attention_backward, causal, GQA) ----
// q [B*ctx, H, d], k and v [B*ctx, Hkv, d]; o like q; lse [B, H, ctx]. No [ctx, ctx] matrix is
// ever written to memory.
void attention_forward(cudaStream_t s, const float* q, const float* k, const float* v, float* o,
                       float* lse, int batch, int ctx, int n_head, int n_head_kv, int head_dim);
// Writes dq; accumulates dk and dv. scratch: at least attention_backward_scratch() floats.
void attention_backward(cudaStream_t s, const float* q, const float* k, const float* v,
                        const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv, int batch, int ctx, int n_head, int n_head_kv, int head_dim,
                        float* scratch);
int64_t attention_backward_scratch(int batch, int ctx, int n_head, int n_head_kv, int head_dim);
// The same on bf16 tensor cores (attention_train_tc.cu, mixed precision): same layouts and
// semantics, f32 in memory, bf16 operands of the six products with f32 softmax and accumulation
// (errors ~1e-2 relative to exact attention). head_dim 64 and 128 run on tensor cores; any other
// goes to the f32 functions above. Scratch: attention_backward_scratch() floats, as above.
void attention_forward_bf16(cudaStream_t s, const float* q, const float* k, const float* v,
                            float* o, float* lse, int batch, int ctx, int n_head, int n_head_kv,
                            int head_dim);
void attention_backward_bf16(cudaStream_t s, const float* q, const float* k, const float* v,
                             const float* o, const float* lse, const float* dout, float* dq,
                             float* dk, float* dv, int batch, int ctx, int n_head, int n_head_kv,
                             int head_dim, float* scratch);

// ---- decode: the KV cache on the GPU and attention against it (attention_cached.cu) ----
// Cache rows hold f32, f16 or bf16 values (KvFmt, the backend's kv_fmt of the slot's DType).
enum KvFmt { kFmtF32 = 0, kFmtF16 = 1, kFmtBF16 = 2 };

// Token t's K/V heads (k, v: [n, n_head_kv, d]) into cache row rows[t] of each head (rows on the
// device); kc, vc: the slot's keys and values, head h at + h * *_head_stride bytes.
void kv_store(cudaStream_t s, const int32_t* rows, int n, int n_head_kv, int d, const float* k,
              const float* v, char* kc, char* vc, size_t k_head_stride, size_t v_head_stride,
              size_t k_row_bytes, size_t v_row_bytes, int kf, int vf);

inline constexpr int kCachedThreads = 128;
inline constexpr int kCachedWarps = kCachedThreads / 32;
inline constexpr size_t kCachedSmemMax = 96 * 1024;  // dynamic shared memory per block, bytes

// One attention call against the cache: R query rows, each its group's G = n_head / n_head_kv
// heads, the context of each row cut into n_split chunks of `chunk` keys.
struct CachedArgs {
  const float* q;      // [rows, n_head, d]
  const char* k;       // the slot's keys: head h at k + h * k_head_stride
  const char* v;
  size_t k_head_stride, v_head_stride, k_row_bytes, v_row_bytes;
  // meta: [R] batch row, [R] position, [R] offset of the row's block table in `blocks`
  const int32_t* meta;
  const int32_t* blocks;
  int R, block_size, n_head, n_head_kv, d, G, chunk, n_split;
  float scale;
  bool rotate;  // keys are raw: rotate them at their position on the way in
  const float* cos_t;
  const float* sin_t;
  int n_rot;
  float* part_o;   // [R, n_head_kv, n_split, G, d] unnormalised sums
  float* part_ml;  // [R, n_head_kv, n_split, G, 2] running max and sum of exp
};
// Whether the vectorised kernel applies (16-byte aligned rows and heads, d a multiple of both
// formats' vectors, a value row's vectors dividing the block).
bool cached_vec_ok(const CachedArgs& a, int kf, int vf);
// The parts: one block per (row, KV head, chunk) with smem bytes of dynamic shared memory.
void attn_cached_parts(cudaStream_t s, const CachedArgs& a, int kf, int vf, bool vec, size_t smem);
// out[meta row, h, :] = the parts of (row, h) combined (softmax over all chunks).
void attn_cached_combine(cudaStream_t s, const CachedArgs& a, float* out);

// ---- decode products (gemv.cu) ----
inline constexpr int kGemvMaxRows = 8;
// Whether gemv applies: n <= kGemvMaxRows, K a multiple of the 16-byte vector, 16-byte aligned x
// and w, f32 / f16 / bf16 weights (MLKV_CUDA_NO_GEMV unset).
bool gemv_ok(const float* x, const void* w, int n, int K, DType wt);
// y [n, N] (+)= x [n, K] w^T + b (b [N] or null; w [N, K] of type wt), one launch.
void gemv(cudaStream_t s, const float* x, const void* w, DType wt, const float* b, float* y, int n,
          int K, int N, bool accumulate);

// ---- optimizer ----
void adamw_update(cudaStream_t s, float* p, float* g, float* m, float* v, int64_t n, float beta1,
                  float beta2, float eps, float lr, float weight_decay, float bias_corr1,
                  float bias_corr2, float grad_scale, bool zero_grad);
// Partial sums of x^2 in double over fixed chunks: writes partial [sum_squares_parts(n)] (device);
// the caller adds them in order on the host (a result independent of the launch).
int sum_squares_parts(int64_t n);
void sum_squares(cudaStream_t s, const float* x, int64_t n, double* partial);

// ---- helpers ----
void add_inplace(cudaStream_t s, float* y, const float* x, int64_t n);  // y += x
// y[r, :] += b for each of n rows of N (the bias of a product).
void add_bias(cudaStream_t s, float* y, const float* b, int n, int N);
// db[N] += column sums of dy [n, N], rows added in order.
void column_sums(cudaStream_t s, const float* dy, float* db, int n, int N);
// dst [n, E] = src rows idx[i] (idx on the device).
void gather_rows(cudaStream_t s, const float* src, const int32_t* idx, int n, int E, float* dst);
// f32 -> bf16 / f16 element conversion (round to nearest even), n values.
void to_bf16(cudaStream_t s, const float* x, uint16_t* y, int64_t n);
void to_f16(cudaStream_t s, const float* x, uint16_t* y, int64_t n);

}  // namespace mlkv::cuda
