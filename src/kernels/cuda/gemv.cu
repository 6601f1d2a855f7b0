// Decode products on the GPU (cuda_ops.h: gemv): y[r, :] (+)= x[r, :] w^T + b for up to
// kGemvMaxRows rows, f32 / f16 / bf16 weights read once in 16-byte vectors, f32 activations.
#include <cuda_runtime.h>

#include <cstdlib>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/kv_rows.cuh"
#include "kernels/cuda/reduce.cuh"

namespace mlkv::cuda {
namespace {

using detail::kElemBytes;
using detail::kVecN;
using detail::load_vec;
using detail::warp_sum;

// ---- decode products: y[r, :] (+)= x[r, :] w^T + b for a few rows ----

constexpr int kGemvThreads = 256;  // 8 warps: 8 outputs per block

// One warp per output column o: the lanes stream w's row o in 16-byte vectors (read once for all
// rows), each row's dot product is reduced across the warp. Bandwidth-bound, one launch (bias and
// accumulation fused), no rounding of the activations.
template <int F>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(const float* __restrict__ x,
                                                            const char* __restrict__ w,
                                                            const float* __restrict__ b, float* y,
                                                            int n, int K, int N, bool accumulate) {
  constexpr int VN = kVecN<F>;
  const int o = blockIdx.x * (kGemvThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (o >= N) return;
  const char* wr = w + static_cast<size_t>(o) * K * kElemBytes<F>;
  float acc[kGemvMaxRows];
#pragma unroll
  for (int r = 0; r < kGemvMaxRows; ++r) acc[r] = 0.f;
  for (int k = lane * VN; k < K; k += 32 * VN) {
    float wv[VN];
    load_vec<F>(wr + static_cast<size_t>(k) * kElemBytes<F>, wv);
#pragma unroll
    for (int r = 0; r < kGemvMaxRows; ++r) {
      if (r < n) {
        const float4* xr = reinterpret_cast<const float4*>(x + static_cast<size_t>(r) * K + k);
#pragma unroll
        for (int v4 = 0; v4 < VN / 4; ++v4) {
          const float4 xv = xr[v4];
          acc[r] += wv[4 * v4] * xv.x + wv[4 * v4 + 1] * xv.y + wv[4 * v4 + 2] * xv.z +
                    wv[4 * v4 + 3] * xv.w;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kGemvMaxRows; ++r) {
    if (r < n) {
      const float sum = warp_sum(acc[r]);
      if (lane == 0) {
        float* yo = y + static_cast<size_t>(r) * N + o;
        *yo = (accumulate ? *yo : 0.f) + sum + (b != nullptr ? b[o] : 0.f);
      }
    }
  }
}

// Whether gemv_kernel applies: few rows, 16-byte aligned rows of x and w.
}  // namespace

bool gemv_ok(const float* x, const void* w, int n, int K, DType wt) {
  const int vn = wt == DType::kF32 ? 4 : 8;
  return n <= kGemvMaxRows && K % vn == 0 &&
         (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) % 16 == 0 &&
         std::getenv("MLKV_CUDA_NO_GEMV") == nullptr;
}

void gemv(cudaStream_t s, const float* x, const void* w, DType wt, const float* b, float* y, int n,
          int K, int N, bool accumulate) {
  const dim3 grid(static_cast<unsigned>((N + kGemvThreads / 32 - 1) / (kGemvThreads / 32)));
  const char* wp = static_cast<const char*>(w);
  switch (wt) {
    case DType::kF32: gemv_kernel<kFmtF32><<<grid, kGemvThreads, 0, s>>>(x, wp, b, y, n, K, N, accumulate); break;
    case DType::kF16: gemv_kernel<kFmtF16><<<grid, kGemvThreads, 0, s>>>(x, wp, b, y, n, K, N, accumulate); break;
    default: gemv_kernel<kFmtBF16><<<grid, kGemvThreads, 0, s>>>(x, wp, b, y, n, K, N, accumulate); break;
  }
  check_launch("gemv");
}

}  // namespace mlkv::cuda
