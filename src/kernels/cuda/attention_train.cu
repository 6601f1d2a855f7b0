// Training attention on the GPU (cuda_ops.h: attention_forward / attention_backward): causal
// grouped-query attention over whole sequences, FlashAttention-style, in plain f32 FMA code.
//
// No [ctx, ctx] matrix ever reaches global memory: query and key tiles go through shared memory
// and the scores of one (query tile, key tile) pair live in registers (and a small shared tile
// when another thread mapping needs them). Kernels, all with 256 threads as a 16 x 16 grid
// (ty = tid / 16, tx = tid % 16):
//  - forward: one block per (query tile, sequence, query head); online softmax over the key tiles
//    the tile can see (causal: key tiles up to the diagonal), in the log2 domain; writes o and
//    lse = max + log(sum) (natural log) per query row.
//  - backward, three launches, none with atomics (the result is the same run to run):
//    1. D_i = dO_i . O_i per (row, head) into the scratch buffer ([B, H, ctx] like lse).
//    2. dK/dV: one block per (key tile, sequence, KV head); it loops over the group's query heads
//       and over the query tiles from the diagonal on, recomputes P = exp(scale q k - lse), and
//       accumulates dV += P^T dO, dK += scale dS^T Q in registers, dS = P (dO V^T - D). Each key
//       row is owned by one block, so the final += into dk / dv is a plain read-modify-write.
//    3. dQ: one block per (query tile, sequence, query head); loops over the key tiles up to the
//       diagonal, recomputes P and dS, dQ = scale dS K; written (not accumulated).
// Thread mappings: in a score tile S [BR, BC] thread (ty, tx) owns rows ty * RM + i and columns
// tx + 16 j (interleaved so the key rows a warp reads hit distinct banks); in an output tile
// [rows, DP] it owns the same rows and DP / 16 columns in vectors of VW (tx * VW + 16 VW g + e).
// Row reductions of the online softmax are shuffles over the 16 lanes of a half warp.
//
// head_dim: kernels are instantiated for padded widths DP = 32, 64, 80, 96, 128 and 256; any
// head_dim <= 256 that is a multiple of 4 runs on the smallest DP >= head_dim, the columns beyond
// head_dim zero in shared memory (the practical sizes run unpadded). Pointers must be 16-byte
// aligned (float4 loads). Not here: tensor cores (f32 FMA only), cp.async double buffering.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/check.h"
#include "kernels/cuda/cuda_ops.h"

namespace mlkv::cuda {

namespace {

constexpr int kThreads = 256;  // a 16 x 16 thread grid
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile sizes per padded head width DP, chosen so that two blocks fit an SM's shared memory for
// DP <= 128. fwd / dq: BR query rows per block, BC keys per step. kv: KBC keys per block, KBR
// query rows per step.
template <int DP>
struct Tiles {
  static constexpr int kBR = DP <= 128 ? 64 : 32;
  static constexpr int kBC = DP <= 64 ? 64 : 32;
  static constexpr int kKBC = DP <= 64 ? 64 : 32;
  static constexpr int kKBR = DP <= 128 ? 64 : 32;
  static constexpr int kSP = DP + 4;  // row stride of [rows, DP] tiles in shared memory (floats)
};

// Vector width of an output row's DP / 16 columns per thread.
__host__ __device__ constexpr int vec_width(int nc) { return nc % 4 == 0 ? 4 : (nc % 2 == 0 ? 2 : 1); }

template <int VW>
__device__ __forceinline__ void load_vec(const float* p, float* out) {
  if constexpr (VW == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    out[0] = t.x, out[1] = t.y, out[2] = t.z, out[3] = t.w;
  } else if constexpr (VW == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    out[0] = t.x, out[1] = t.y;
  } else {
    out[0] = *p;
  }
}

// The NC = DP / 16 columns of thread tx in a row: col(j) = (j / VW) * 16 VW + tx VW + j % VW.
template <int DP>
__device__ __forceinline__ int out_col(int j, int tx) {
  constexpr int VW = vec_width(DP / 16);
  return (j / VW) * 16 * VW + tx * VW + j % VW;
}
template <int DP>
__device__ __forceinline__ void load_cols(const float* row, int tx, float* out) {
  constexpr int NC = DP / 16, VW = vec_width(NC);
#pragma unroll
  for (int g = 0; g < NC / VW; ++g) load_vec<VW>(row + g * 16 * VW + tx * VW, out + g * VW);
}

// Rows [0, R) x columns [0, DP) of a head slice into shared memory (row stride DP + 4); zero for
// rows >= n_valid and columns >= d. g: element (row 0, col 0) of the slice; ld: its row stride.
template <int R, int DP>
__device__ __forceinline__ void load_tile(float* sm, const float* __restrict__ g, int64_t ld,
                                          int n_valid, int d) {
  constexpr int C4 = DP / 4;
  for (int i = threadIdx.x; i < R * C4; i += kThreads) {
    const int r = i / C4, c = (i % C4) * 4;
    float4 val = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < n_valid && c < d) val = __ldg(reinterpret_cast<const float4*>(g + r * ld + c));
    *reinterpret_cast<float4*>(sm + r * (DP + 4) + c) = val;
  }
}

// acc[i][j] = sum_k A[ty RM + i][k] B[tx + 16 j][k] over k < DP; A, B tiles of stride DP + 4.
template <int RM, int CN, int DP>
__device__ __forceinline__ void dot_rows(const float* A, const float* B, int ty, int tx,
                                         float (&acc)[RM][CN]) {
  constexpr int SP = DP + 4;
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < CN; ++j) acc[i][j] = 0.0f;
#pragma unroll 4
  for (int k = 0; k < DP; k += 4) {
    float4 a[RM], b[CN];
#pragma unroll
    for (int i = 0; i < RM; ++i) a[i] = *reinterpret_cast<const float4*>(A + (ty * RM + i) * SP + k);
#pragma unroll
    for (int j = 0; j < CN; ++j) b[j] = *reinterpret_cast<const float4*>(B + (tx + 16 * j) * SP + k);
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        float s = acc[i][j];
        s = fmaf(a[i].x, b[j].x, s);
        s = fmaf(a[i].y, b[j].y, s);
        s = fmaf(a[i].z, b[j].z, s);
        s = fmaf(a[i].w, b[j].w, s);
        acc[i][j] = s;
      }
  }
}

// acc[i][j] += sum_c P[ty RM + i][c] X[c][out_col(j)] over c < BC; P of stride BC + 4, X of
// stride DP + 4 (O += P V, dQ += dS K).
template <int RM, int BC, int DP>
__device__ __forceinline__ void acc_px(const float* P, const float* X, int ty, int tx,
                                       float (&acc)[RM][DP / 16]) {
  constexpr int NC = DP / 16, SP = DP + 4, PS = BC + 4;
#pragma unroll 2
  for (int c = 0; c < BC; c += 4) {
    float p[RM][4];
#pragma unroll
    for (int i = 0; i < RM; ++i) load_vec<4>(P + (ty * RM + i) * PS + c, p[i]);
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      float x[NC];
      load_cols<DP>(X + (c + cc) * SP, tx, x);
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < NC; ++j) acc[i][j] = fmaf(p[i][cc], x[j], acc[i][j]);
    }
  }
}

// acc[i][j] += sum_r A[r][ty KM + i] X[r][out_col(j)] over r < BR; A of stride 16 KM + 4, X of
// stride DP + 4 (dV += P^T dO, dK += dS^T Q).
template <int KM, int BR, int DP>
__device__ __forceinline__ void acc_atx(const float* A, const float* X, int ty, int tx,
                                        float (&acc)[KM][DP / 16]) {
  constexpr int NC = DP / 16, SP = DP + 4, PS = 16 * KM + 4;
#pragma unroll 4
  for (int r = 0; r < BR; ++r) {
    float a[KM], x[NC];
    load_vec<KM>(A + r * PS + ty * KM, a);
    load_cols<DP>(X + r * SP, tx, x);
#pragma unroll
    for (int i = 0; i < KM; ++i)
#pragma unroll
      for (int j = 0; j < NC; ++j) acc[i][j] = fmaf(a[i], x[j], acc[i][j]);
  }
}

// Reductions over the 16 lanes of a half warp (the threads that share a score row).
__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Shared problem geometry of the kernels.
struct Geo {
  int ctx, n_head, n_head_kv, d;
  float scale;       // 1 / sqrt(d)
  float scale_log2;  // scale * log2(e)
};

// ---- forward ----
// grid (query tiles, B * H); the longest (last) query tiles are scheduled first.
template <int DP>
__global__ void __launch_bounds__(kThreads, 2) attn_fwd_kernel(const float* __restrict__ q,
                                                            const float* __restrict__ k,
                                                            const float* __restrict__ v,
                                                            float* __restrict__ o,
                                                            float* __restrict__ lse, Geo geo) {
  using T = Tiles<DP>;
  constexpr int BR = T::kBR, BC = T::kBC, SP = T::kSP, PS = BC + 4;
  constexpr int RM = BR / 16, CN = BC / 16, NC = DP / 16, VW = vec_width(NC);
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);  // [BR, SP]
  float* Ks = Qs + BR * SP;                     // [BC, SP]
  float* Vs = Ks + BC * SP;                     // [BC, SP]
  float* Ps = Vs + BC * SP;                     // [BR, PS]

  const int ctx = geo.ctx, H = geo.n_head, d = geo.d;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int q0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * BR;
  const int b = static_cast<int>(blockIdx.y) / H, h = static_cast<int>(blockIdx.y) % H;
  const int g = h / (H / geo.n_head_kv);
  const int64_t ldq = int64_t{H} * d, ldk = int64_t{geo.n_head_kv} * d;
  const int64_t seq_row = int64_t{b} * ctx;  // row of position 0 of this sequence
  const float* kb = k + seq_row * ldk + int64_t{g} * d;
  const float* vb = v + seq_row * ldk + int64_t{g} * d;

  load_tile<BR, DP>(Qs, q + (seq_row + q0) * ldq + int64_t{h} * d, ldq, ctx - q0, d);

  float m[RM], l[RM], acc[RM][NC];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < NC; ++j) acc[i][j] = 0.0f;
  }

  const int q_last = min(q0 + BR, ctx) - 1;  // the last real query row of the tile
  for (int k0 = 0; k0 <= q_last; k0 += BC) {
    __syncthreads();  // the previous step is done with Ks, Vs, Ps
    load_tile<BC, DP>(Ks, kb + k0 * ldk, ldk, ctx - k0, d);
    load_tile<BC, DP>(Vs, vb + k0 * ldk, ldk, ctx - k0, d);
    __syncthreads();
    float s[RM][CN];
    dot_rows<RM, CN, DP>(Qs, Ks, ty, tx, s);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int qi = q0 + ty * RM + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        const int kj = k0 + tx + 16 * j;
        s[i][j] = kj <= qi ? s[i][j] * geo.scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      // Every step has key k0 <= q0 <= qi visible, so m_new is finite; the guard keeps a fully
      // masked row at p = 0 (no inf - inf) should that ever change.
      const float m_new = fmaxf(m[i], half_warp_max(mx));
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[i] - m_use);  // 0 on the first step (m = -inf)
      float rs = 0.0f;
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        const float p = exp2f(s[i][j] - m_use);
        Ps[(ty * RM + i) * PS + tx + 16 * j] = p;
        rs += p;
      }
      l[i] = l[i] * alpha + half_warp_sum(rs);
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < NC; ++j) acc[i][j] *= alpha;
    }
    __syncthreads();
    acc_px<RM, BC, DP>(Ps, Vs, ty, tx, acc);
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int qi = q0 + ty * RM + i;
    if (qi >= ctx) continue;
    const float inv = 1.0f / l[i];
    float* orow = o + (seq_row + qi) * ldq + int64_t{h} * d;
#pragma unroll
    for (int j = 0; j < NC; j += VW) {
      const int c = out_col<DP>(j, tx);
      if (c >= d) continue;  // d % 4 == 0: a vector is all in or all out
      if constexpr (VW == 4) {
        *reinterpret_cast<float4*>(orow + c) = make_float4(acc[i][j] * inv, acc[i][j + 1] * inv,
                                                           acc[i][j + 2] * inv, acc[i][j + 3] * inv);
      } else if constexpr (VW == 2) {
        *reinterpret_cast<float2*>(orow + c) = make_float2(acc[i][j] * inv, acc[i][j + 1] * inv);
      } else {
        orow[c] = acc[i][j] * inv;
      }
    }
    if (lse != nullptr && tx == 0) lse[(int64_t{b} * H + h) * ctx + qi] = m[i] * kLn2 + logf(l[i]);
  }
}

// ---- backward ----
// D[(b H + h) ctx + s] = sum_i dO[row, h, i] O[row, h, i]; one warp per (row, head).
__global__ void __launch_bounds__(kThreads) attn_bwd_dot_kernel(const float* __restrict__ o,
                                                                const float* __restrict__ dout,
                                                                float* __restrict__ D,
                                                                int64_t n_items, int ctx, int H,
                                                                int d) {
  const int64_t item = int64_t{blockIdx.x} * (kThreads / 32) + threadIdx.x / 32;
  if (item >= n_items) return;
  const int lane = threadIdx.x % 32;
  const float* a = o + item * d;  // item = row * H + h: [row, h, :] is contiguous
  const float* c = dout + item * d;
  float acc = 0.0f;
  for (int i = lane * 4; i < d; i += 128) {  // d % 4 == 0
    const float4 x = __ldg(reinterpret_cast<const float4*>(a + i));
    const float4 y = __ldg(reinterpret_cast<const float4*>(c + i));
    acc = fmaf(x.x, y.x, acc);
    acc = fmaf(x.y, y.y, acc);
    acc = fmaf(x.z, y.z, acc);
    acc = fmaf(x.w, y.w, acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    const int64_t row = item / H;
    const int h = static_cast<int>(item % H);
    const int64_t b = row / ctx, s = row % ctx;
    D[(b * H + h) * ctx + s] = acc;
  }
}

// dK, dV of one key tile of one (sequence, KV head); grid (key tiles, B * Hkv).
template <int DP>
__global__ void __launch_bounds__(kThreads, 2) attn_bwd_dkdv_kernel(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ D,
    float* __restrict__ dk, float* __restrict__ dv, Geo geo) {
  using T = Tiles<DP>;
  constexpr int BC = T::kKBC, BR = T::kKBR, SP = T::kSP, PS = BC + 4;
  constexpr int RM = BR / 16, CN = BC / 16, KM = BC / 16, NC = DP / 16, VW = vec_width(NC);
  extern __shared__ float4 smem4[];
  float* Ks = reinterpret_cast<float*>(smem4);  // [BC, SP]
  float* Vs = Ks + BC * SP;                     // [BC, SP]
  float* Qs = Vs + BC * SP;                     // [BR, SP]
  float* dOs = Qs + BR * SP;                    // [BR, SP]
  float* Ps = dOs + BR * SP;                    // [BR, PS]
  float* dSs = Ps + BR * PS;                    // [BR, PS]
  float* Ls = dSs + BR * PS;                    // [BR] lse * log2(e)
  float* Ds = Ls + BR;                          // [BR]

  const int ctx = geo.ctx, H = geo.n_head, Hkv = geo.n_head_kv, d = geo.d, rep = H / Hkv;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int k0 = static_cast<int>(blockIdx.x) * BC;
  const int b = static_cast<int>(blockIdx.y) / Hkv, g = static_cast<int>(blockIdx.y) % Hkv;
  const int64_t ldq = int64_t{H} * d, ldk = int64_t{Hkv} * d;
  const int64_t seq_row = int64_t{b} * ctx;
  const int64_t kv_off = (seq_row + k0) * ldk + int64_t{g} * d;

  load_tile<BC, DP>(Ks, k + kv_off, ldk, ctx - k0, d);
  load_tile<BC, DP>(Vs, v + kv_off, ldk, ctx - k0, d);

  float dk_acc[KM][NC], dv_acc[KM][NC];
#pragma unroll
  for (int i = 0; i < KM; ++i)
#pragma unroll
    for (int j = 0; j < NC; ++j) dk_acc[i][j] = 0.0f, dv_acc[i][j] = 0.0f;

  const int q_start = (k0 / BR) * BR;  // earlier query tiles see none of these keys
  for (int hh = 0; hh < rep; ++hh) {   // the group's query heads, in order
    const int h = g * rep + hh;
    const int64_t lrow = (int64_t{b} * H + h) * ctx;  // [B, H, ctx] row of lse and D
    for (int q0 = q_start; q0 < ctx; q0 += BR) {
      __syncthreads();  // the previous step is done with Qs, dOs, Ps, dSs, Ls, Ds
      const int64_t q_off = (seq_row + q0) * ldq + int64_t{h} * d;
      load_tile<BR, DP>(Qs, q + q_off, ldq, ctx - q0, d);
      load_tile<BR, DP>(dOs, dout + q_off, ldq, ctx - q0, d);
      for (int i = threadIdx.x; i < BR; i += kThreads) {
        const bool in = q0 + i < ctx;
        Ls[i] = in ? lse[lrow + q0 + i] * kLog2e : 0.0f;
        Ds[i] = in ? D[lrow + q0 + i] : 0.0f;
      }
      __syncthreads();
      float s[RM][CN], dp[RM][CN];
      dot_rows<RM, CN, DP>(Qs, Ks, ty, tx, s);
      dot_rows<RM, CN, DP>(dOs, Vs, ty, tx, dp);
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        const int r = ty * RM + i, qi = q0 + r;
        const float li = Ls[r], di = Ds[r];
#pragma unroll
        for (int j = 0; j < CN; ++j) {
          const int c = tx + 16 * j, kj = k0 + c;
          const float p = (kj <= qi && qi < ctx) ? exp2f(s[i][j] * geo.scale_log2 - li) : 0.0f;
          Ps[r * PS + c] = p;
          dSs[r * PS + c] = p * (dp[i][j] - di);
        }
      }
      __syncthreads();
      acc_atx<KM, BR, DP>(Ps, dOs, ty, tx, dv_acc);
      acc_atx<KM, BR, DP>(dSs, Qs, ty, tx, dk_acc);
    }
  }

  // This block alone owns these key rows of this KV head: a plain += (the caller zeroed them or
  // holds another layer's share).
#pragma unroll
  for (int i = 0; i < KM; ++i) {
    const int kj = k0 + ty * KM + i;
    if (kj >= ctx) continue;
    const int64_t off = (seq_row + kj) * ldk + int64_t{g} * d;
#pragma unroll
    for (int j = 0; j < NC; j += VW) {
      const int c = out_col<DP>(j, tx);
      if (c >= d) continue;
#pragma unroll
      for (int e = 0; e < VW; ++e) {
        dk[off + c + e] += dk_acc[i][j + e] * geo.scale;
        dv[off + c + e] += dv_acc[i][j + e];
      }
    }
  }
}

// dQ of one query tile of one (sequence, query head); grid (query tiles, B * H), longest first.
template <int DP>
__global__ void __launch_bounds__(kThreads, 2) attn_bwd_dq_kernel(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ D,
    float* __restrict__ dq, Geo geo) {
  using T = Tiles<DP>;
  constexpr int BR = T::kBR, BC = T::kBC, SP = T::kSP, PS = BC + 4;
  constexpr int RM = BR / 16, CN = BC / 16, NC = DP / 16, VW = vec_width(NC);
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);  // [BR, SP]
  float* dOs = Qs + BR * SP;                    // [BR, SP]
  float* Ks = dOs + BR * SP;                    // [BC, SP]
  float* Vs = Ks + BC * SP;                     // [BC, SP]
  float* dSs = Vs + BC * SP;                    // [BR, PS]

  const int ctx = geo.ctx, H = geo.n_head, d = geo.d;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int q0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * BR;
  const int b = static_cast<int>(blockIdx.y) / H, h = static_cast<int>(blockIdx.y) % H;
  const int g = h / (H / geo.n_head_kv);
  const int64_t ldq = int64_t{H} * d, ldk = int64_t{geo.n_head_kv} * d;
  const int64_t seq_row = int64_t{b} * ctx;
  const int64_t q_off = (seq_row + q0) * ldq + int64_t{h} * d;
  const float* kb = k + seq_row * ldk + int64_t{g} * d;
  const float* vb = v + seq_row * ldk + int64_t{g} * d;
  const int64_t lrow = (int64_t{b} * H + h) * ctx;

  load_tile<BR, DP>(Qs, q + q_off, ldq, ctx - q0, d);
  load_tile<BR, DP>(dOs, dout + q_off, ldq, ctx - q0, d);
  float li[RM], di[RM], acc[RM][NC];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int qi = q0 + ty * RM + i;
    li[i] = qi < ctx ? lse[lrow + qi] * kLog2e : 0.0f;
    di[i] = qi < ctx ? D[lrow + qi] : 0.0f;
#pragma unroll
    for (int j = 0; j < NC; ++j) acc[i][j] = 0.0f;
  }

  const int q_last = min(q0 + BR, ctx) - 1;
  for (int k0 = 0; k0 <= q_last; k0 += BC) {
    __syncthreads();  // the previous step is done with Ks, Vs, dSs
    load_tile<BC, DP>(Ks, kb + k0 * ldk, ldk, ctx - k0, d);
    load_tile<BC, DP>(Vs, vb + k0 * ldk, ldk, ctx - k0, d);
    __syncthreads();
    float s[RM][CN], dp[RM][CN];
    dot_rows<RM, CN, DP>(Qs, Ks, ty, tx, s);
    dot_rows<RM, CN, DP>(dOs, Vs, ty, tx, dp);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int r = ty * RM + i, qi = q0 + r;
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        const int c = tx + 16 * j, kj = k0 + c;
        const float p = (kj <= qi && qi < ctx) ? exp2f(s[i][j] * geo.scale_log2 - li[i]) : 0.0f;
        dSs[r * PS + c] = p * (dp[i][j] - di[i]);
      }
    }
    __syncthreads();
    acc_px<RM, BC, DP>(dSs, Ks, ty, tx, acc);
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int qi = q0 + ty * RM + i;
    if (qi >= ctx) continue;
    float* row = dq + (seq_row + qi) * ldq + int64_t{h} * d;
#pragma unroll
    for (int j = 0; j < NC; j += VW) {
      const int c = out_col<DP>(j, tx);
      if (c >= d) continue;
#pragma unroll
      for (int e = 0; e < VW; ++e) row[c + e] = acc[i][j + e] * geo.scale;
    }
  }
}

// ---- host side ----
template <int DP>
constexpr size_t fwd_smem() {
  using T = Tiles<DP>;
  return sizeof(float) * (size_t{T::kBR + 2 * T::kBC} * T::kSP + size_t{T::kBR} * (T::kBC + 4));
}
template <int DP>
constexpr size_t dkdv_smem() {
  using T = Tiles<DP>;
  return sizeof(float) * (size_t{2 * T::kKBC + 2 * T::kKBR} * T::kSP +
                          size_t{2 * T::kKBR} * (T::kKBC + 4) + 2 * T::kKBR);
}
template <int DP>
constexpr size_t dq_smem() {
  using T = Tiles<DP>;
  return sizeof(float) * (size_t{2 * T::kBR + 2 * T::kBC} * T::kSP + size_t{T::kBR} * (T::kBC + 4));
}
static_assert(fwd_smem<256>() <= 227 * 1024 && dkdv_smem<256>() <= 227 * 1024 &&
                  dq_smem<256>() <= 227 * 1024,
              "tiles exceed the shared memory of a block");

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  // Per device and cheap; set on every launch so a second device gets it too.
  cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)),
             "attention: shared memory size");
}

Geo make_geo(int ctx, int n_head, int n_head_kv, int head_dim) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  return Geo{ctx, n_head, n_head_kv, head_dim, scale, scale * kLog2e};
}

void check_dims(const char* op, int batch, int ctx, int n_head, int n_head_kv, int head_dim) {
  MLKV_REQUIRE(batch >= 0 && ctx >= 0, op, ": bad batch ", batch, " or ctx ", ctx);
  MLKV_REQUIRE(n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0, op, ": n_head ", n_head,
               " is not a multiple of n_head_kv ", n_head_kv);
  MLKV_REQUIRE(head_dim > 0 && head_dim <= 256 && head_dim % 4 == 0, op, ": head_dim ", head_dim,
               " is not supported by the CUDA attention (a multiple of 4 up to 256)");
  MLKV_REQUIRE(int64_t{batch} * n_head <= 65535 && int64_t{batch} * ctx * n_head <= INT32_MAX,
               op, ": batch ", batch, " x n_head ", n_head, " x ctx ", ctx, " is too large");
}

void check_aligned(const char* op, std::initializer_list<const float*> ptrs) {
  for (const float* p : ptrs) {
    MLKV_REQUIRE(reinterpret_cast<uintptr_t>(p) % 16 == 0, op,
                 ": tensors must be 16-byte aligned (float4 loads)");
  }
}

template <int DP>
void forward_dp(cudaStream_t s, const float* q, const float* k, const float* v, float* o,
                float* lse, int batch, const Geo& geo) {
  constexpr int BR = Tiles<DP>::kBR;
  const size_t smem = fwd_smem<DP>();
  set_smem(attn_fwd_kernel<DP>, smem);
  const dim3 grid((geo.ctx + BR - 1) / BR, batch * geo.n_head);
  attn_fwd_kernel<DP><<<grid, kThreads, smem, s>>>(q, k, v, o, lse, geo);
  check_launch("attn_fwd_kernel");
}

template <int DP>
void backward_dp(cudaStream_t s, const float* q, const float* k, const float* v,
                 const float* dout, const float* lse, const float* D, float* dq, float* dk,
                 float* dv, int batch, const Geo& geo) {
  using T = Tiles<DP>;
  const size_t smem_kv = dkdv_smem<DP>(), smem_q = dq_smem<DP>();
  set_smem(attn_bwd_dkdv_kernel<DP>, smem_kv);
  set_smem(attn_bwd_dq_kernel<DP>, smem_q);
  const dim3 grid_kv((geo.ctx + T::kKBC - 1) / T::kKBC, batch * geo.n_head_kv);
  attn_bwd_dkdv_kernel<DP><<<grid_kv, kThreads, smem_kv, s>>>(q, k, v, dout, lse, D, dk, dv, geo);
  check_launch("attn_bwd_dkdv_kernel");
  const dim3 grid_q((geo.ctx + T::kBR - 1) / T::kBR, batch * geo.n_head);
  attn_bwd_dq_kernel<DP><<<grid_q, kThreads, smem_q, s>>>(q, k, v, dout, lse, D, dq, geo);
  check_launch("attn_bwd_dq_kernel");
}

// Calls f.template operator()<DP>() with the smallest instantiated DP >= head_dim.
template <typename F>
void dispatch_dp(int head_dim, F&& f) {
  if (head_dim <= 32) {
    f(std::integral_constant<int, 32>{});
  } else if (head_dim <= 64) {
    f(std::integral_constant<int, 64>{});
  } else if (head_dim <= 80) {
    f(std::integral_constant<int, 80>{});
  } else if (head_dim <= 96) {
    f(std::integral_constant<int, 96>{});
  } else if (head_dim <= 128) {
    f(std::integral_constant<int, 128>{});
  } else {
    f(std::integral_constant<int, 256>{});
  }
}

}  // namespace

void attention_forward(cudaStream_t s, const float* q, const float* k, const float* v, float* o,
                       float* lse, int batch, int ctx, int n_head, int n_head_kv, int head_dim) {
  check_dims("attention_forward", batch, ctx, n_head, n_head_kv, head_dim);
  if (batch == 0 || ctx == 0) return;
  check_aligned("attention_forward", {q, k, v, o});
  const Geo geo = make_geo(ctx, n_head, n_head_kv, head_dim);
  dispatch_dp(head_dim, [&](auto dp) { forward_dp<decltype(dp)::value>(s, q, k, v, o, lse, batch, geo); });
}

int64_t attention_backward_scratch(int batch, int ctx, int n_head, int /*n_head_kv*/,
                                   int /*head_dim*/) {
  return int64_t{batch} * n_head * ctx;  // D [B, H, ctx]
}

void attention_backward(cudaStream_t s, const float* q, const float* k, const float* v,
                        const float* o, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv, int batch, int ctx, int n_head, int n_head_kv, int head_dim,
                        float* scratch) {
  check_dims("attention_backward", batch, ctx, n_head, n_head_kv, head_dim);
  if (batch == 0 || ctx == 0) return;
  check_aligned("attention_backward", {q, k, v, o, dout, dq, dk, dv});
  MLKV_REQUIRE(lse != nullptr && scratch != nullptr,
               "attention_backward: lse and scratch are required");
  const Geo geo = make_geo(ctx, n_head, n_head_kv, head_dim);

  const int64_t n_items = int64_t{batch} * ctx * n_head;  // (row, head) pairs
  constexpr int kWarps = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((n_items + kWarps - 1) / kWarps);
  attn_bwd_dot_kernel<<<blocks, kThreads, 0, s>>>(o, dout, scratch, n_items, ctx, n_head,
                                                  head_dim);
  check_launch("attn_bwd_dot_kernel");

  dispatch_dp(head_dim, [&](auto dp) {
    backward_dp<decltype(dp)::value>(s, q, k, v, dout, lse, scratch, dq, dk, dv, batch, geo);
  });
}

}  // namespace mlkv::cuda
