// Linear layers on the CPU: y = x w^T + b and its backward pass (kernels/ops.h).
// Decode (n <= 32 token rows) is memory-bound: the streaming GEMV of the active instruction-set
// path reads every weight row once, blocks of 4 rows split across threads so that each thread
// streams its own part of w (f32, f16, bf16 or q8_0 rows, widened in registers). Larger n is
// compute-bound and goes to BLAS sgemm. Low-precision weights at large n are widened block by
// block into per-thread scratch and multiplied by sgemm inside the parallel loop (widening costs
// N K operations against the 2 n N K of the product). q8_0 weights multiply activations rounded
// to q8 blocks on every path: by integer block products for up to kMaxGemvIntRows token rows
// (gemv_int-inl.h), else the paths above over the rounded rows. f32, f16 and bf16 weights packed
// in panels of 16 rows (inference on the CPU) take one kernel for every n (matmul_panels).
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/quant.h"
#include "core/tensor.h"
#include "kernels/blas/blas.h"
#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/linear.h"

namespace mlkv::ops {

namespace {

constexpr int kColBlock = 64;           // columns per work item in column reductions
constexpr int64_t kElemParallel = 32768;  // fewer elements than this: one thread

// y[t, n0 + j] (+)= r[t * 4 + j] (+ b[n0 + j]) for the blocks of 4 weight rows, split across
// threads: rows4(n0, rows, r) fills r (rows <= 4 weight rows from n0, against the T token rows).
template <class Rows4>
void matmul_blocks(const float* b, float* y, int T, int N, bool accumulate, Rows4 rows4) {
  const int n_blocks = (N + 3) / 4;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int n0 = blk * 4;
    const int rows = std::min(4, N - n0);
    float r[cpu::kMaxGemvRows * 4];  // r[t * 4 + j]: weight row n0 + j against x row t
    rows4(n0, rows, r);
    for (int t = 0; t < T; ++t) {
      float* dst = y + int64_t{t} * N + n0;
      for (int j = 0; j < rows; ++j) {
        const float v = r[t * 4 + j] + (b ? b[n0 + j] : 0.0f);
        dst[j] = accumulate ? dst[j] + v : v;
      }
    }
  }
}

// w: N rows of row_bytes in weight format fmt (kernels.h's index).
void matmul_streaming(const float* x, const char* w, size_t row_bytes, int fmt, const float* b,
                      float* y, int T, int K, int N, bool accumulate) {
  const cpu::Kernels& k = cpu::kernels();
  matmul_blocks(b, y, T, N, accumulate, [&](int n0, int rows, float* r) {
    const char* wb = w + static_cast<size_t>(n0) * row_bytes;
    if (rows == 4) {
      k.gemv4[fmt](x, wb, T, K, r);
    } else {
      k.gemv_tail[fmt](x, wb, rows, T, K, r);
    }
  });
}

// Low-precision weights at large n: blocks of 128 rows widened to f32 in per-thread scratch and
// multiplied by sgemm inside the parallel loop.
void matmul_widened(const float* x, const char* w, size_t row_bytes, int fmt, const float* b,
                    float* y, int T, int K, int N, bool accumulate) {
  constexpr int kBlock = 128;
  const int n_blocks = (N + kBlock - 1) / kBlock;
  const cpu::Kernels& k = cpu::kernels();
#pragma omp parallel
  {
    std::vector<float> wf(static_cast<size_t>(kBlock) * K);
    std::vector<float> yb(static_cast<size_t>(T) * kBlock);
#pragma omp for schedule(dynamic, 1)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int n0 = blk * kBlock;
      const int rows = std::min(kBlock, N - n0);
      k.rows_to_f32[fmt](w + static_cast<size_t>(n0) * row_bytes, row_bytes, rows, K, wf.data());
      blas::gemm(false, true, T, rows, K, 1.0f, x, K, wf.data(), K, 0.0f, yb.data(), rows);
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

void add_bias_rows(float* y, const float* b, int n, int N) {
#pragma omp parallel for schedule(static) if (int64_t{n} * N > kElemParallel)
  for (int t = 0; t < n; ++t) {
    float* row = y + int64_t{t} * N;
    for (int i = 0; i < N; ++i) row[i] += b[i];
  }
}

// Weights in panels of 16 rows (DType::kF32P16 / kF16P16 / kBF16P16; fmt: 0 / 1 / 2), any number
// of token rows: the panels split across threads in groups (4 panels for up to 4 token rows, else
// 2; fewer when a small matrix would leave a thread idle), each group's outputs written straight
// into y; the last N % 16 rows (row-major) widened to f32 once and taken by dot products. Every
// thread streams its own panels once per K chunk.
void matmul_panels(const float* x, const void* w, int fmt, const float* b, float* y, int T, int K,
                   int N, bool accumulate) {
  const cpu::Kernels& k = cpu::kernels();
  const size_t esize = fmt == 0 ? 4 : 2;
  const char* wb = static_cast<const char*>(w);
  const int n_panels = N / kPanelRows;
  const int n16 = n_panels * kPanelRows;
  int group = T <= 4 ? 4 : 2;
  group = std::max(1, std::min(group, n_panels / std::max(1, omp_get_max_threads())));
  const int n_items = (n_panels + group - 1) / group;
  const bool tail = n16 < N;
#pragma omp parallel for schedule(static)
  for (int it = 0; it < n_items + (tail ? 1 : 0); ++it) {
    if (it < n_items) {
      const int p0 = it * group;
      k.gemv_panels[fmt](x, T, K, wb + size_t(p0) * kPanelRows * K * esize,
                         std::min(group, n_panels - p0), y + int64_t{p0} * kPanelRows, N, accumulate);
    } else {
      std::vector<float> rows(size_t(N - n16) * K);
      k.rows_to_f32[fmt](wb + size_t(n16) * K * esize, size_t(K) * esize, N - n16, K, rows.data());
      for (int t = 0; t < T; ++t) {
        for (int i = n16; i < N; ++i) {
          const float v = k.dot_n(x + int64_t{t} * K, rows.data() + int64_t{i - n16} * K, K);
          float& dst = y[int64_t{t} * N + i];
          dst = accumulate ? dst + v : v;
        }
      }
    }
  }
  if (b != nullptr) add_bias_rows(y, b, T, N);
}

// db[N] += column sums of dy[n, N]; columns split across threads, rows summed in order.
void colsum_add(const float* dy, int n, int N, float* db) {
  const cpu::Kernels& k = cpu::kernels();
  const int n_blocks = (N + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (int64_t{n} * N > kElemParallel)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int i0 = blk * kColBlock;
    k.colsum(dy, n, N, i0, std::min(N, i0 + kColBlock), db);
  }
}

}  // namespace

template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, int n, int K, int N,
                    bool accumulate) {
  if constexpr (std::is_same_v<T, double>) {
    ref::linear_forward(x, w, b, y, n, K, N, accumulate);
  } else {
    if (n <= 0 || N <= 0) return;
    if (n <= cpu::kMaxGemvRows) {
      matmul_streaming(x, reinterpret_cast<const char*>(w), sizeof(float) * size_t(K), 0, b, y, n,
                       K, N, accumulate);
      return;
    }
    blas::gemm(false, true, n, N, K, 1.0f, x, K, w, K, accumulate ? 1.0f : 0.0f, y, N);
    if (b != nullptr) add_bias_rows(y, b, n, N);
  }
}

void linear_forward_lowp(const float* x, const void* w, DType wt, const float* b, float* y, int n,
                         int K, int N, bool accumulate) {
  if (dtype_is_panels(wt)) {
    const int fmt = wt == DType::kF32P16 ? 0 : wt == DType::kF16P16 ? 1 : 2;
    if (n > 0 && N > 0) matmul_panels(x, w, fmt, b, y, n, K, N, accumulate);
    return;
  }
  MLKV_REQUIRE(wt == DType::kF16 || wt == DType::kBF16 || wt == DType::kQ8_0,
               "linear layers on the CPU take f32 (row-major or in panels), f16, bf16 or q8_0 "
               "weights (got ", dtype_name(wt), ")");
  MLKV_REQUIRE(K % dtype_block_values(wt) == 0,
               "q8_0 weights need rows of a multiple of 32 values (got ", K, ")");
  if (n <= 0 || N <= 0) return;
  const int fmt = cpu::kv_format_index(wt);
  const size_t row_bytes = dtype_row_bytes(wt, K);
  const char* wb = static_cast<const char*>(w);
  if (wt == DType::kQ8_0) {
    // The activations rounded to q8 blocks (quantize_query_q8's rule, as llama.cpp pairs q8_0
    // weights with q8_0 activations): integer block products for a few token rows, the f32
    // paths over the rounded values for more, so every path computes the same function.
    const cpu::Kernels& k = cpu::kernels();
    const int64_t nb = K / kQuantBlock;
    // Per calling thread (a server may run models on several); the parallel regions below see
    // the buffers through plain pointers, not the worker threads' own thread_local copies.
    thread_local std::vector<int8_t> xq_buf;
    thread_local std::vector<float> xd_buf, xr_buf;
    xq_buf.resize(size_t(n) * K);
    xd_buf.resize(size_t(n) * nb);
    int8_t* xq = xq_buf.data();
    float* xd = xd_buf.data();
    const bool par = int64_t{n} * K > kElemParallel;
#pragma omp parallel for schedule(static) if (par)
    for (int t = 0; t < n; ++t) k.quantize_q8(x + int64_t{t} * K, xq + int64_t{t} * K, xd + t * nb, K);
    if (n <= cpu::kMaxGemvIntRows) {
      matmul_blocks(b, y, n, N, accumulate, [&](int n0, int rows, float* r) {
        const char* w4 = wb + static_cast<size_t>(n0) * row_bytes;
        if (rows == 4) {
          k.gemv4_q8_int(xq, xd, w4, n, K, r);
        } else {
          k.gemv_tail_q8_int(xq, xd, w4, rows, n, K, r);
        }
      });
      return;
    }
    xr_buf.resize(size_t(n) * K);
    float* xr = xr_buf.data();
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < int64_t{n} * K; ++i) xr[i] = xd[i / kQuantBlock] * xq[i];
    x = xr;
  }
  if (n <= cpu::kMaxGemvRows) {
    matmul_streaming(x, wb, row_bytes, fmt, b, y, n, K, N, accumulate);
  } else {
    matmul_widened(x, wb, row_bytes, fmt, b, y, n, K, N, accumulate);
  }
}

template <typename T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, int n, int K, int N,
                     bool accumulate_dx) {
  if constexpr (std::is_same_v<T, double>) {
    ref::linear_backward(dy, x, w, dx, dw, db, n, K, N, accumulate_dx);
  } else {
    if (dx != nullptr) {
      blas::gemm(false, false, n, K, N, 1.0f, dy, N, w, K, accumulate_dx ? 1.0f : 0.0f, dx, K);
    }
    if (dw != nullptr) blas::gemm(true, false, N, K, n, 1.0f, dy, N, x, K, 1.0f, dw, K);
    if (db != nullptr) colsum_add(dy, n, N, db);
  }
}

template void linear_forward<float>(const float*, const float*, const float*, float*, int, int,
                                    int, bool);
template void linear_forward<double>(const double*, const double*, const double*, double*, int,
                                     int, int, bool);
template void linear_backward<float>(const float*, const float*, const float*, float*, float*,
                                     float*, int, int, int, bool);
template void linear_backward<double>(const double*, const double*, const double*, double*,
                                      double*, double*, int, int, int, bool);

}  // namespace mlkv::ops
