// Decode and prefill attention against the KV cache on the GPU (cuda_ops.h: kv_store,
// attn_cached_partial, attn_cached_combine): rows of f32, f16 or bf16 in the slot's blocks, each KV
// head read once per group of query heads, the context split in chunks whose partial softmax
// results are combined afterwards (flash-decoding). The backend (cuda_backend.cu) sizes the chunks
// and stages the block tables; this file holds the kernels and their launches.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <mutex>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/kv_rows.cuh"

namespace mlkv::cuda {
namespace {

using detail::kElemBytes;
using detail::kVecN;
using detail::load_elem;
using detail::load_vec;
using detail::store_elem;

// ---- KV store: token t's heads into cache rows rows[t] ----

__global__ void kv_store_kernel(const int32_t* rows, int n_head_kv, int d, const float* k,
                                const float* v, char* kc, char* vc, size_t k_head_stride,
                                size_t v_head_stride, size_t k_row_bytes, size_t v_row_bytes,
                                int kf, int vf) {
  const int t = blockIdx.x, h = blockIdx.y;
  const size_t row = static_cast<size_t>(rows[t]);
  const size_t src = (static_cast<size_t>(t) * n_head_kv + h) * d;
  char* kr = kc + h * k_head_stride + row * k_row_bytes;
  char* vr = vc + h * v_head_stride + row * v_row_bytes;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    store_elem(kr, i, k[src + i], kf);
    store_elem(vr, i, v[src + i], vf);
  }
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// One block per (query row, KV head, context chunk): the G query heads of the group score the
// chunk's keys (each key row read once for the group), then softmax-weight its values.
template <int KF, int VF>
__global__ void __launch_bounds__(kCachedThreads) attn_cached_partial(CachedArgs a) {
  const int r = blockIdx.x, hk = blockIdx.y, sp = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qrow = a.meta[r], pos = a.meta[a.R + r];
  const int32_t* blocks = a.blocks + a.meta[2 * a.R + r];
  const int G = a.G, d = a.d;
  const int start = sp * a.chunk, end = min(pos + 1, start + a.chunk);
  const size_t pidx = (static_cast<size_t>(r) * a.n_head_kv + hk) * a.n_split + sp;
  float* ml = a.part_ml + pidx * 2 * G;
  float* po = a.part_o + pidx * G * d;
  if (start >= end) {  // past this row's context: an empty part
    for (int i = threadIdx.x; i < G; i += blockDim.x) {
      ml[2 * i] = -INFINITY;
      ml[2 * i + 1] = 0.f;
    }
    for (int i = threadIdx.x; i < G * d; i += blockDim.x) po[i] = 0.f;
    return;
  }
  const int n = end - start;
  extern __shared__ float sm[];
  float* qs = sm;                  // [G, d], pre-scaled
  float* sc = qs + G * d;          // [G, chunk] scores, then probabilities
  float* kb = sc + G * a.chunk;    // [warps, d] one key row per warp
  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    qs[i] = a.q[(static_cast<size_t>(qrow) * a.n_head + hk * G + g) * d + e] * a.scale;
  }
  __syncthreads();

  const char* kbase = a.k + hk * a.k_head_stride;
  const char* vbase = a.v + hk * a.v_head_stride;
  float* kw = kb + warp * d;
  const int half = a.n_rot / 2;
  for (int p = start + warp; p < end; p += kCachedWarps) {
    const size_t row = static_cast<size_t>(blocks[p / a.block_size]) * a.block_size + p % a.block_size;
    const char* kr = kbase + row * a.k_row_bytes;
    for (int i = lane; i < d; i += 32) kw[i] = load_elem<KF>(kr, i);
    __syncwarp();
    if (a.rotate) {
      // rotate-half: pairs (i, i + half) of the first n_rot dims, by p * inv_freq[i].
      float rot[8];
      int cnt = 0;
      for (int i = lane; i < d && cnt < 8; i += 32, ++cnt) {
        float x = kw[i];
        if (i < half) {
          const float c = a.cos_t[static_cast<size_t>(p) * half + i];
          const float s = a.sin_t[static_cast<size_t>(p) * half + i];
          x = kw[i] * c - kw[i + half] * s;
        } else if (i < 2 * half) {
          const int j = i - half;
          const float c = a.cos_t[static_cast<size_t>(p) * half + j];
          const float s = a.sin_t[static_cast<size_t>(p) * half + j];
          x = kw[i] * c + kw[j] * s;
        }
        rot[cnt] = x;
      }
      __syncwarp();
      cnt = 0;
      for (int i = lane; i < d && cnt < 8; i += 32, ++cnt) kw[i] = rot[cnt];
      __syncwarp();
    }
    for (int g = 0; g < G; ++g) {
      float s = 0.f;
      for (int i = lane; i < d; i += 32) s += qs[g * d + i] * kw[i];
      s = warp_sum(s);
      if (lane == 0) sc[g * a.chunk + (p - start)] = s;
    }
    __syncwarp();
  }
  __syncthreads();

  for (int g = warp; g < G; g += kCachedWarps) {
    float* row = sc + g * a.chunk;
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, row[j]);
    m = warp_max(m);
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(row[j] - m);
      row[j] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      ml[2 * g] = m;
      ml[2 * g + 1] = l;
    }
  }
  __syncthreads();

  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    const float* pr = sc + g * a.chunk;
    float acc = 0.f;
    for (int j = 0; j < n; ++j) {
      const int p = start + j;
      const size_t row = static_cast<size_t>(blocks[p / a.block_size]) * a.block_size + p % a.block_size;
      acc += pr[j] * load_elem<VF>(vbase + row * a.v_row_bytes, e);
    }
    po[i] = acc;
  }
}

constexpr int kGroupRegs = 8;  // query heads scored per pass over a key row

// The vectorised variant of attn_cached_partial (16-byte aligned rows, d a multiple of the
// vector): one thread per key scores it against the group's queries (each key row read once per
// 8 query heads), then (key group x 16-byte slice) threads weight the values, summed over the key
// groups in shared memory. Same parts, same combine.
template <int KF, int VF>
__global__ void __launch_bounds__(kCachedThreads) attn_cached_partial_vec(CachedArgs a) {
  const int r = blockIdx.x, hk = blockIdx.y, sp = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qrow = a.meta[r], pos = a.meta[a.R + r];
  const int32_t* blocks = a.blocks + a.meta[2 * a.R + r];
  const int G = a.G, d = a.d;
  const int start = sp * a.chunk, end = min(pos + 1, start + a.chunk);
  const size_t pidx = (static_cast<size_t>(r) * a.n_head_kv + hk) * a.n_split + sp;
  float* ml = a.part_ml + pidx * 2 * G;
  float* po = a.part_o + pidx * G * d;
  if (start >= end) {
    for (int i = threadIdx.x; i < G; i += blockDim.x) {
      ml[2 * i] = -INFINITY;
      ml[2 * i + 1] = 0.f;
    }
    for (int i = threadIdx.x; i < G * d; i += blockDim.x) po[i] = 0.f;
    return;
  }
  const int n = end - start;
  extern __shared__ float sm[];
  float* qs = sm;                // [G, d], pre-scaled
  float* sc = qs + G * d;        // [G, chunk]
  float* red = sc + G * a.chunk;  // [key groups, d]
  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    qs[i] = a.q[(static_cast<size_t>(qrow) * a.n_head + hk * G + g) * d + e] * a.scale;
  }
  __syncthreads();
  const char* kbase = a.k + hk * a.k_head_stride;
  const char* vbase = a.v + hk * a.v_head_stride;
  const int bs = a.block_size;

  constexpr int KN = kVecN<KF>;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const int p = start + j;
    const char* kr = kbase + (static_cast<size_t>(blocks[p / bs]) * bs + p % bs) * a.k_row_bytes;
    for (int g0 = 0; g0 < G; g0 += kGroupRegs) {
      float acc[kGroupRegs];
#pragma unroll
      for (int gg = 0; gg < kGroupRegs; ++gg) acc[gg] = 0.f;
      if (!a.rotate) {
        for (int i = 0; i < d; i += KN) {
          float kv[KN];
          load_vec<KF>(kr + i * kElemBytes<KF>, kv);
#pragma unroll
          for (int gg = 0; gg < kGroupRegs; ++gg) {
            if (g0 + gg < G) {
              const float* qg = qs + (g0 + gg) * d + i;
#pragma unroll
              for (int e = 0; e < KN; ++e) acc[gg] += qg[e] * kv[e];
            }
          }
        }
      } else {
        // Raw keys rotated at position p on the way in (rotate-half, the first n_rot dims).
        const int half = a.n_rot / 2;
        const float* cs = a.cos_t + static_cast<size_t>(p) * half;
        const float* sn = a.sin_t + static_cast<size_t>(p) * half;
        for (int i = 0; i < d; ++i) {
          float x = load_elem<KF>(kr, i);
          if (i < half) {
            x = x * cs[i] - load_elem<KF>(kr, i + half) * sn[i];
          } else if (i < 2 * half) {
            x = x * cs[i - half] + load_elem<KF>(kr, i - half) * sn[i - half];
          }
#pragma unroll
          for (int gg = 0; gg < kGroupRegs; ++gg) {
            if (g0 + gg < G) acc[gg] += qs[(g0 + gg) * d + i] * x;
          }
        }
      }
#pragma unroll
      for (int gg = 0; gg < kGroupRegs; ++gg) {
        if (g0 + gg < G) sc[(g0 + gg) * a.chunk + j] = acc[gg];
      }
    }
  }
  __syncthreads();

  for (int g = warp; g < G; g += kCachedWarps) {
    float* row = sc + g * a.chunk;
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, row[j]);
    m = warp_max(m);
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(row[j] - m);
      row[j] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      ml[2 * g] = m;
      ml[2 * g + 1] = l;
    }
  }
  __syncthreads();

  constexpr int VN = kVecN<VF>;
  const int NV = d / VN, KG = blockDim.x / NV;
  const int kg = threadIdx.x / NV, dv = threadIdx.x % NV;
  for (int g = 0; g < G; ++g) {
    const float* pr = sc + g * a.chunk;
    float acc[VN];
#pragma unroll
    for (int e = 0; e < VN; ++e) acc[e] = 0.f;
    for (int j = kg; j < n; j += KG) {
      const int p = start + j;
      const char* vr = vbase + (static_cast<size_t>(blocks[p / bs]) * bs + p % bs) * a.v_row_bytes;
      float vv[VN];
      load_vec<VF>(vr + dv * VN * kElemBytes<VF>, vv);
      const float w = pr[j];
#pragma unroll
      for (int e = 0; e < VN; ++e) acc[e] += w * vv[e];
    }
#pragma unroll
    for (int e = 0; e < VN; ++e) red[kg * d + dv * VN + e] = acc[e];
    __syncthreads();
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
      float s = 0.f;
      for (int k = 0; k < KG; ++k) s += red[k * d + e];
      po[g * d + e] = s;
    }
    __syncthreads();
  }
}

// out[row, h, :] = the parts of (row, h) combined: sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
__global__ void attn_cached_combine_kernel(const int32_t* meta, int R, int n_head, int n_head_kv, int G,
                                    int d, int n_split, const float* part_o, const float* part_ml,
                                    float* out) {
  const int r = blockIdx.x, h = blockIdx.y;
  const int hk = h / G, g = h % G;
  const size_t base = (static_cast<size_t>(r) * n_head_kv + hk) * n_split;
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, part_ml[(base + s) * 2 * G + 2 * g]);
  float L = 0.f;
  for (int s = 0; s < n_split; ++s) {
    const float* ml = part_ml + (base + s) * 2 * G + 2 * g;
    if (ml[1] > 0.f) L += expf(ml[0] - M) * ml[1];
  }
  const float inv = 1.f / L;
  float* o = out + (static_cast<size_t>(meta[r]) * n_head + h) * d;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < n_split; ++s) {
      const float* ml = part_ml + (base + s) * 2 * G + 2 * g;
      if (ml[1] > 0.f) acc += expf(ml[0] - M) * part_o[((base + s) * G + g) * d + e];
    }
    o[e] = acc * inv;
  }
}

template <int KF, int VF>
void launch_cached(const CachedArgs& a, bool vec, size_t smem, cudaStream_t s) {
  static std::once_flag once;
  std::call_once(once, [] {
    for (const void* f : {reinterpret_cast<const void*>(attn_cached_partial<KF, VF>),
                          reinterpret_cast<const void*>(attn_cached_partial_vec<KF, VF>)}) {
      cuda_check(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(kCachedSmemMax)),
                 "attention smem limit");
    }
  });
  const dim3 grid(static_cast<unsigned>(a.R), static_cast<unsigned>(a.n_head_kv),
                  static_cast<unsigned>(a.n_split));
  if (vec) {
    attn_cached_partial_vec<KF, VF><<<grid, kCachedThreads, smem, s>>>(a);
  } else {
    attn_cached_partial<KF, VF><<<grid, kCachedThreads, smem, s>>>(a);
  }
  check_launch("attention_cached");
}

template <int KF>
void launch_cached_v(int vf, const CachedArgs& a, bool vec, size_t smem, cudaStream_t s) {
  switch (vf) {
    case kFmtF32: launch_cached<KF, kFmtF32>(a, vec, smem, s); break;
    case kFmtF16: launch_cached<KF, kFmtF16>(a, vec, smem, s); break;
    default: launch_cached<KF, kFmtBF16>(a, vec, smem, s); break;
  }
}

}  // namespace

// Whether the vectorised kernel applies: 16-byte aligned rows and heads, d a multiple of both
// formats' vectors, and the vectors of a value row dividing the block.
bool cached_vec_ok(const CachedArgs& a, int kf, int vf) {
  const int kn = kf == kFmtF32 ? 4 : 8, vn = vf == kFmtF32 ? 4 : 8;
  const uintptr_t bits = reinterpret_cast<uintptr_t>(a.k) | reinterpret_cast<uintptr_t>(a.v) |
                         a.k_head_stride | a.v_head_stride | a.k_row_bytes | a.v_row_bytes;
  return bits % 16 == 0 && a.d % kn == 0 && a.d % vn == 0 && kCachedThreads % (a.d / vn) == 0;
}

void kv_store(cudaStream_t s, const int32_t* rows, int n, int n_head_kv, int d, const float* k,
              const float* v, char* kc, char* vc, size_t k_head_stride, size_t v_head_stride,
              size_t k_row_bytes, size_t v_row_bytes, int kf, int vf) {
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(n_head_kv));
  kv_store_kernel<<<grid, d < 128 ? d : 128, 0, s>>>(rows, n_head_kv, d, k, v, kc, vc,
                                                    k_head_stride, v_head_stride, k_row_bytes,
                                                    v_row_bytes, kf, vf);
  check_launch("kv_store");
}

void attn_cached_parts(cudaStream_t s, const CachedArgs& a, int kf, int vf, bool vec, size_t smem) {
  switch (kf) {
    case kFmtF32: launch_cached_v<kFmtF32>(vf, a, vec, smem, s); break;
    case kFmtF16: launch_cached_v<kFmtF16>(vf, a, vec, smem, s); break;
    default: launch_cached_v<kFmtBF16>(vf, a, vec, smem, s); break;
  }
}

void attn_cached_combine(cudaStream_t s, const CachedArgs& a, float* out) {
  const dim3 grid(static_cast<unsigned>(a.R), static_cast<unsigned>(a.n_head));
  attn_cached_combine_kernel<<<grid, a.d < 128 ? a.d : 128, 0, s>>>(
      a.meta, a.R, a.n_head, a.n_head_kv, a.G, a.d, a.n_split, a.part_o, a.part_ml, out);
  check_launch("attention_cached combine");
}

}  // namespace mlkv::cuda
