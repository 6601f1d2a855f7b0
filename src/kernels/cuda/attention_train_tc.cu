// Training attention on tensor cores (cuda_ops.h: attention_forward_bf16 / attention_backward_bf16):
// the causal grouped-query attention of attention_train.cu with its six products (S = Q K^T,
// O += P V, dP = dO V^T, dV += P^T dO, dK += dS^T Q, dQ += dS K) on bf16 mma.sync.m16n8k16 with
// f32 accumulators - the "mixed precision" of the bf16 training path. Inputs and outputs stay f32
// in memory (same layouts, same semantics: o, lse, dq written; dk, dv accumulated); tiles are
// rounded to bf16 (nearest even) as they are copied into shared memory, and P and dS are rounded
// to bf16 in registers before their products. Softmax, lse, D = dO.O and every accumulation are
// f32. Errors against exact attention are therefore those of bf16 operands (~1e-2 relative), not
// of f32 (attention_train.cu, ~1e-6).
//
// Kernels (warp w of a block owns the 16 rows [16 w, 16 w + 16) of the block's row tile; every
// score / gradient tile lives in registers in the mma accumulator layout, as in FlashAttention-2):
//  - forward: one block per (query tile of 128 rows, sequence, query head), 8 warps; loops over
//    the key tiles (64 keys) up to the diagonal with an online softmax in the log2 domain; writes
//    o and lse = max + log(sum) (natural log). A warp skips the key tiles entirely above its rows.
//  - backward, three launches, no atomics (results are bitwise the same run to run):
//    1. D_i = dO_i . O_i per (row, head), f32, into the scratch ([B, H, ctx], as the f32 path).
//    2. dK/dV: one block per (key tile of 64, sequence, KV head), 4 warps of 16 keys; loops over
//       the group's query heads in order and the query tiles (64) from the diagonal on; per step
//       S^T = K Q^T, P^T = exp2(S^T scale log2e - lse log2e), dV += P^T dO, dP^T = V dO^T,
//       dS^T = P^T (dP^T - D), dK += dS^T Q. Each key row has one owner: a plain += at the end.
//    3. dQ: one block per (query tile of 64, sequence, query head), 4 warps; loops over the key
//       tiles up to the diagonal: S, dP = dO V^T, dS = P (dP - D), dQ += dS K; written.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16, lane = 4 gq + tq):
//  A 16x16 (4 regs of 2 bf16, low half = lower column): a0 (row gq, cols 2tq..+1), a1 (row gq+8,
//    same cols), a2 (row gq, cols 8+2tq..+1), a3 (row gq+8, cols 8+2tq..+1);
//  B 16x8 (k x n): b0 (k 2tq..+1, n gq), b1 (k 8+2tq..+1, n gq);
//  C 16x8 f32: c0, c1 (row gq, cols 2tq..+1), c2, c3 (row gq+8, same cols).
// So the accumulators of two adjacent n-tiles (16 columns) are, packed to bf16 pairs, exactly the
// A fragment of the next product over those 16 columns (P and dS never leave registers).
// Shared tiles are bf16 row-major [rows, d] with a row stride of d + 8 (16 bytes of padding: the 8
// row addresses of an ldmatrix phase fall on distinct bank groups). ldmatrix.x4 loads:
//  - an A fragment of the 16x16 block at (r0, c0): lane gives row r0 + lane % 16, col c0 + 8 (lane / 16);
//  - B fragments of two n-tiles when the tile is stored [n][k] (K for Q K^T): lane gives row
//    n0 + lane % 8 + 8 (lane / 16), col k0 + 8 ((lane / 8) % 2); regs (0, 1) -> n-tile n0,
//    (2, 3) -> n-tile n0 + 8;
//  - the same when the tile is stored [k][n] (V for P V): .trans with the A addressing.
//
// head_dim 64 and 128 run here; any other head_dim goes to the f32 kernels (attention_forward /
// attention_backward, same scratch). Pointers must be 16-byte aligned (float4 loads).
// Not here: cp.async / TMA pipelining (the f32 -> bf16 conversion happens in the loads, so the
// copies are synchronous; other resident blocks hide their latency), wgmma.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "core/check.h"
#include "kernels/cuda/cuda_ops.h"

namespace mlkv::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tiles: forward 128 query rows (8 warps) x 64 keys per step (32 for head_dim 128: two blocks
// per SM need <= 128 registers a thread); dQ 64 query rows (4 warps) x 64 keys; dK/dV 64 keys
// (4 warps) x 64 query rows per step (32 for head_dim 128, the registers of dK and dV).
constexpr int kFwdWarps = 8, kBwdWarps = 4, kBwdBC = 64;
template <int D>
constexpr int kFwdBC = D <= 64 ? 64 : 32;
template <int D>
constexpr int kBwdBQ = D <= 64 ? 64 : 32;

struct Geo {
  int ctx, n_head, n_head_kv;
  float scale;       // 1 / sqrt(d)
  float scale_log2;  // scale * log2(e)
};

// ---- PTX wrappers ----
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
// c += a b (16x8x16, bf16 operands, f32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two f32 -> a bf16 pair (round to nearest even); lo in the low half (the lower column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 t = __floats2bfloat162_rn(lo, hi);
  return (static_cast<uint32_t>(__bfloat16_as_ushort(t.y)) << 16) |
         static_cast<uint32_t>(__bfloat16_as_ushort(t.x));
}

// Max / sum over the 4 lanes of a quad (the threads that share an accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Rows [0, R) of a [*, D] f32 head slice into a bf16 shared tile [R, D + 8]; rows >= n_valid are
// zero. g: element (0, 0) of the slice; ld: its row stride. Thread t converts the float4 at column
// 4 (t % (D / 4)) of rows t / (D / 4) + RP i (RP rows per pass of the block); the loads of a group
// of up to 4 passes go out before their conversions (memory-level parallelism without holding a
// whole tile in registers).
template <int R, int D, int NT>
__device__ __forceinline__ void load_tile_bf16(bf16* sm, const float* __restrict__ g, int64_t ld,
                                               int n_valid) {
  constexpr int C4 = D / 4, SS = D + 8;
  static_assert(NT % C4 == 0, "a pass covers whole rows");
  constexpr int RP = NT / C4, IT = R / RP, GRP = IT < 4 ? IT : 4;
  static_assert(R % RP == 0 && IT % GRP == 0, "tile not a multiple of the block");
  const int r0 = static_cast<int>(threadIdx.x) / C4, c = (static_cast<int>(threadIdx.x) % C4) * 4;
  const float* src = g + r0 * ld + c;
  bf16* dst = sm + r0 * SS + c;
#pragma unroll
  for (int i0 = 0; i0 < IT; i0 += GRP) {
    float4 buf[GRP];
#pragma unroll
    for (int u = 0; u < GRP; ++u) {
      const int r = r0 + (i0 + u) * RP;
      buf[u] = r < n_valid ? __ldg(reinterpret_cast<const float4*>(src + (i0 + u) * RP * ld))
                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int u = 0; u < GRP; ++u)
      *reinterpret_cast<uint2*>(dst + (i0 + u) * RP * SS) =
          make_uint2(pack_bf16(buf[u].x, buf[u].y), pack_bf16(buf[u].z, buf[u].w));
  }
}

// acc[j] (n-tile j: columns 8 j .. 8 j + 7) += A B^T for a warp: A the 16 rows at `a` (row-major
// [16, KD], stride SS), B the NN rows at `b` (row-major [NN, KD], stride SS) - the [n][k] case.
template <int KD, int NN, int SS>
__device__ __forceinline__ void warp_mma_nt(float (&acc)[NN / 8][4], const bf16* a, const bf16* b,
                                            int lane) {
  const bf16* pa = a + (lane % 16) * SS + (lane / 16) * 8;
  const bf16* pb = b + (lane % 8 + (lane / 16) * 8) * SS + ((lane / 8) % 2) * 8;
#pragma unroll 1
  for (int kk = 0; kk < KD / 16; ++kk) {
    uint32_t af[4];
    ldsm_x4(af, pa + kk * 16);
#pragma unroll
    for (int np = 0; np < NN / 16; ++np) {
      uint32_t bfr[4];
      ldsm_x4(bfr, pb + np * 16 * SS + kk * 16);
      mma_bf16(acc[2 * np], af, bfr[0], bfr[1]);
      mma_bf16(acc[2 * np + 1], af, bfr[2], bfr[3]);
    }
  }
}

// acc[j] (n-tile j of ND columns) += P X for a warp: P [16, KK] in accumulator layout (p[j] the
// n-tile of columns 8 j ..), rounded to bf16 here; X row-major [KK, ND] at `x` (stride SS) - the
// [k][n] case, loaded transposed.
template <int KK, int ND, int SS>
__device__ __forceinline__ void warp_mma_pv(float (&acc)[ND / 8][4], const float (&p)[KK / 8][4],
                                            const bf16* x, int lane) {
  const bf16* px = x + (lane % 16) * SS + (lane / 16) * 8;
#pragma unroll
  for (int t = 0; t < KK / 16; ++t) {
    const uint32_t af[4] = {pack_bf16(p[2 * t][0], p[2 * t][1]),
                            pack_bf16(p[2 * t][2], p[2 * t][3]),
                            pack_bf16(p[2 * t + 1][0], p[2 * t + 1][1]),
                            pack_bf16(p[2 * t + 1][2], p[2 * t + 1][3])};
#pragma unroll
    for (int np = 0; np < ND / 16; ++np) {
      uint32_t bfr[4];
      ldsm_x4_t(bfr, px + t * 16 * SS + np * 16);
      mma_bf16(acc[2 * np], af, bfr[0], bfr[1]);
      mma_bf16(acc[2 * np + 1], af, bfr[2], bfr[3]);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&a)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) a[j][0] = a[j][1] = a[j][2] = a[j][3] = 0.0f;
}

// ---- forward ----
// grid (query tiles, B * H); the longest (last) query tiles are scheduled first.
template <int D>
__global__ void __launch_bounds__(kFwdWarps * 32, 2)
    attn_fwd_tc_kernel(const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, float* __restrict__ o,
                       float* __restrict__ lse, Geo geo) {
  constexpr int NT = kFwdWarps * 32, BR = kFwdWarps * 16, BC = kFwdBC<D>, SS = D + 8;
  constexpr int NS = BC / 8, ND = D / 8;
  extern __shared__ uint4 smem_fwd[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_fwd);  // [BR, SS]
  bf16* Ks = Qs + BR * SS;                       // [BC, SS]
  bf16* Vs = Ks + BC * SS;                       // [BC, SS]

  const int ctx = geo.ctx, H = geo.n_head;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gq = lane / 4, tq = lane % 4;
  const int q0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * BR;
  const int b = static_cast<int>(blockIdx.y) / H, h = static_cast<int>(blockIdx.y) % H;
  const int g = h / (H / geo.n_head_kv);
  const int64_t ldq = int64_t{H} * D, ldk = int64_t{geo.n_head_kv} * D;
  const int64_t seq_row = int64_t{b} * ctx;
  const float* kb = k + seq_row * ldk + int64_t{g} * D;
  const float* vb = v + seq_row * ldk + int64_t{g} * D;

  load_tile_bf16<BR, D, NT>(Qs, q + (seq_row + q0) * ldq + int64_t{h} * D, ldq, ctx - q0);

  const int wq0 = q0 + warp * 16;  // the warp's first query row
  const int row0 = wq0 + gq;       // this thread's rows: row0 (c0, c1) and row0 + 8 (c2, c3)
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.0f, 0.0f};  // l_r: this thread's columns
  float acc[ND][4];
  zero(acc);

  const int q_last = min(q0 + BR, ctx) - 1;
  for (int k0 = 0; k0 <= q_last; k0 += BC) {
    __syncthreads();  // the previous step is done with Ks, Vs
    load_tile_bf16<BC, D, NT>(Ks, kb + k0 * ldk, ldk, ctx - k0);
    load_tile_bf16<BC, D, NT>(Vs, vb + k0 * ldk, ldk, ctx - k0);
    __syncthreads();
    if (k0 > wq0 + 15) continue;  // every key of the tile is after every row of the warp

    float s[NS][4];
    zero(s);
    warp_mma_nt<D, BC, SS>(s, Qs + warp * 16 * SS, Ks, lane);

    // Masking only where some key of the tile follows the warp's first row (the diagonal tile;
    // keys >= ctx also follow every real row, so they are masked there too).
    const bool diag = k0 + BC - 1 > wq0;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = k0 + j * 8 + tq * 2 + (e & 1), row = row0 + (e / 2) * 8;
        const float x = diag && col > row ? -INFINITY : s[j][e] * geo.scale_log2;
        s[j][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Key 0 is in the first tile every warp computes, so m is finite from there on; the guard
      // keeps a fully masked row at p = 0 (no inf - inf) should that ever change.
      const float m_new = fmaxf(m_r[r], quad_max(mx[r]));
      m_use[r] = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m_r[r] - m_use[r]);  // 0 on the first step (m = -inf)
      m_r[r] = m_new;
      l_r[r] *= alpha;
#pragma unroll
      for (int j = 0; j < ND; ++j) acc[j][2 * r] *= alpha, acc[j][2 * r + 1] *= alpha;
    }
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[j][e] - m_use[e / 2]);
        s[j][e] = p;
        l_r[e / 2] += p;  // quad partial sums, reduced once at the end (alpha is quad-uniform)
      }
    warp_mma_pv<BC, D, SS>(acc, s, Vs, lane);
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_r[r]);  // all lanes: shuffles before the row test
    const int qi = row0 + 8 * r;
    if (qi >= ctx) continue;
    const float inv = 1.0f / l;
    float* orow = o + (seq_row + qi) * ldq + int64_t{h} * D + tq * 2;
#pragma unroll
    for (int j = 0; j < ND; ++j)
      *reinterpret_cast<float2*>(orow + j * 8) =
          make_float2(acc[j][2 * r] * inv, acc[j][2 * r + 1] * inv);
    if (lse != nullptr && tq == 0)
      lse[(int64_t{b} * H + h) * ctx + qi] = m_r[r] * kLn2 + logf(l);
  }
}

// ---- backward ----
// D[(b H + h) ctx + s] = sum_i dO[row, h, i] O[row, h, i] in f32; one warp per (row, head).
__global__ void __launch_bounds__(256) attn_bwd_dot_tc_kernel(const float* __restrict__ o,
                                                              const float* __restrict__ dout,
                                                              float* __restrict__ Dv,
                                                              int64_t n_items, int ctx, int H,
                                                              int d) {
  const int64_t item = int64_t{blockIdx.x} * 8 + threadIdx.x / 32;
  if (item >= n_items) return;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const float* a = o + item * d;  // item = row * H + h: [row, h, :] is contiguous
  const float* c = dout + item * d;
  float acc = 0.0f;
  for (int i = lane * 4; i < d; i += 128) {
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
    Dv[(b * H + h) * ctx + s] = acc;
  }
}

// dK, dV of one key tile of one (sequence, KV head); grid (key tiles, B * Hkv), the first key
// tiles (the most query tiles) first.
template <int D>
__global__ void __launch_bounds__(kBwdWarps * 32, 2)
    attn_bwd_dkdv_tc_kernel(const float* __restrict__ q, const float* __restrict__ k,
                            const float* __restrict__ v, const float* __restrict__ dout,
                            const float* __restrict__ lse, const float* __restrict__ Dv,
                            float* __restrict__ dk, float* __restrict__ dv, Geo geo) {
  constexpr int NT = kBwdWarps * 32, BKC = kBwdWarps * 16, BQ = kBwdBQ<D>, SS = D + 8;
  constexpr int NQ = BQ / 8, ND = D / 8;
  static_assert(BKC % BQ == 0 || BQ % BKC == 0, "query tiles start at the diagonal");
  extern __shared__ uint4 smem_kv[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_kv);         // [BKC, SS]
  bf16* Vs = Ks + BKC * SS;                            // [BKC, SS]
  bf16* Qs = Vs + BKC * SS;                            // [BQ, SS]
  bf16* dOs = Qs + BQ * SS;                            // [BQ, SS]
  float* Ls = reinterpret_cast<float*>(dOs + BQ * SS);  // [BQ] lse * log2(e)
  float* Ds = Ls + BQ;                                  // [BQ]

  const int ctx = geo.ctx, H = geo.n_head, Hkv = geo.n_head_kv, rep = H / Hkv;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gq = lane / 4, tq = lane % 4;
  const int k0 = static_cast<int>(blockIdx.x) * BKC;
  const int b = static_cast<int>(blockIdx.y) / Hkv, g = static_cast<int>(blockIdx.y) % Hkv;
  const int64_t ldq = int64_t{H} * D, ldk = int64_t{Hkv} * D;
  const int64_t seq_row = int64_t{b} * ctx;
  const int64_t kv_off = (seq_row + k0) * ldk + int64_t{g} * D;

  load_tile_bf16<BKC, D, NT>(Ks, k + kv_off, ldk, ctx - k0);
  load_tile_bf16<BKC, D, NT>(Vs, v + kv_off, ldk, ctx - k0);

  const int wk0 = k0 + warp * 16;  // the warp's first key
  const int key0 = wk0 + gq;       // this thread's keys: key0 (c0, c1) and key0 + 8 (c2, c3)
  float dk_acc[ND][4], dv_acc[ND][4];
  zero(dk_acc);
  zero(dv_acc);

  const int q_start = (k0 / BQ) * BQ;  // earlier query tiles see none of these keys
  for (int hh = 0; hh < rep; ++hh) {   // the group's query heads, in order
    const int h = g * rep + hh;
    const int64_t lrow = (int64_t{b} * H + h) * ctx;  // [B, H, ctx] row of lse and D
    for (int q0 = q_start; q0 < ctx; q0 += BQ) {
      __syncthreads();  // the previous step is done with Qs, dOs, Ls, Ds
      const int64_t q_off = (seq_row + q0) * ldq + int64_t{h} * D;
      load_tile_bf16<BQ, D, NT>(Qs, q + q_off, ldq, ctx - q0);
      load_tile_bf16<BQ, D, NT>(dOs, dout + q_off, ldq, ctx - q0);
      for (int i = static_cast<int>(threadIdx.x); i < BQ; i += NT) {
        const bool in = q0 + i < ctx;
        Ls[i] = in ? lse[lrow + q0 + i] * kLog2e : 0.0f;
        Ds[i] = in ? Dv[lrow + q0 + i] : 0.0f;
      }
      __syncthreads();
      // Nothing to do when every query of the step precedes every key of the warp, or when the
      // warp's keys are all padding.
      if (q0 + BQ - 1 < wk0 || wk0 >= ctx) continue;

      float st[NQ][4];  // S^T, then P^T: rows = keys, columns = queries q0 + 8 j + ...
      zero(st);
      warp_mma_nt<D, BQ, SS>(st, Ks + warp * 16 * SS, Qs, lane);
      // Masking where some query precedes some key of the warp, or runs past ctx (zero rows).
      const bool diag = q0 < wk0 + 15 || q0 + BQ > ctx;
#pragma unroll
      for (int j = 0; j < NQ; ++j) {
        const float2 lj = *reinterpret_cast<const float2*>(Ls + j * 8 + tq * 2);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = q0 + j * 8 + tq * 2 + (e & 1), key = key0 + (e / 2) * 8;
          const float p = exp2f(st[j][e] * geo.scale_log2 - ((e & 1) ? lj.y : lj.x));
          st[j][e] = diag && (key > qi || qi >= ctx) ? 0.0f : p;
        }
      }
      warp_mma_pv<BQ, D, SS>(dv_acc, st, dOs, lane);  // dV += P^T dO

      float dpt[NQ][4];  // dP^T = V dO^T, then dS^T
      zero(dpt);
      warp_mma_nt<D, BQ, SS>(dpt, Vs + warp * 16 * SS, dOs, lane);
#pragma unroll
      for (int j = 0; j < NQ; ++j) {
        const float2 dj = *reinterpret_cast<const float2*>(Ds + j * 8 + tq * 2);
#pragma unroll
        for (int e = 0; e < 4; ++e) dpt[j][e] = st[j][e] * (dpt[j][e] - ((e & 1) ? dj.y : dj.x));
      }
      warp_mma_pv<BQ, D, SS>(dk_acc, dpt, Qs, lane);  // dK += dS^T Q (scaled at the end)
    }
  }

  // This block alone owns these key rows of this KV head: a plain += (the caller zeroed them or
  // holds another layer's share).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kj = key0 + 8 * r;
    if (kj >= ctx) continue;
    const int64_t off = (seq_row + kj) * ldk + int64_t{g} * D + tq * 2;
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      float2* pk = reinterpret_cast<float2*>(dk + off + j * 8);
      float2* pv = reinterpret_cast<float2*>(dv + off + j * 8);
      float2 xk = *pk, xv = *pv;
      xk.x += dk_acc[j][2 * r] * geo.scale;
      xk.y += dk_acc[j][2 * r + 1] * geo.scale;
      xv.x += dv_acc[j][2 * r];
      xv.y += dv_acc[j][2 * r + 1];
      *pk = xk;
      *pv = xv;
    }
  }
}

// dQ of one query tile of one (sequence, query head); grid (query tiles, B * H), longest first.
template <int D>
__global__ void __launch_bounds__(kBwdWarps * 32, 2)
    attn_bwd_dq_tc_kernel(const float* __restrict__ q, const float* __restrict__ k,
                          const float* __restrict__ v, const float* __restrict__ dout,
                          const float* __restrict__ lse, const float* __restrict__ Dv,
                          float* __restrict__ dq, Geo geo) {
  constexpr int NT = kBwdWarps * 32, BR = kBwdWarps * 16, BC = kBwdBC, SS = D + 8;
  constexpr int NS = BC / 8, ND = D / 8;
  extern __shared__ uint4 smem_dq[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_dq);  // [BR, SS]
  bf16* dOs = Qs + BR * SS;                     // [BR, SS]
  bf16* Ks = dOs + BR * SS;                     // [BC, SS]
  bf16* Vs = Ks + BC * SS;                      // [BC, SS]

  const int ctx = geo.ctx, H = geo.n_head;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gq = lane / 4, tq = lane % 4;
  const int q0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * BR;
  const int b = static_cast<int>(blockIdx.y) / H, h = static_cast<int>(blockIdx.y) % H;
  const int g = h / (H / geo.n_head_kv);
  const int64_t ldq = int64_t{H} * D, ldk = int64_t{geo.n_head_kv} * D;
  const int64_t seq_row = int64_t{b} * ctx;
  const int64_t q_off = (seq_row + q0) * ldq + int64_t{h} * D;
  const float* kb = k + seq_row * ldk + int64_t{g} * D;
  const float* vb = v + seq_row * ldk + int64_t{g} * D;
  const int64_t lrow = (int64_t{b} * H + h) * ctx;

  load_tile_bf16<BR, D, NT>(Qs, q + q_off, ldq, ctx - q0);
  load_tile_bf16<BR, D, NT>(dOs, dout + q_off, ldq, ctx - q0);

  const int wq0 = q0 + warp * 16;
  const int row0 = wq0 + gq;  // rows row0 (c0, c1) and row0 + 8 (c2, c3)
  float l2[2], dd[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = row0 + 8 * r;
    l2[r] = qi < ctx ? lse[lrow + qi] * kLog2e : 0.0f;
    dd[r] = qi < ctx ? Dv[lrow + qi] : 0.0f;
  }
  float acc[ND][4];
  zero(acc);

  const int q_last = min(q0 + BR, ctx) - 1;
  for (int k0 = 0; k0 <= q_last; k0 += BC) {
    __syncthreads();  // the previous step is done with Ks, Vs
    load_tile_bf16<BC, D, NT>(Ks, kb + k0 * ldk, ldk, ctx - k0);
    load_tile_bf16<BC, D, NT>(Vs, vb + k0 * ldk, ldk, ctx - k0);
    __syncthreads();
    if (k0 > wq0 + 15) continue;

    float s[NS][4], dp[NS][4];
    zero(s);
    zero(dp);
    warp_mma_nt<D, BC, SS>(s, Qs + warp * 16 * SS, Ks, lane);
    warp_mma_nt<D, BC, SS>(dp, dOs + warp * 16 * SS, Vs, lane);
    const bool diag = k0 + BC - 1 > wq0;
#pragma unroll
    for (int j = 0; j < NS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = k0 + j * 8 + tq * 2 + (e & 1), r = e / 2;
        const float p = exp2f(s[j][e] * geo.scale_log2 - l2[r]);
        s[j][e] = diag && col > row0 + 8 * r ? 0.0f : p * (dp[j][e] - dd[r]);  // dS
      }
    warp_mma_pv<BC, D, SS>(acc, s, Ks, lane);  // dQ += dS K (scaled at the end)
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = row0 + 8 * r;
    if (qi >= ctx) continue;
    float* row = dq + (seq_row + qi) * ldq + int64_t{h} * D + tq * 2;
#pragma unroll
    for (int j = 0; j < ND; ++j)
      *reinterpret_cast<float2*>(row + j * 8) =
          make_float2(acc[j][2 * r] * geo.scale, acc[j][2 * r + 1] * geo.scale);
  }
}

// ---- host side ----
template <int D>
constexpr size_t fwd_smem() {
  return sizeof(bf16) * size_t{kFwdWarps * 16 + 2 * kFwdBC<D>} * (D + 8);
}
template <int D>
constexpr size_t dkdv_smem() {
  return sizeof(bf16) * size_t{2 * kBwdWarps * 16 + 2 * kBwdBQ<D>} * (D + 8) +
         sizeof(float) * 2 * kBwdBQ<D>;
}
template <int D>
constexpr size_t dq_smem() {
  return sizeof(bf16) * size_t{2 * kBwdWarps * 16 + 2 * kBwdBC} * (D + 8);
}
static_assert(fwd_smem<128>() <= 113 * 1024 && dkdv_smem<128>() <= 113 * 1024 &&
                  dq_smem<128>() <= 113 * 1024,
              "tiles exceed half an SM's shared memory (two blocks per SM)");

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)),
             "attention bf16: shared memory size");
}

Geo make_geo(int ctx, int n_head, int n_head_kv, int head_dim) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  return Geo{ctx, n_head, n_head_kv, scale, scale * kLog2e};
}

void check_dims(const char* op, int batch, int ctx, int n_head, int n_head_kv) {
  MLKV_REQUIRE(batch >= 0 && ctx >= 0, op, ": bad batch ", batch, " or ctx ", ctx);
  MLKV_REQUIRE(n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0, op, ": n_head ", n_head,
               " is not a multiple of n_head_kv ", n_head_kv);
  MLKV_REQUIRE(int64_t{batch} * n_head <= 65535 && int64_t{batch} * ctx * n_head <= INT32_MAX,
               op, ": batch ", batch, " x n_head ", n_head, " x ctx ", ctx, " is too large");
}

void check_aligned(const char* op, std::initializer_list<const float*> ptrs) {
  for (const float* p : ptrs) {
    MLKV_REQUIRE(reinterpret_cast<uintptr_t>(p) % 16 == 0, op,
                 ": tensors must be 16-byte aligned (float4 loads)");
  }
}

template <int D>
void forward_d(cudaStream_t s, const float* q, const float* k, const float* v, float* o,
               float* lse, int batch, const Geo& geo) {
  constexpr int BR = kFwdWarps * 16;
  const size_t smem = fwd_smem<D>();
  set_smem(attn_fwd_tc_kernel<D>, smem);
  const dim3 grid((geo.ctx + BR - 1) / BR, batch * geo.n_head);
  attn_fwd_tc_kernel<D><<<grid, kFwdWarps * 32, smem, s>>>(q, k, v, o, lse, geo);
  check_launch("attn_fwd_tc_kernel");
}

template <int D>
void backward_d(cudaStream_t s, const float* q, const float* k, const float* v,
                const float* dout, const float* lse, const float* Dv, float* dq, float* dk,
                float* dv, int batch, const Geo& geo) {
  constexpr int BKC = kBwdWarps * 16, BR = kBwdWarps * 16;
  const size_t smem_kv = dkdv_smem<D>(), smem_q = dq_smem<D>();
  set_smem(attn_bwd_dkdv_tc_kernel<D>, smem_kv);
  set_smem(attn_bwd_dq_tc_kernel<D>, smem_q);
  const dim3 grid_kv((geo.ctx + BKC - 1) / BKC, batch * geo.n_head_kv);
  attn_bwd_dkdv_tc_kernel<D><<<grid_kv, kBwdWarps * 32, smem_kv, s>>>(q, k, v, dout, lse, Dv,
                                                                       dk, dv, geo);
  check_launch("attn_bwd_dkdv_tc_kernel");
  const dim3 grid_q((geo.ctx + BR - 1) / BR, batch * geo.n_head);
  attn_bwd_dq_tc_kernel<D><<<grid_q, kBwdWarps * 32, smem_q, s>>>(q, k, v, dout, lse, Dv, dq,
                                                                   geo);
  check_launch("attn_bwd_dq_tc_kernel");
}

bool tc_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

}  // namespace

void attention_forward_bf16(cudaStream_t s, const float* q, const float* k, const float* v,
                            float* o, float* lse, int batch, int ctx, int n_head, int n_head_kv,
                            int head_dim) {
  if (!tc_head_dim(head_dim)) {  // the f32 kernels (they check head_dim themselves)
    attention_forward(s, q, k, v, o, lse, batch, ctx, n_head, n_head_kv, head_dim);
    return;
  }
  check_dims("attention_forward_bf16", batch, ctx, n_head, n_head_kv);
  if (batch == 0 || ctx == 0) return;
  check_aligned("attention_forward_bf16", {q, k, v, o});
  const Geo geo = make_geo(ctx, n_head, n_head_kv, head_dim);
  if (head_dim == 64) {
    forward_d<64>(s, q, k, v, o, lse, batch, geo);
  } else {
    forward_d<128>(s, q, k, v, o, lse, batch, geo);
  }
}

void attention_backward_bf16(cudaStream_t s, const float* q, const float* k, const float* v,
                             const float* o, const float* lse, const float* dout, float* dq,
                             float* dk, float* dv, int batch, int ctx, int n_head, int n_head_kv,
                             int head_dim, float* scratch) {
  if (!tc_head_dim(head_dim)) {
    attention_backward(s, q, k, v, o, lse, dout, dq, dk, dv, batch, ctx, n_head, n_head_kv,
                       head_dim, scratch);
    return;
  }
  check_dims("attention_backward_bf16", batch, ctx, n_head, n_head_kv);
  if (batch == 0 || ctx == 0) return;
  check_aligned("attention_backward_bf16", {q, k, v, o, dout, dq, dk, dv});
  MLKV_REQUIRE(lse != nullptr && scratch != nullptr,
               "attention_backward_bf16: lse and scratch are required");
  const Geo geo = make_geo(ctx, n_head, n_head_kv, head_dim);

  const int64_t n_items = int64_t{batch} * ctx * n_head;  // (row, head) pairs, 8 per block
  const unsigned blocks = static_cast<unsigned>((n_items + 7) / 8);
  attn_bwd_dot_tc_kernel<<<blocks, 256, 0, s>>>(o, dout, scratch, n_items, ctx, n_head, head_dim);
  check_launch("attn_bwd_dot_tc_kernel");

  if (head_dim == 64) {
    backward_d<64>(s, q, k, v, dout, lse, scratch, dq, dk, dv, batch, geo);
  } else {
    backward_d<128>(s, q, k, v, dout, lse, scratch, dq, dk, dv, batch, geo);
  }
}

}  // namespace mlkv::cuda
