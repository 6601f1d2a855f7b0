// The fused cross-entropy of the output head on the GPU (cuda_ops.h; semantics of
// ops::cross_entropy_forward_backward, math of kernels/ref/loss.h and kernels/cpu/loss.cpp).
// One block per row: each thread runs an online (max, sum exp) over its strided elements, the
// block merges the pairs in a fixed order (butterfly within warps, then the warps in order), so
// the row's max and sum take one read of the logits and the same bits on every run; the gradient
// is a second pass. NaN and +inf logits give NaN losses and gradients, as on the CPU.
#include <cmath>

#include "kernels/cuda/cuda_ops.h"

namespace mlkv::cuda {

namespace {

constexpr int kCeThreads = 1024;

// sum exp(x - m) over a set of logits with its max m (m = -inf, s = 0: the empty set).
struct MaxSum {
  float m, s;
};

// Commutative bit for bit (fmaxf and + are), so every lane of a butterfly gets the same pair.
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  if (a.m != a.m || b.m != b.m) return {NAN, NAN};
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
  for (int o = 16; o > 0; o >>= 1) {
    const MaxSum u{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = merge(v, u);
  }
  return v;
}

// Row blockIdx.x of logits [n, V]: row_loss = logsumexp - logits[target]; with grad the row
// becomes scale (softmax - onehot(target)). A target outside [0, V) (undefined on the CPU) gives
// a NaN loss and no onehot term instead of a stray memory access.
__global__ void cross_entropy_kernel(float* logits, const int32_t* target, int V, float scale,
                                     bool grad, float* row_loss) {
  __shared__ float part_m[kCeThreads / 32], part_s[kCeThreads / 32];
  float* row = logits + int64_t{blockIdx.x} * V;
  const int tgt = target[blockIdx.x];
  const bool tgt_ok = tgt >= 0 && tgt < V;
  const float x_t = tgt_ok ? row[tgt] : NAN;  // read before any thread writes the row

  MaxSum p{-INFINITY, 0.0f};
  for (int i = threadIdx.x; i < V; i += kCeThreads) {
    const float x = row[i];
    if (x > p.m) {
      p.s = p.s * expf(p.m - x) + 1.0f;
      p.m = x;
    } else if (x != x) {
      p = {x, x};  // NaN sticks: no later comparison is true
    } else if (p.m > -INFINITY) {
      p.s += expf(x - p.m);
    }
  }
  p = warp_merge(p);
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  if (lane == 0) {
    part_m[warp] = p.m;
    part_s[warp] = p.s;
  }
  __syncthreads();
  p = warp_merge(MaxSum{part_m[lane], part_s[lane]});  // kCeThreads / 32 == 32 warps
  // A +inf logit: the CPU's exp(x - max) is exp(inf - inf) = NaN for it.
  const float mx = p.m == INFINITY ? NAN : p.m, sum = p.s;

  if (threadIdx.x == 0) row_loss[blockIdx.x] = mx + logf(sum) - x_t;
  if (!grad) return;
  const float inv = scale / sum;
  for (int i = threadIdx.x; i < V; i += kCeThreads) {
    float g = expf(row[i] - mx) * inv;
    if (i == tgt) g -= scale;
    row[i] = g;
  }
}

static_assert(kCeThreads == 32 * 32, "the second merge reads one warp result per lane");

}  // namespace

void cross_entropy(cudaStream_t s, float* logits, const int32_t* target, int n, int V, float scale,
                   bool grad, float* row_loss) {
  if (n <= 0 || V <= 0) return;
  cross_entropy_kernel<<<static_cast<unsigned>(n), kCeThreads, 0, s>>>(logits, target, V, scale,
                                                                       grad, row_loss);
  check_launch("cross_entropy");
}

}  // namespace mlkv::cuda
