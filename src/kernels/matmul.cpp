// matmul: y[T, N] = x[T, K] @ w[N, K]^T (+ b).
// Decode is memory-bound: every weight byte is read once per step, so for small T a hand-written
// multi-row GEMV streams w exactly once (all T rows of x stay in cache) with OpenMP splitting the
// output rows across cores. Larger T is compute-bound and goes to OpenBLAS sgemm.
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "kernels/ops.h"
#include "kernels/simd.h"

namespace mlkv::ops {

namespace {

constexpr int kMaxGemvRows = 32;  // T at or below this uses the streaming kernel (sgemm, which
                                  // packs the weights on every call, only wins beyond; measured)

using simd::hsum;
using simd::load1;
using simd::load8;

// Four weight rows against NX x rows (rows x + t * K): 4 * NX accumulators, 4 + NX loads per
// 4 * NX FMAs (one row at a time against T x rows needs T + 1 loads per T FMAs, and the loads are
// the limit for batched decode). out[t * 4 + j] = x row t . weight row j. With one x row
// the two 8-column halves of each 16-column step get their own accumulators (more independent
// FMA chains while the registers allow). With prefetch, the same columns of the next four rows
// are fetched ahead: the hardware prefetchers alone stall at every jump to the next block.
template <int NX, typename W>
inline void gemv_rows4_xn(const float* x, const W* w, int64_t K, float* out, bool prefetch) {
  constexpr int S = NX == 1 ? 2 : 1;  // accumulator sets (AVX2 has registers for 2 only at NX 1)
  const W* wr[4] = {w, w + K, w + 2 * K, w + 3 * K};
  __m256 acc[S][NX][4];
  for (int s = 0; s < S; ++s) {
    for (int t = 0; t < NX; ++t) {
      for (int j = 0; j < 4; ++j) acc[s][t][j] = _mm256_setzero_ps();
    }
  }
  auto step = [&](int64_t k, int s) {
    __m256 xv[NX];
    for (int t = 0; t < NX; ++t) xv[t] = _mm256_loadu_ps(x + t * K + k);
    for (int j = 0; j < 4; ++j) {
      const __m256 wv = load8(wr[j] + k);
      for (int t = 0; t < NX; ++t) acc[s][t][j] = _mm256_fmadd_ps(wv, xv[t], acc[s][t][j]);
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (prefetch) {
      for (int j = 0; j < 4; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(wr[j] + 4 * K + k), _MM_HINT_T0);
    }
    step(k, 0);
    step(k + 8, S - 1);
  }
  for (; k + 8 <= K; k += 8) step(k, 0);
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) {
      float v = hsum(S == 2 ? _mm256_add_ps(acc[0][t][j], acc[S - 1][t][j]) : acc[0][t][j]);
      for (int64_t kk = k; kk < K; ++kk) v += load1(wr[j] + kk) * x[t * K + kk];
      out[t * 4 + j] = v;
    }
  }
}

// x rows per pass: 4 needs 16 accumulators + 5 operands, which fits AVX-512's 32 vector registers
// (ymm16-31 with AVX512VL); AVX2's 16 take 2.
#if defined(__AVX512VL__)
constexpr int kGemvTile = 4;
#else
constexpr int kGemvTile = 2;
#endif

// One weight row against T x rows (T <= kMaxGemvRows): the row is loaded once per 8 columns.
template <typename W>
inline void gemv_row_multi(const float* x, const W* w, int T, int64_t K, float* out) {
  __m256 acc[kMaxGemvRows];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 wv = load8(w + k);
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * K + k), acc[t]);
  }
  for (int t = 0; t < T; ++t) {
    float s = hsum(acc[t]);
    for (int64_t kk = k; kk < K; ++kk) s += load1(w + kk) * x[t * K + kk];
    out[t] = s;
  }
}

template <typename W>
void matmul_streaming(const float* x, const W* w, const float* b, float* y, int T, int K, int N,
                      bool accumulate) {
  // Blocks of 4 rows; each thread takes a contiguous range so it streams its own part of w.
  const int n_blocks = (N + 3) / 4;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int n0 = blk * 4;
    const int rows = N - n0 < 4 ? N - n0 : 4;
    float r[kMaxGemvRows * 4];
    // r[t * 4 + j]: row n0 + j against x row t.
    if (rows == 4) {
      // The first tile streams the rows from memory and prefetches the next block; the others
      // find the rows in L1/L2.
      const W* wb = w + int64_t{n0} * K;
      int t = 0;
      for (; t + kGemvTile <= T; t += kGemvTile) {
        gemv_rows4_xn<kGemvTile>(x + int64_t{t} * K, wb, K, r + t * 4, t == 0);
      }
      if (kGemvTile == 4 && t + 2 <= T) {
        gemv_rows4_xn<2>(x + int64_t{t} * K, wb, K, r + t * 4, t == 0);
        t += 2;
      }
      if (t < T) gemv_rows4_xn<1>(x + int64_t{t} * K, wb, K, r + t * 4, t == 0);
    } else {
      float rt[kMaxGemvRows];
      for (int j = 0; j < rows; ++j) {
        gemv_row_multi(x, w + int64_t{n0 + j} * K, T, K, rt);
        for (int t = 0; t < T; ++t) r[t * 4 + j] = rt[t];
      }
    }
    for (int t = 0; t < T; ++t) {
      float* dst = y + int64_t{t} * N + n0;
      for (int j = 0; j < rows; ++j) {
        const float v = r[t * 4 + j] + (b ? b[n0 + j] : 0.0f);
        dst[j] = accumulate ? dst[j] + v : v;
      }
    }
  }
}

// Large T with f16 weights: blocks of rows are widened to f32 in per-thread scratch, then
// multiplied by OpenBLAS single-threaded inside the parallel loop. Widening costs N*K operations
// against the 2*T*N*K of the product, so it is noise for prefill-sized T.
void matmul_f16_blocked(const float* x, const uint16_t* w, const float* b, float* y, int T, int K,
                        int N, bool accumulate) {
  constexpr int kBlock = 128;
  const int n_blocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel
  {
    std::vector<float> wf(static_cast<size_t>(kBlock) * K);
    std::vector<float> yb(static_cast<size_t>(T) * kBlock);
#pragma omp for schedule(dynamic, 1)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int n0 = blk * kBlock;
      const int rows = std::min(kBlock, N - n0);
      f16_to_f32_n(w + int64_t{n0} * K, wf.data(), static_cast<size_t>(rows) * K);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, rows, K, 1.0f, x, K, wf.data(), K,
                  0.0f, yb.data(), rows);
      for (int t = 0; t < T; ++t) {
        float* dst = y + int64_t{t} * N + n0;
        const float* src = yb.data() + int64_t{t} * rows;
        for (int j = 0; j < rows; ++j) {
          const float v = src[j] + (b ? b[n0 + j] : 0.0f);
          dst[j] = accumulate ? dst[j] + v : v;
        }
      }
    }
  }
}

}  // namespace

void matmul_f16(const float* x, const uint16_t* w, const float* b, float* y, int T, int K, int N,
                bool accumulate) {
  if (T <= 0 || N <= 0) return;
  if (T <= kMaxGemvRows) {
    matmul_streaming(x, w, b, y, T, K, N, accumulate);
  } else {
    matmul_f16_blocked(x, w, b, y, T, K, N, accumulate);
  }
}

void matmul(const float* x, const float* w, const float* b, float* y, int T, int K, int N,
            bool accumulate) {
  if (T <= 0 || N <= 0) return;
  if (T <= kMaxGemvRows) {
    matmul_streaming(x, w, b, y, T, K, N, accumulate);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, w, K,
              accumulate ? 1.0f : 0.0f, y, N);
  if (b != nullptr) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; ++t) {
      float* row = y + int64_t{t} * N;
      for (int n = 0; n < N; ++n) row[n] += b[n];
    }
  }
}

}  // namespace mlkv::ops
