// LayerNorm and RMSNorm on the GPU (cuda_ops.h; semantics of kernels/ops.h, math of
// kernels/ref/norm.h). Forward and the dx part of backward: one block per row, f32 sums reduced
// in a fixed order (reduce.cuh). The weight and bias gradients are column reductions without
// atomics (reduce.cuh: kColTile, kRowGroups), so every run gives the same bits.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"

namespace mlkv::cuda {

namespace {

using detail::block_sum;
using detail::kColTile;
using detail::kRowGroups;
using detail::kThreads;

// y = (x - mean) rstd w + b over row blockIdx.x; mean, rstd saved when not null.
__global__ void layernorm_fwd_kernel(const float* x, const float* w, const float* b, float* y,
                                     float* mean, float* rstd, int E, float eps) {
  const int64_t o = int64_t{blockIdx.x} * E;
  const float* xr = x + o;
  const float fe = static_cast<float>(E);
  float s = 0.0f;
  for (int i = threadIdx.x; i < E; i += blockDim.x) s += xr[i];
  const float m = block_sum(s) / fe;
  float v = 0.0f;
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    const float d = xr[i] - m;
    v = fmaf(d, d, v);
  }
  const float rs = 1.0f / sqrtf(block_sum(v) / fe + eps);
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    float out = (xr[i] - m) * rs * w[i];
    if (b) out += b[i];
    y[o + i] = out;
  }
  if (threadIdx.x == 0) {
    if (mean) mean[blockIdx.x] = m;
    if (rstd) rstd[blockIdx.x] = rs;
  }
}

// y = x rstd w, rstd = 1 / sqrt(mean(x^2) + eps) over row blockIdx.x.
__global__ void rmsnorm_fwd_kernel(const float* x, const float* w, float* y, float* rstd, int E,
                                   float eps) {
  const int64_t o = int64_t{blockIdx.x} * E;
  const float* xr = x + o;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < E; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  const float rs = 1.0f / sqrtf(block_sum(ss) / static_cast<float>(E) + eps);
  for (int i = threadIdx.x; i < E; i += blockDim.x) y[o + i] = xr[i] * rs * w[i];
  if (threadIdx.x == 0 && rstd) rstd[blockIdx.x] = rs;
}

// dx += rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat = (x - mean) rstd, over row
// blockIdx.x. RMSNorm is mean == null: mean 0 and no mean(g) term.
__global__ void norm_bwd_row_kernel(const float* dy, const float* x, const float* w,
                                    const float* mean, const float* rstd, float* dx, int E) {
  const int64_t o = int64_t{blockIdx.x} * E;
  const float m = mean ? mean[blockIdx.x] : 0.0f, rs = rstd[blockIdx.x];
  const float fe = static_cast<float>(E);
  float sg = 0.0f, sgx = 0.0f;
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    const float g = dy[o + i] * w[i];
    sg += g;
    sgx = fmaf(g, x[o + i] - m, sgx);
  }
  const float a = mean ? block_sum(sg) / fe : 0.0f;  // mean is the same for the whole block
  const float c = block_sum(sgx) * rs * rs / fe;     // xhat mean(g xhat) = (x - mean) c
  for (int i = threadIdx.x; i < E; i += blockDim.x) {
    const float g = dy[o + i] * w[i];
    const float t = (g - a) - (x[o + i] - m) * c;
    dx[o + i] = fmaf(rs, t, dx[o + i]);
  }
}

// dw[i] += sum_t dy[t, i] (x[t, i] - mean[t]) rstd[t]; db[i] += sum_t dy[t, i] (db may be null;
// mean null: 0). Block (kColTile, kRowGroups) over columns blockIdx.x * kColTile + threadIdx.x.
__global__ void norm_bwd_cols_kernel(const float* dy, const float* x, const float* mean,
                                     const float* rstd, float* dw, float* db, int n, int E) {
  __shared__ float pw[kRowGroups][kColTile + 1];
  __shared__ float pb[kRowGroups][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int col = blockIdx.x * kColTile + tx;
  float aw = 0.0f, ab = 0.0f;
  if (col < E) {
    for (int t = ty; t < n; t += kRowGroups) {
      const int64_t o = int64_t{t} * E + col;
      const float g = dy[o];
      const float m = mean ? mean[t] : 0.0f;
      aw = fmaf(g, (x[o] - m) * rstd[t], aw);
      ab += g;
    }
  }
  pw[ty][tx] = aw;
  pb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && col < E) {
    float sw = 0.0f, sb = 0.0f;
    for (int r = 0; r < kRowGroups; ++r) {
      sw += pw[r][tx];
      sb += pb[r][tx];
    }
    dw[col] += sw;
    if (db) db[col] += sb;
  }
}

void norm_backward_cols(cudaStream_t s, const float* dy, const float* x, const float* mean,
                        const float* rstd, float* dw, float* db, int n, int E) {
  const dim3 block(kColTile, kRowGroups);
  const unsigned grid = static_cast<unsigned>((E + kColTile - 1) / kColTile);
  norm_bwd_cols_kernel<<<grid, block, 0, s>>>(dy, x, mean, rstd, dw, db, n, E);
  check_launch("norm_bwd_cols");
}

}  // namespace

void layernorm_forward(cudaStream_t s, const float* x, const float* w, const float* b, float* y,
                       float* mean, float* rstd, int n, int E, float eps) {
  if (n <= 0 || E <= 0) return;
  layernorm_fwd_kernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(x, w, b, y, mean, rstd, E,
                                                                     eps);
  check_launch("layernorm_forward");
}

void layernorm_backward(cudaStream_t s, const float* dy, const float* x, const float* w,
                        const float* mean, const float* rstd, float* dx, float* dw, float* db,
                        int n, int E) {
  if (n <= 0 || E <= 0) return;
  norm_bwd_row_kernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(dy, x, w, mean, rstd, dx, E);
  check_launch("layernorm_backward");
  norm_backward_cols(s, dy, x, mean, rstd, dw, db, n, E);
}

void rmsnorm_forward(cudaStream_t s, const float* x, const float* w, float* y, float* rstd, int n,
                     int E, float eps) {
  if (n <= 0 || E <= 0) return;
  rmsnorm_fwd_kernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(x, w, y, rstd, E, eps);
  check_launch("rmsnorm_forward");
}

void rmsnorm_backward(cudaStream_t s, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw, int n, int E) {
  if (n <= 0 || E <= 0) return;
  norm_bwd_row_kernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(dy, x, w, nullptr, rstd, dx, E);
  check_launch("rmsnorm_backward");
  norm_backward_cols(s, dy, x, nullptr, rstd, dw, nullptr, n, E);
}

}  // namespace mlkv::cuda
