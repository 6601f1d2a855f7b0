// Device helpers for rows of f32, f16 or bf16 values (KV-cache rows, weight rows) shared by
// attention_cached.cu and gemv.cu: one value by index, 16-byte vectors widened to f32, and the
// store of a value in a row's format. Internal to src/kernels/cuda; not a public header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_ops.h"

namespace mlkv::cuda::detail {

template <int F>
__device__ __forceinline__ float load_elem(const char* row, int i) {
  if constexpr (F == kFmtF32) {
    return reinterpret_cast<const float*>(row)[i];
  } else if constexpr (F == kFmtF16) {
    return __half2float(reinterpret_cast<const __half*>(row)[i]);
  } else {
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[i]);
  }
}

__device__ __forceinline__ void store_elem(char* row, int i, float x, int f) {
  if (f == kFmtF32) {
    reinterpret_cast<float*>(row)[i] = x;
  } else if (f == kFmtF16) {
    reinterpret_cast<__half*>(row)[i] = __float2half_rn(x);
  } else {
    reinterpret_cast<__nv_bfloat16*>(row)[i] = __float2bfloat16_rn(x);
  }
}

// 16-byte vectors of a cache row: 4 f32 or 8 f16/bf16 values, widened to f32.
template <int F>
constexpr int kVecN = F == kFmtF32 ? 4 : 8;
template <int F>
constexpr int kElemBytes = F == kFmtF32 ? 4 : 2;

template <int F>
__device__ __forceinline__ void load_vec(const char* p, float* out) {
  if constexpr (F == kFmtF32) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
  } else if constexpr (F == kFmtF16) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(h[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  } else {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}

}  // namespace mlkv::cuda::detail
