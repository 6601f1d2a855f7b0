// Device helpers shared by the CUDA kernel files (norms.cu, loss.cu, optim.cu, elementwise.cu):
// launch sizes for grid-stride loops and block reductions whose order of additions is fixed by
// the block size alone, so a kernel launched with a constant block size gives the same bits on
// every run. Internal to src/kernels/cuda; not a public header.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace mlkv::cuda::detail {

inline constexpr int kThreads = 256;                     // element-wise and row kernels
inline constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops cover the rest
// Column reductions over rows (weight and bias gradients): a block of (kColTile, kRowGroups)
// threads owns kColTile columns; row group g adds rows g, g + kRowGroups, ... in order, then the
// groups are added in order (no atomics: the same bits on every run).
inline constexpr int kColTile = 32;
inline constexpr int kRowGroups = 32;

// Blocks of `threads` for a grid-stride loop over n items (n > 0).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, kMaxBlocks));
}

// Grid of a row kernel over [n, E] (n, E > 0): x covers the E columns in blocks of kThreads, y
// strides over the rows (blockIdx.y, + gridDim.y, ...), so no thread divides a flat index.
inline dim3 grid_rows(int n, int E) {
  return dim3(static_cast<unsigned>((E + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::min(n, 65535)));
}

// Butterfly sum over a full warp: every lane ends with the same bits (a + b == b + a exactly).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
// The leading barrier lets a kernel call it several times in a row.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T part[32];
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int n_warps = static_cast<int>(blockDim.x) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  return warp_sum(lane < n_warps ? part[lane] : T(0));
}

}  // namespace mlkv::cuda::detail
