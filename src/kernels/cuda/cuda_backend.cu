// The CUDA backend: Backend<float> (kernels/backend.h) on one GPU. Activations and weights live in
// device memory (cudaMalloc through the allocator registered for Device::kCuda); products go to
// cuBLAS (f32 weights: SGEMM with f32 math, no TF32; f16/bf16 weights: the activations are
// rounded to the weights' type and multiplied with f32 accumulation); the other ops are the
// kernels of cuda_ops.h. Everything runs in order on one stream. Host arrays that the interface
// passes (token ids, positions, block tables, targets) are staged through pinned buffers, once per
// distinct content, so a decode step uploads its positions once, not once per layer.
//
// The KV cache on the GPU holds f32, f16 or bf16 rows (the quantized formats are CPU-only for now
// and are refused with an error). Decode and prefill attention against the cache
// (attention_cached) read each KV head once per group of query heads, split along the context in
// chunks whose partial softmax results are combined afterwards (flash-decoding).
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/check.h"
#include "core/device.h"
#include "kernels/cuda/cuda_ops.h"

namespace mlkv::cuda {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("CUDA kernel ", kernel, " failed to launch: ", cudaGetErrorString(e));
}

namespace {

void cublas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error in ", what, ": status ", static_cast<int>(s));
}

// ---- the allocator of Device::kCuda ----

class CudaAllocator final : public DeviceAllocator {
 public:
  explicit CudaAllocator(cudaStream_t s) : s_(s) {}
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    if (bytes == 0) return nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of GPU memory: ", bytes, " bytes requested, ", free_b, " of ", total_b, " free");
    }
    cuda_check(cudaMemsetAsync(p, 0, bytes, s_), "cudaMemset");
    return p;
  }
  void deallocate(void* p, size_t) noexcept override {
    if (p == nullptr) return;
    // Work queued on the stream may still read p.
    cudaStreamSynchronize(s_);
    cudaFree(p);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s_), "device copy");
  }
  void to_host(void* host, const void* src, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, s_), "copy to host");
    cuda_check(cudaStreamSynchronize(s_), "copy to host");
  }
  void from_host(void* dst, const void* host, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, s_), "copy to GPU");
    cuda_check(cudaStreamSynchronize(s_), "copy to GPU");
  }

 private:
  cudaStream_t s_;
};

// A device buffer that only grows (scratch of one purpose).
class DeviceBuffer {
 public:
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  void* get(size_t bytes, cudaStream_t s) {
    if (bytes > cap_) {
      if (p_) {
        cuda_check(cudaStreamSynchronize(s), "scratch release");
        cudaFree(p_);
        p_ = nullptr;
        cap_ = 0;
      }
      cuda_check(cudaMalloc(&p_, bytes), "scratch allocation");
      cap_ = bytes;
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// Host arrays staged to the device by purpose; an upload whose bytes equal the last one of its
// purpose reuses the device copy (stream order keeps earlier readers safe).
class Uploader {
 public:
  enum Slot { kTokens, kPositions, kStoreRows, kAttnMeta, kGather, kTargets, kCount };
  ~Uploader() {
    for (Entry& e : e_) {
      if (e.pinned) cudaFreeHost(e.pinned);
      if (e.ev) cudaEventDestroy(e.ev);
    }
  }
  const void* put(Slot slot, const void* host, size_t bytes, cudaStream_t s) {
    Entry& e = e_[slot];
    if (e.valid && e.last.size() == bytes && std::memcmp(e.last.data(), host, bytes) == 0) {
      return e.dev.get(bytes, s);
    }
    if (e.ev == nullptr) cuda_check(cudaEventCreateWithFlags(&e.ev, cudaEventDisableTiming), "event");
    cuda_check(cudaEventSynchronize(e.ev), "staging");  // the pinned buffer is free again
    if (bytes > e.pinned_cap) {
      if (e.pinned) cudaFreeHost(e.pinned);
      e.pinned = nullptr;
      cuda_check(cudaMallocHost(&e.pinned, bytes), "pinned staging buffer");
      e.pinned_cap = bytes;
    }
    std::memcpy(e.pinned, host, bytes);
    void* dev = e.dev.get(bytes, s);
    cuda_check(cudaMemcpyAsync(dev, e.pinned, bytes, cudaMemcpyHostToDevice, s), "upload");
    cuda_check(cudaEventRecord(e.ev, s), "upload");
    e.last.assign(static_cast<const char*>(host), static_cast<const char*>(host) + bytes);
    e.valid = true;
    return dev;
  }

 private:
  struct Entry {
    std::vector<char> last;
    DeviceBuffer dev;
    void* pinned = nullptr;
    size_t pinned_cap = 0;
    cudaEvent_t ev = nullptr;
    bool valid = false;
  };
  Entry e_[kCount];
};

// ---- cache formats ----

enum KvFmt { kFmtF32 = 0, kFmtF16 = 1, kFmtBF16 = 2 };

int kv_fmt(DType t) {
  switch (t) {
    case DType::kF32: return kFmtF32;
    case DType::kF16: return kFmtF16;
    case DType::kBF16: return kFmtBF16;
    default: break;
  }
  fail("the CUDA backend keeps the KV cache in f32, f16 or bf16 (got ", dtype_name(t),
       "); quantized KV caches run on the CPU");
}

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

// ---- attention against the cache ----

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

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

constexpr int kCachedThreads = 128;
constexpr int kCachedWarps = kCachedThreads / 32;
constexpr size_t kCachedSmemMax = 96 * 1024;

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
__global__ void attn_cached_combine(const int32_t* meta, int R, int n_head, int n_head_kv, int G,
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

// Whether the vectorised kernel applies: 16-byte aligned rows and heads, d a multiple of both
// formats' vectors, and the vectors of a value row dividing the block.
bool cached_vec_ok(const CachedArgs& a, int kf, int vf) {
  const int kn = kf == kFmtF32 ? 4 : 8, vn = vf == kFmtF32 ? 4 : 8;
  const uintptr_t bits = reinterpret_cast<uintptr_t>(a.k) | reinterpret_cast<uintptr_t>(a.v) |
                         a.k_head_stride | a.v_head_stride | a.k_row_bytes | a.v_row_bytes;
  return bits % 16 == 0 && a.d % kn == 0 && a.d % vn == 0 && kCachedThreads % (a.d / vn) == 0;
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

// ---- decode products: y[r, :] (+)= x[r, :] w^T + b for a few rows ----

constexpr int kGemvMaxRows = 8;
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
bool gemv_ok(const float* x, const void* w, int n, int K, DType wt) {
  const int vn = wt == DType::kF32 ? 4 : 8;
  return n <= kGemvMaxRows && K % vn == 0 &&
         (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) % 16 == 0 &&
         std::getenv("MLKV_CUDA_NO_GEMV") == nullptr;
}

void gemv(cudaStream_t s, const float* x, const Tensor& w, const float* b, float* y, int n, int K,
          int N, bool accumulate) {
  const dim3 grid(static_cast<unsigned>((N + kGemvThreads / 32 - 1) / (kGemvThreads / 32)));
  const char* wp = static_cast<const char*>(w.raw());
  switch (w.dtype()) {
    case DType::kF32: gemv_kernel<kFmtF32><<<grid, kGemvThreads, 0, s>>>(x, wp, b, y, n, K, N, accumulate); break;
    case DType::kF16: gemv_kernel<kFmtF16><<<grid, kGemvThreads, 0, s>>>(x, wp, b, y, n, K, N, accumulate); break;
    default: gemv_kernel<kFmtBF16><<<grid, kGemvThreads, 0, s>>>(x, wp, b, y, n, K, N, accumulate); break;
  }
  check_launch("gemv");
}

// ---- the backend ----

class CudaWorkspace final : public Workspace {
 public:
  DeviceBuffer attn;  // attention backward scratch
  size_t attn_bytes = 0;
  int64_t bytes() const override { return static_cast<int64_t>(attn_bytes); }
};

class CudaBackend final : public Backend<float> {
 public:
  explicit CudaBackend(int index) : index_(index) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail("no usable CUDA GPU: ", cudaGetErrorString(e));
    }
    MLKV_REQUIRE(n > 0, "no CUDA GPU found");
    MLKV_REQUIRE(index < n, "GPU cuda:", index, " does not exist (", n, " found)");
    cuda_check(cudaSetDevice(index), "cudaSetDevice");
    cudaDeviceProp p{};
    cuda_check(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
    name_ = cat("cuda:", index, " (", p.name, ", sm_", p.major, p.minor, ")");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    cublas_check(cublasCreate(&blas_), "cublasCreate");
    cublas_check(cublasSetStream(blas_, stream_), "cublasSetStream");
    // f32 products stay f32 (no TF32), so results match the CPU within f32 rounding.
    cublas_check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    alloc_ = std::make_unique<CudaAllocator>(stream_);
    register_device_allocator(Device::kCuda, alloc_.get());
  }

  Device device() const override { return Device::kCuda; }
  std::string name() const override { return name_; }
  std::unique_ptr<Workspace> new_workspace() const override {
    return std::make_unique<CudaWorkspace>();
  }

  void set_matmul_dtype(DType t) override {
    MLKV_REQUIRE(t == DType::kF32 || t == DType::kBF16,
                 "the CUDA backend multiplies in f32 or bf16 (got ", dtype_name(t), ")");
    mixed_bf16_ = t == DType::kBF16;
  }

  // ---- linear ----
  void linear_forward(const float* x, const Tensor& w, const Tensor& b, float* y, int n, int K,
                      int N, bool accumulate) override {
    check_weight(w, int64_t{N} * K, "linear weight");
    const float one = 1.f, beta = accumulate ? 1.f : 0.f;
    if (!b.empty()) {
      check_weight(b, N, "bias");
      MLKV_REQUIRE(b.dtype() == DType::kF32, "biases are f32 on the GPU");
    }
    const bool lowp = w.dtype() == DType::kF16 || w.dtype() == DType::kBF16;
    if ((lowp || w.dtype() == DType::kF32) && gemv_ok(x, w.raw(), n, K, w.dtype())) {
      // Decode-sized batches: one bandwidth-bound kernel, the activations stay f32.
      gemv(stream_, x, w, b.empty() ? nullptr : static_cast<const float*>(b.raw()), y, n, K, N,
           accumulate);
      return;
    }
    if (w.dtype() == DType::kF32 && mixed_bf16_) {
      const uint16_t* wh = bf16_copy(static_cast<const float*>(w.raw()), int64_t{N} * K, wtmp_);
      const uint16_t* xh = bf16_copy(x, int64_t{n} * K, act16_);
      gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, N, n, K, wh, K, xh, K, beta, y, N, "linear (bf16 mixed)");
    } else if (w.dtype() == DType::kF32) {
      cublas_check(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, n, K, &one,
                               static_cast<const float*>(w.raw()), K, x, K, &beta, y, N),
                   "linear (f32)");
    } else {
      MLKV_REQUIRE(w.dtype() == DType::kF16 || w.dtype() == DType::kBF16,
                   "the CUDA backend multiplies f32, f16 or bf16 weights (got ",
                   dtype_name(w.dtype()), ")");
      const bool bf = w.dtype() == DType::kBF16;
      auto* xh = static_cast<uint16_t*>(act16_.get(static_cast<size_t>(n) * K * 2, stream_));
      if (bf) {
        to_bf16(stream_, x, xh, int64_t{n} * K);
      } else {
        to_f16(stream_, x, xh, int64_t{n} * K);
      }
      const cudaDataType_t t = bf ? CUDA_R_16BF : CUDA_R_16F;
      cublas_check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, n, K, &one, w.raw(), t, K, xh,
                                t, K, &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   bf ? "linear (bf16)" : "linear (f16)");
    }
    if (!b.empty()) add_bias(stream_, y, static_cast<const float*>(b.raw()), n, N);
  }

  void linear_backward(const float* dy, const float* x, const Tensor& w, float* dx, Tensor* dw,
                       Tensor* db, int n, int K, int N, bool accumulate_dx) override {
    check_weight(w, int64_t{N} * K, "linear weight");
    MLKV_REQUIRE(w.dtype() == DType::kF32, "training on the GPU needs f32 weights (got ",
                 dtype_name(w.dtype()), ")");
    const float one = 1.f;
    if (mixed_bf16_) {
      // bf16 operands, f32 accumulation into f32 dx and dw.
      const uint16_t* dyh = bf16_copy(dy, int64_t{n} * N, dy16_);
      if (dx != nullptr) {
        const uint16_t* wh = bf16_copy(static_cast<const float*>(w.raw()), int64_t{N} * K, wtmp_);
        gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, K, n, N, wh, K, dyh, N, accumulate_dx ? 1.f : 0.f, dx,
                  K, "linear backward (dx, bf16 mixed)");
      }
      if (dw != nullptr && !dw->empty()) {
        check_weight(*dw, int64_t{N} * K, "weight gradient");
        const uint16_t* xh = bf16_copy(x, int64_t{n} * K, act16_);
        gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, K, N, n, xh, K, dyh, N, 1.f,
                  static_cast<float*>(dw->raw()), K, "linear backward (dw, bf16 mixed)");
      }
      if (db != nullptr && !db->empty()) column_sums(stream_, dy, static_cast<float*>(db->raw()), n, N);
      return;
    }
    if (dx != nullptr) {
      const float beta = accumulate_dx ? 1.f : 0.f;
      // dx [n, K] = dy [n, N] w [N, K]
      cublas_check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, K, n, N, &one,
                               static_cast<const float*>(w.raw()), K, dy, N, &beta, dx, K),
                   "linear backward (dx)");
    }
    if (dw != nullptr && !dw->empty()) {
      check_weight(*dw, int64_t{N} * K, "weight gradient");
      // dw [N, K] += dy^T [N, n] x [n, K]
      cublas_check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, K, N, n, &one, x, K, dy, N, &one,
                               static_cast<float*>(dw->raw()), K),
                   "linear backward (dw)");
    }
    if (db != nullptr && !db->empty()) {
      column_sums(stream_, dy, static_cast<float*>(db->raw()), n, N);
    }
  }

  // ---- norms ----
  void layernorm_forward(const float* x, const Tensor& w, const Tensor& b, float* y, float* mean,
                         float* rstd, int n, int E, double eps) override {
    check_weight(w, E, "norm weight");
    cuda::layernorm_forward(stream_, x, f32(w), b.empty() ? nullptr : f32(b), y, mean, rstd, n, E,
                            static_cast<float>(eps));
  }
  void layernorm_backward(const float* dy, const float* x, const Tensor& w, const float* mean,
                          const float* rstd, float* dx, Tensor& dw, Tensor* db, int n,
                          int E) override {
    cuda::layernorm_backward(stream_, dy, x, f32(w), mean, rstd, dx, f32m(dw),
                             db && !db->empty() ? f32m(*db) : nullptr, n, E);
  }
  void rmsnorm_forward(const float* x, const Tensor& w, float* y, float* rstd, int n, int E,
                       double eps) override {
    check_weight(w, E, "norm weight");
    cuda::rmsnorm_forward(stream_, x, f32(w), y, rstd, n, E, static_cast<float>(eps));
  }
  void rmsnorm_backward(const float* dy, const float* x, const Tensor& w, const float* rstd,
                        float* dx, Tensor& dw, int n, int E) override {
    cuda::rmsnorm_backward(stream_, dy, x, f32(w), rstd, dx, f32m(dw), n, E);
  }

  // ---- rotary, activations ----
  void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
            const ops::RopeTable<float>& rt, bool inverse) override {
    if (rt.n_rot == 0 || n == 0) return;
    const auto* dpos = static_cast<const int32_t*>(
        up_.put(Uploader::kPositions, pos, sizeof(int32_t) * static_cast<size_t>(n), stream_));
    const RopeDev& r = rope_tables(rt);
    cuda::rope(stream_, x, n, n_heads, head_dim, dpos, r.cos, r.sin, rt.n_rot, inverse);
  }
  void gelu_forward(const float* x, float* y, int64_t n, bool tanh_form) override {
    cuda::gelu_forward(stream_, x, y, n, tanh_form);
  }
  void gelu_backward(const float* x, const float* dy, float* dx, float* y, int64_t n,
                     bool tanh_form) override {
    cuda::gelu_backward(stream_, x, dy, dx, y, n, tanh_form);
  }
  void swiglu_forward(const float* gate, const float* up, float* y, int64_t n) override {
    cuda::swiglu_forward(stream_, gate, up, y, n);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate,
                       float* dup, float* y, int64_t n) override {
    cuda::swiglu_backward(stream_, gate, up, dy, dgate, dup, y, n);
  }

  // ---- embedding, output head ----
  void embedding_forward(const int32_t* tok, const Tensor& table, float* x, int n, int E) override {
    MLKV_REQUIRE(table.dtype() == DType::kF32, "the embedding table is f32 on the GPU");
    const auto* dtok = static_cast<const int32_t*>(
        up_.put(Uploader::kTokens, tok, sizeof(int32_t) * static_cast<size_t>(n), stream_));
    cuda::embedding_forward(stream_, dtok, f32(table), x, n, E);
  }
  void embedding_backward(const int32_t* tok, const float* dx, Tensor& dtable, int n,
                          int E) override {
    const auto* dtok = static_cast<const int32_t*>(
        up_.put(Uploader::kTokens, tok, sizeof(int32_t) * static_cast<size_t>(n), stream_));
    cuda::embedding_backward(stream_, dtok, dx, f32m(dtable), n, E);
  }
  double cross_entropy(float* logits, const int32_t* target, int n, int V, float scale, bool grad,
                       float* row_loss) override {
    const auto* dt = static_cast<const int32_t*>(
        up_.put(Uploader::kTargets, target, sizeof(int32_t) * static_cast<size_t>(n), stream_));
    cuda::cross_entropy(stream_, logits, dt, n, V, scale, grad, row_loss);
    host_f_.resize(static_cast<size_t>(n));
    to_host(row_loss, host_f_.data(), n);
    double sum = 0;
    for (float l : host_f_) sum += l;  // row order, in double (as the CPU)
    return sum;
  }

  // ---- attention ----
  void attention_forward(const float* q, const float* k, const float* v, float* o, float* lse,
                         const ops::AttnDims& a, Workspace& ws) override {
    cuda::attention_forward(stream_, q, k, v, o, lse, a.batch, a.ctx, a.n_head, a.n_head_kv,
                            a.head_dim);
  }
  void attention_backward(const float* q, const float* k, const float* v, const float* o,
                          const float* lse, const float* dout, float* dq, float* dk, float* dv,
                          const ops::AttnDims& a, Workspace& ws) override {
    auto& w = static_cast<CudaWorkspace&>(ws);
    const size_t bytes = sizeof(float) * static_cast<size_t>(attention_backward_scratch(
                                             a.batch, a.ctx, a.n_head, a.n_head_kv, a.head_dim));
    auto* scratch = static_cast<float*>(w.attn.get(bytes, stream_));
    w.attn_bytes = std::max(w.attn_bytes, bytes);
    cuda::attention_backward(stream_, q, k, v, o, lse, dout, dq, dk, dv, a.batch, a.ctx, a.n_head,
                             a.n_head_kv, a.head_dim, scratch);
  }

  void kv_store(const ops::KvSlotView& slot, const int32_t* seq, const int32_t* pos, int n,
                const float* k, const float* v) override {
    if (n == 0) return;
    const int kf = kv_fmt(slot.k_dtype), vf = kv_fmt(slot.v_dtype);
    rows_.resize(static_cast<size_t>(n));
    for (int t = 0; t < n; ++t) rows_[static_cast<size_t>(t)] = static_cast<int32_t>(slot.row(seq[t], pos[t]));
    const auto* drows = static_cast<const int32_t*>(
        up_.put(Uploader::kStoreRows, rows_.data(), sizeof(int32_t) * rows_.size(), stream_));
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(slot.n_head_kv));
    kv_store_kernel<<<grid, std::min(slot.head_dim, 128), 0, stream_>>>(
        drows, slot.n_head_kv, slot.head_dim, k, v, slot.k, slot.v, slot.k_head_stride,
        slot.v_head_stride, slot.k_row_bytes, slot.v_row_bytes, kf, vf);
    check_launch("kv_store");
  }

  void attention_cached(const ops::KvSlotView& slot, const std::vector<ops::AttnRun>& runs,
                        const float* q, int n_head, bool rotate_keys,
                        const ops::RopeTable<float>& rt, float* out) override {
    const int kf = kv_fmt(slot.k_dtype), vf = kv_fmt(slot.v_dtype);
    const int Hkv = slot.n_head_kv, d = slot.head_dim;
    MLKV_REQUIRE(Hkv > 0 && n_head % Hkv == 0, "n_head ", n_head, " is not a multiple of n_head_kv ",
                 Hkv);
    const int G = n_head / Hkv;
    // Per query row: batch row, position, offset of its sequence's block table.
    int R = 0, max_len = 0;
    for (const auto& r : runs) R += r.n_rows;
    if (R == 0) return;
    meta_.assign(static_cast<size_t>(3 * R), 0);
    std::vector<int32_t>& blocks = blocks_;
    blocks.clear();
    int i = 0;
    for (const auto& r : runs) {
      const int len = r.pos0 + r.n_rows;
      max_len = std::max(max_len, len);
      const int nb = (len + slot.block_size - 1) / slot.block_size;
      const int off = static_cast<int>(blocks.size());
      const auto& table = slot.block_tables[r.seq];
      MLKV_CHECK(static_cast<int>(table.size()) >= nb);
      blocks.insert(blocks.end(), table.begin(), table.begin() + nb);
      for (int j = 0; j < r.n_rows; ++j, ++i) {
        meta_[static_cast<size_t>(i)] = r.row0 + j;
        meta_[static_cast<size_t>(R + i)] = r.pos0 + j;
        meta_[static_cast<size_t>(2 * R + i)] = off;
      }
    }
    const size_t meta_n = meta_.size();
    meta_.insert(meta_.end(), blocks.begin(), blocks.end());
    const auto* dmeta = static_cast<const int32_t*>(
        up_.put(Uploader::kAttnMeta, meta_.data(), sizeof(int32_t) * meta_.size(), stream_));

    // Chunk: as many keys as the shared memory holds for the group's scores, at most 256. The
    // fixed part: the queries and the larger of the two kernels' scratch (a key row per warp, or
    // the key groups' value sums: at most 8 values per thread).
    const size_t fixed = static_cast<size_t>(G) * d +
                         std::max<size_t>(static_cast<size_t>(kCachedWarps) * d, 8 * kCachedThreads);
    const size_t avail = kCachedSmemMax / sizeof(float);
    MLKV_REQUIRE(fixed + 32u * G <= avail, "attention: a group of ", G, " heads of ", d,
                 " dims does not fit the GPU's shared memory");
    int chunk = static_cast<int>(std::min<size_t>(256, (avail - fixed) / G));
    chunk -= chunk % 32;
    const int n_split = (max_len + chunk - 1) / chunk;

    CachedArgs a{};
    a.q = q;
    a.k = slot.k;
    a.v = slot.v;
    a.k_head_stride = slot.k_head_stride;
    a.v_head_stride = slot.v_head_stride;
    a.k_row_bytes = slot.k_row_bytes;
    a.v_row_bytes = slot.v_row_bytes;
    a.meta = dmeta;
    a.blocks = dmeta + meta_n;
    a.R = R;
    a.block_size = slot.block_size;
    a.n_head = n_head;
    a.n_head_kv = Hkv;
    a.d = d;
    a.G = G;
    a.chunk = chunk;
    a.n_split = n_split;
    a.scale = 1.f / std::sqrt(static_cast<float>(d));
    a.rotate = rotate_keys;
    if (rotate_keys && rt.n_rot > 0) {
      MLKV_REQUIRE(rt.n_pos >= max_len, "rotary table holds ", rt.n_pos, " positions, ", max_len,
                   " needed");
      const RopeDev& r = rope_tables(rt);
      a.cos_t = r.cos;
      a.sin_t = r.sin;
      a.n_rot = rt.n_rot;
    } else {
      a.rotate = false;
    }
    const size_t parts = static_cast<size_t>(R) * Hkv * n_split * G;
    auto* part = static_cast<float*>(attn_parts_.get(sizeof(float) * parts * (d + 2), stream_));
    a.part_o = part;
    a.part_ml = part + parts * d;
    const size_t smem = sizeof(float) * (fixed + static_cast<size_t>(G) * chunk);
    const bool vec = cached_vec_ok(a, kf, vf) && std::getenv("MLKV_CUDA_ATTN_SCALAR") == nullptr;
    switch (kf) {
      case kFmtF32: launch_cached_v<kFmtF32>(vf, a, vec, smem, stream_); break;
      case kFmtF16: launch_cached_v<kFmtF16>(vf, a, vec, smem, stream_); break;
      default: launch_cached_v<kFmtBF16>(vf, a, vec, smem, stream_); break;
    }
    const dim3 grid(static_cast<unsigned>(R), static_cast<unsigned>(n_head));
    attn_cached_combine<<<grid, std::min(d, 128), 0, stream_>>>(dmeta, R, n_head, Hkv, G, d,
                                                                n_split, a.part_o, a.part_ml, out);
    check_launch("attention_cached combine");
  }

  // ---- optimizer ----
  void adamw_update(Tensor& p, Tensor& g, Tensor& m, Tensor& v, const ops::AdamWStep& h,
                    bool zero_grad) override {
    MLKV_CHECK(g.numel() == p.numel() && m.numel() == p.numel() && v.numel() == p.numel());
    cuda::adamw_update(stream_, f32m(p), f32m(g), f32m(m), f32m(v), p.numel(), h.beta1, h.beta2,
                       h.eps, h.lr, h.weight_decay, h.bias_corr1, h.bias_corr2, h.grad_scale,
                       zero_grad);
  }
  double sum_squares(const Tensor& g) override {
    if (g.empty()) return 0;
    const int parts = sum_squares_parts(g.numel());
    auto* dp = static_cast<double*>(ss_.get(sizeof(double) * static_cast<size_t>(parts), stream_));
    cuda::sum_squares(stream_, f32(g), g.numel(), dp);
    host_d_.resize(static_cast<size_t>(parts));
    alloc_->to_host(host_d_.data(), dp, sizeof(double) * host_d_.size());
    double s = 0;
    for (double x : host_d_) s += x;
    return s;
  }

  // ---- memory ----
  void add(float* y, const float* x, int64_t n) override { add_inplace(stream_, y, x, n); }
  void copy(float* dst, const float* src, int64_t n) override {
    if (n > 0 && dst != src) alloc_->copy(dst, src, sizeof(float) * static_cast<size_t>(n));
  }
  void zero(float* y, int64_t n) override {
    if (n > 0) cuda_check(cudaMemsetAsync(y, 0, sizeof(float) * static_cast<size_t>(n), stream_), "zero");
  }
  void gather_rows(const float* src, const int32_t* idx, int n, int E, float* dst) override {
    if (n == 0) return;
    const auto* didx = static_cast<const int32_t*>(
        up_.put(Uploader::kGather, idx, sizeof(int32_t) * static_cast<size_t>(n), stream_));
    cuda::gather_rows(stream_, src, didx, n, E, dst);
  }
  void to_host(const float* src, float* host, int64_t n) override {
    if (n > 0) alloc_->to_host(host, src, sizeof(float) * static_cast<size_t>(n));
  }

 private:
  struct RopeDev {
    const void* key = nullptr;
    const float* host_cos = nullptr;
    int n_rot = 0, n_pos = 0;
    float last_cos = 0, last_sin = 0;
    DeviceBuffer buf;
    float* cos = nullptr;
    float* sin = nullptr;
  };

  // The device copy of a rotary table (uploaded again when the table changed).
  const RopeDev& rope_tables(const ops::RopeTable<float>& rt) {
    RopeDev& r = rope_;
    const size_t n = rt.cos.size();
    MLKV_CHECK(rt.sin.size() == n && n > 0);
    if (r.key != &rt || r.host_cos != rt.cos.data() || r.n_rot != rt.n_rot || r.n_pos != rt.n_pos ||
        r.last_cos != rt.cos.back() || r.last_sin != rt.sin.back()) {
      auto* p = static_cast<float*>(r.buf.get(sizeof(float) * 2 * n, stream_));
      cuda_check(cudaStreamSynchronize(stream_), "rotary table");
      cuda_check(cudaMemcpy(p, rt.cos.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "rotary table");
      cuda_check(cudaMemcpy(p + n, rt.sin.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "rotary table");
      r.key = &rt;
      r.host_cos = rt.cos.data();
      r.n_rot = rt.n_rot;
      r.n_pos = rt.n_pos;
      r.last_cos = rt.cos.back();
      r.last_sin = rt.sin.back();
      r.cos = p;
      r.sin = p + n;
    }
    return r;
  }

  // x rounded to bf16 in a scratch buffer.
  const uint16_t* bf16_copy(const float* x, int64_t n, DeviceBuffer& buf) {
    auto* h = static_cast<uint16_t*>(buf.get(static_cast<size_t>(n) * 2, stream_));
    to_bf16(stream_, x, h, n);
    return h;
  }
  // C (f32, column-major m x n) = alpha op(A) op(B) + beta C with bf16 A and B, f32 accumulation.
  void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* A,
                 int lda, const void* B, int ldb, float beta, float* C, int ldc, const char* what) {
    const float one = 1.f;
    cublas_check(cublasGemmEx(blas_, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                              &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 what);
  }

  static void check_weight(const Tensor& w, int64_t numel, const char* what) {
    MLKV_REQUIRE(w.device() == Device::kCuda, "the ", what, " is on the ", device_name(w.device()),
                 ", not the GPU");
    MLKV_CHECK(w.numel() == numel);
  }
  static const float* f32(const Tensor& t) {
    MLKV_REQUIRE(t.dtype() == DType::kF32 && t.device() == Device::kCuda,
                 "expected an f32 tensor on the GPU (got ", dtype_name(t.dtype()), " on the ",
                 device_name(t.device()), ")");
    return static_cast<const float*>(t.raw());
  }
  static float* f32m(Tensor& t) { return const_cast<float*>(f32(t)); }

  int index_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::unique_ptr<CudaAllocator> alloc_;
  Uploader up_;
  DeviceBuffer act16_, dy16_, wtmp_, attn_parts_, ss_;
  bool mixed_bf16_ = false;  // products of f32 weights in bf16 (training's mixed precision)
  RopeDev rope_;
  std::vector<int32_t> rows_, meta_, blocks_;
  std::vector<float> host_f_;
  std::vector<double> host_d_;
};

}  // namespace

Backend<float>* make_backend(int device_index) {
  // Lives for the program (tensors on the GPU may outlive any scope that could own it).
  static CudaBackend* b = nullptr;
  if (b == nullptr) b = new CudaBackend(device_index);
  return b;
}

}  // namespace mlkv::cuda
