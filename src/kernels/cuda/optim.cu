// The AdamW update and the gradient norm's sum of squares on the GPU (cuda_ops.h; semantics of
// kernels/ops.h, formula of kernels/types.h AdamWStep in the f32 operation order of the CPU
// kernel, kernels/cpu/norm-inl.h adamw). The sum of squares uses the CPU's chunks of 2^16 values,
// each summed in double by one block in a fixed order; the caller adds the chunks in order.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"

namespace mlkv::cuda {

namespace {

using detail::block_sum;
using detail::grid_for;
using detail::kThreads;

// Values per partial sum: the CPU's chunk (kernels/cpu/adamw.cpp).
constexpr int64_t kSumChunk = int64_t{1} << 16;

struct AdamArgs {
  float beta1, beta2, one_m_beta1, one_m_beta2, eps, lr, weight_decay, bias_corr1, bias_corr2,
      grad_scale;
};

// g' = g grad_scale, m = b1 m + (1 - b1) g', v = b2 v + (1 - b2) g'^2,
// p -= lr (m bias_corr1 / (sqrt(v bias_corr2) + eps) + weight_decay p).
__global__ void adamw_kernel(float* p, float* g, float* m, float* v, int64_t n, AdamArgs h,
                             bool zero_grad) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; k < n; k += stride) {
    const float gj = g[k] * h.grad_scale;
    const float mj = h.beta1 * m[k] + h.one_m_beta1 * gj;
    const float vj = h.beta2 * v[k] + h.one_m_beta2 * gj * gj;
    const float denom = sqrtf(vj * h.bias_corr2) + h.eps;
    const float pj = p[k];
    m[k] = mj;
    v[k] = vj;
    p[k] = pj - h.lr * (mj * h.bias_corr1 / denom + h.weight_decay * pj);
    if (zero_grad) g[k] = 0.0f;
  }
}

// partial[blockIdx.x] = sum of x^2 over chunk blockIdx.x, in double.
__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
  const int64_t c0 = int64_t{blockIdx.x} * kSumChunk;
  const int64_t c1 = c0 + kSumChunk < n ? c0 + kSumChunk : n;
  double s = 0.0;
  for (int64_t j = c0 + threadIdx.x; j < c1; j += blockDim.x) {
    const double xj = x[j];
    s = fma(xj, xj, s);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

}  // namespace

void adamw_update(cudaStream_t s, float* p, float* g, float* m, float* v, int64_t n, float beta1,
                  float beta2, float eps, float lr, float weight_decay, float bias_corr1,
                  float bias_corr2, float grad_scale, bool zero_grad) {
  if (n <= 0) return;
  const AdamArgs h{beta1, beta2,        1.0f - beta1, 1.0f - beta2, eps,
                   lr,    weight_decay, bias_corr1,   bias_corr2,   grad_scale};
  adamw_kernel<<<grid_for(n), kThreads, 0, s>>>(p, g, m, v, n, h, zero_grad);
  check_launch("adamw_update");
}

int sum_squares_parts(int64_t n) {
  return n <= 0 ? 0 : static_cast<int>((n + kSumChunk - 1) / kSumChunk);
}

void sum_squares(cudaStream_t s, const float* x, int64_t n, double* partial) {
  const int parts = sum_squares_parts(n);
  if (parts == 0) return;
  sum_squares_kernel<<<static_cast<unsigned>(parts), kThreads, 0, s>>>(x, n, partial);
  check_launch("sum_squares");
}

}  // namespace mlkv::cuda
