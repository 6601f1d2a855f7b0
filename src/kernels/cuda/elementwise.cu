// Rotary, activations, embedding and the small array helpers on the GPU (cuda_ops.h; semantics of
// kernels/ops.h, math of kernels/ref/). Element-wise kernels are grid-stride loops with 64-bit
// indices; row kernels (grid_rows) put columns on x and stride rows on y. Every function that
// may alias (gelu dx with dy, swiglu dgate with dy) reads all of an element's inputs before it
// writes, in the thread that owns the element. Libm-accurate erff / expf / tanhf (no fast math).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"

namespace mlkv::cuda {

namespace {

using detail::grid_for;
using detail::grid_rows;
using detail::kColTile;
using detail::kRowGroups;
using detail::kThreads;

__device__ __forceinline__ int64_t thread_index() {
  return int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return int64_t{gridDim.x} * blockDim.x;
}

// ---- rotary ----

// Token t = blockIdx.y, + gridDim.y, ...; x covers its n_heads * half pairs (head h, index i).
// sign -1 rotates by -angle.
__global__ void rope_kernel(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
                            const float* cos_t, const float* sin_t, int half, float sign) {
  const int j = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (j >= n_heads * half) return;
  const int h = j / half, i = j % half;
  for (int t = blockIdx.y; t < n; t += gridDim.y) {
    const int64_t p = int64_t{pos[t]} * half + i;
    const float c = cos_t[p], s = sign * sin_t[p];
    float* v = x + (int64_t{t} * n_heads + h) * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = fmaf(-b, s, a * c);        // a c - b s
    v[i + half] = fmaf(a, s, b * c);  // b c + a s
  }
}

// ---- activations ----

// gelu(x); gelu'(x) through *deriv when not null. Exact: x Phi(x), Phi'(x) = phi(x); tanh form:
// x (1 + tanh u) / 2, u = sqrt(2/pi) (x + 0.044715 x^3).
__device__ __forceinline__ float gelu(float x, bool tanh_form, float* deriv) {
  if (tanh_form) {
    const float k = 0.7978845608028654f, c = 0.044715f;
    const float x2 = x * x;
    const float th = tanhf(k * (x + c * x2 * x));
    const float a = 0.5f * (1.0f + th);
    if (deriv) *deriv = a + 0.5f * x * (1.0f - th * th) * k * (1.0f + 3.0f * c * x2);
    return x * a;
  }
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  if (deriv) *deriv = cdf + x * expf(-0.5f * x * x) * 0.3989422804014327f;
  return x * cdf;
}

__device__ __forceinline__ float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__global__ void gelu_fwd_kernel(const float* x, float* y, int64_t n, bool tanh_form) {
  for (int64_t k = thread_index(); k < n; k += grid_stride()) y[k] = gelu(x[k], tanh_form, nullptr);
}

// dx may alias dy.
__global__ void gelu_bwd_kernel(const float* x, const float* dy, float* dx, float* y, int64_t n,
                                bool tanh_form) {
  for (int64_t k = thread_index(); k < n; k += grid_stride()) {
    const float d = dy[k];
    float deriv;
    const float g = gelu(x[k], tanh_form, &deriv);
    if (y) y[k] = g;
    dx[k] = d * deriv;
  }
}

__global__ void swiglu_fwd_kernel(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t k = thread_index(); k < n; k += grid_stride()) {
    const float g = gate[k];
    y[k] = g * sigmoid(g) * up[k];
  }
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). dgate may alias dy.
__global__ void swiglu_bwd_kernel(const float* gate, const float* up, const float* dy, float* dgate,
                                  float* dup, float* y, int64_t n) {
  for (int64_t k = thread_index(); k < n; k += grid_stride()) {
    const float g = gate[k], u = up[k], d = dy[k];
    const float s = sigmoid(g);
    const float silu = g * s;
    const float dsilu = s * (1.0f + g * (1.0f - s));
    if (y) y[k] = silu * u;
    dup[k] = d * silu;
    dgate[k] = d * u * dsilu;
  }
}

// ---- embedding ----

__global__ void embedding_fwd_kernel(const int32_t* tok, const float* table, float* x, int n,
                                     int E) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= E) return;
  for (int t = blockIdx.y; t < n; t += gridDim.y) {
    x[int64_t{t} * E + i] = table[int64_t{tok[t]} * E + i];
  }
}

constexpr int kEmbThreads = 256;

// Block per token t. Only a token's first occurrence works: it adds the dx rows of every
// occurrence to its table row, in row order (the CPU's order, so the same bits), gathering the
// occurrences one tile of kEmbThreads rows at a time (warp ballots keep them in order). No two
// blocks write one table row, so no atomics are needed.
__global__ void embedding_bwd_kernel(const int32_t* tok, const float* dx, float* dtable, int n,
                                     int E) {
  __shared__ int rows[kEmbThreads];
  __shared__ int warp_hits[kEmbThreads / 32];
  const int t = blockIdx.x;
  const int me = tok[t];
  bool earlier = false;
  for (int j = threadIdx.x; j < t; j += kEmbThreads) earlier |= tok[j] == me;
  if (__syncthreads_or(earlier)) return;  // a block-uniform exit

  float* out = dtable + int64_t{me} * E;
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  for (int j0 = t; j0 < n; j0 += kEmbThreads) {
    const int j = j0 + static_cast<int>(threadIdx.x);
    const bool hit = j < n && tok[j] == me;
    const unsigned mask = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_hits[warp] = __popc(mask);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kEmbThreads / 32; ++w) {
      if (w < warp) before += warp_hits[w];
      total += warp_hits[w];
    }
    if (hit) rows[before + __popc(mask & ((1u << lane) - 1u))] = j;
    __syncthreads();
    if (total > 0) {
      for (int i = threadIdx.x; i < E; i += kEmbThreads) {
        float acc = out[i];
        for (int r = 0; r < total; ++r) acc += dx[int64_t{rows[r]} * E + i];
        out[i] = acc;
      }
    }
    __syncthreads();  // rows and warp_hits are rewritten by the next tile
  }
}

// ---- helpers ----

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t k = thread_index(); k < n; k += grid_stride()) y[k] += x[k];
}

__global__ void add_bias_kernel(float* y, const float* b, int n, int N) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= N) return;
  const float bi = b[i];
  for (int t = blockIdx.y; t < n; t += gridDim.y) y[int64_t{t} * N + i] += bi;
}

// db[i] += sum_t dy[t, i]; block (kColTile, kRowGroups) as in reduce.cuh.
__global__ void column_sums_kernel(const float* dy, float* db, int n, int N) {
  __shared__ float part[kRowGroups][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int col = blockIdx.x * kColTile + tx;
  float acc = 0.0f;
  if (col < N) {
    for (int t = ty; t < n; t += kRowGroups) acc += dy[int64_t{t} * N + col];
  }
  part[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && col < N) {
    float sum = 0.0f;
    for (int r = 0; r < kRowGroups; ++r) sum += part[r][tx];
    db[col] += sum;
  }
}

__global__ void gather_rows_kernel(const float* src, const int32_t* idx, int n, int E, float* dst) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= E) return;
  for (int t = blockIdx.y; t < n; t += gridDim.y) {
    dst[int64_t{t} * E + i] = src[int64_t{idx[t]} * E + i];
  }
}

// NaN keeps the CPU's bits (core/half.h): bf16 keeps the payload and sets the quiet bit.
__global__ void to_bf16_kernel(const float* x, uint16_t* y, int64_t n) {
  for (int64_t k = thread_index(); k < n; k += grid_stride()) {
    const float f = x[k];
    y[k] = f != f ? static_cast<uint16_t>((__float_as_uint(f) >> 16) | 0x40u)
                  : __bfloat16_as_ushort(__float2bfloat16_rn(f));
  }
}

// NaN: sign | 0x7e00 as in core/half.h.
__global__ void to_f16_kernel(const float* x, uint16_t* y, int64_t n) {
  for (int64_t k = thread_index(); k < n; k += grid_stride()) {
    const float f = x[k];
    y[k] = f != f ? static_cast<uint16_t>(((__float_as_uint(f) >> 16) & 0x8000u) | 0x7e00u)
                  : __half_as_ushort(__float2half_rn(f));
  }
}

}  // namespace

// pos[t] < the table's n_pos is the caller's check (the CPU checks it on the host).
void rope(cudaStream_t s, float* x, int n, int n_heads, int head_dim, const int32_t* pos,
          const float* cos_t, const float* sin_t, int n_rot, bool inverse) {
  const int half = n_rot / 2;
  if (n <= 0 || n_heads <= 0 || half <= 0) return;
  rope_kernel<<<grid_rows(n, n_heads * half), kThreads, 0, s>>>(
      x, n, n_heads, head_dim, pos, cos_t, sin_t, half, inverse ? -1.0f : 1.0f);
  check_launch("rope");
}

void gelu_forward(cudaStream_t s, const float* x, float* y, int64_t n, bool tanh_form) {
  if (n <= 0) return;
  gelu_fwd_kernel<<<grid_for(n), kThreads, 0, s>>>(x, y, n, tanh_form);
  check_launch("gelu_forward");
}

void gelu_backward(cudaStream_t s, const float* x, const float* dy, float* dx, float* y, int64_t n,
                   bool tanh_form) {
  if (n <= 0) return;
  gelu_bwd_kernel<<<grid_for(n), kThreads, 0, s>>>(x, dy, dx, y, n, tanh_form);
  check_launch("gelu_backward");
}

void swiglu_forward(cudaStream_t s, const float* gate, const float* up, float* y, int64_t n) {
  if (n <= 0) return;
  swiglu_fwd_kernel<<<grid_for(n), kThreads, 0, s>>>(gate, up, y, n);
  check_launch("swiglu_forward");
}

void swiglu_backward(cudaStream_t s, const float* gate, const float* up, const float* dy,
                     float* dgate, float* dup, float* y, int64_t n) {
  if (n <= 0) return;
  swiglu_bwd_kernel<<<grid_for(n), kThreads, 0, s>>>(gate, up, dy, dgate, dup, y, n);
  check_launch("swiglu_backward");
}

void embedding_forward(cudaStream_t s, const int32_t* tok, const float* table, float* x, int n,
                       int E) {
  if (n <= 0 || E <= 0) return;
  embedding_fwd_kernel<<<grid_rows(n, E), kThreads, 0, s>>>(tok, table, x, n, E);
  check_launch("embedding_forward");
}

void embedding_backward(cudaStream_t s, const int32_t* tok, const float* dx, float* dtable, int n,
                        int E) {
  if (n <= 0 || E <= 0) return;
  embedding_bwd_kernel<<<static_cast<unsigned>(n), kEmbThreads, 0, s>>>(tok, dx, dtable, n, E);
  check_launch("embedding_backward");
}

void add_inplace(cudaStream_t s, float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, s>>>(y, x, n);
  check_launch("add_inplace");
}

void add_bias(cudaStream_t s, float* y, const float* b, int n, int N) {
  if (n <= 0 || N <= 0) return;
  add_bias_kernel<<<grid_rows(n, N), kThreads, 0, s>>>(y, b, n, N);
  check_launch("add_bias");
}

// Rows are added in the fixed order of reduce.cuh's column reductions (32 interleaved row groups,
// then the groups in order), not one running sum: the same bits on every run.
void column_sums(cudaStream_t s, const float* dy, float* db, int n, int N) {
  if (n <= 0 || N <= 0) return;
  const unsigned grid = static_cast<unsigned>((N + kColTile - 1) / kColTile);
  column_sums_kernel<<<grid, dim3(kColTile, kRowGroups), 0, s>>>(dy, db, n, N);
  check_launch("column_sums");
}

void gather_rows(cudaStream_t s, const float* src, const int32_t* idx, int n, int E, float* dst) {
  if (n <= 0 || E <= 0) return;
  gather_rows_kernel<<<grid_rows(n, E), kThreads, 0, s>>>(src, idx, n, E, dst);
  check_launch("gather_rows");
}

void to_bf16(cudaStream_t s, const float* x, uint16_t* y, int64_t n) {
  if (n <= 0) return;
  to_bf16_kernel<<<grid_for(n), kThreads, 0, s>>>(x, y, n);
  check_launch("to_bf16");
}

void to_f16(cudaStream_t s, const float* x, uint16_t* y, int64_t n) {
  if (n <= 0) return;
  to_f16_kernel<<<grid_for(n), kThreads, 0, s>>>(x, y, n);
  check_launch("to_f16");
}

}  // namespace mlkv::cuda
