// LayerNorm and RMSNorm on the CPU (kernels/ops.h): rows in parallel through the active path's row
// kernels; the weight and bias gradients reduce columns in blocks of 64, rows in order.
#include <algorithm>
#include <type_traits>

#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/norm.h"

namespace mlkv::ops {

namespace {

constexpr int kColBlock = 64;
// Rows in parallel only when there are enough of them: a parallel region costs microseconds.
bool parallel_rows(int n, int E) { return n > 4 && int64_t{n} * E >= 8192; }

void norm_backward_cols(const float* dy, const float* x, const float* mean, const float* rstd,
                        float* dw, float* db, int n, int E) {
  const cpu::Kernels& k = cpu::kernels();
  const int n_blocks = (E + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (parallel_rows(n, E))
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int i0 = blk * kColBlock;
    k.norm_bwd_cols(dy, x, mean, rstd, n, E, i0, std::min(E, i0 + kColBlock), dw, db);
  }
}

}  // namespace

template <typename T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int n, int E,
                       T eps) {
  if constexpr (std::is_same_v<T, double>) {
    ref::layernorm_forward(x, w, b, y, mean, rstd, n, E, eps);
  } else {
    const cpu::Kernels& k = cpu::kernels();
#pragma omp parallel for schedule(static) if (parallel_rows(n, E))
    for (int t = 0; t < n; ++t) {
      float m, rs;
      k.layernorm_row(x + int64_t{t} * E, w, b, y + int64_t{t} * E, E, eps, &m, &rs);
      if (mean) mean[t] = m;
      if (rstd) rstd[t] = rs;
    }
  }
}

template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                        T* dw, T* db, int n, int E) {
  if constexpr (std::is_same_v<T, double>) {
    ref::layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, n, E);
  } else {
    const cpu::Kernels& k = cpu::kernels();
#pragma omp parallel for schedule(static) if (parallel_rows(n, E))
    for (int t = 0; t < n; ++t) {
      const int64_t o = int64_t{t} * E;
      k.norm_bwd_row(dy + o, x + o, w, mean[t], rstd[t], dx + o, E, /*rms=*/false);
    }
    norm_backward_cols(dy, x, mean, rstd, dw, db, n, E);
  }
}

template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int n, int E, T eps) {
  if constexpr (std::is_same_v<T, double>) {
    ref::rmsnorm_forward(x, w, y, rstd, n, E, eps);
  } else {
    const cpu::Kernels& k = cpu::kernels();
#pragma omp parallel for schedule(static) if (parallel_rows(n, E))
    for (int t = 0; t < n; ++t) {
      float rs;
      k.rmsnorm_row(x + int64_t{t} * E, w, y + int64_t{t} * E, E, eps, &rs);
      if (rstd) rstd[t] = rs;
    }
  }
}

template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int n,
                      int E) {
  if constexpr (std::is_same_v<T, double>) {
    ref::rmsnorm_backward(dy, x, w, rstd, dx, dw, n, E);
  } else {
    const cpu::Kernels& k = cpu::kernels();
#pragma omp parallel for schedule(static) if (parallel_rows(n, E))
    for (int t = 0; t < n; ++t) {
      const int64_t o = int64_t{t} * E;
      k.norm_bwd_row(dy + o, x + o, w, 0.0f, rstd[t], dx + o, E, /*rms=*/true);
    }
    norm_backward_cols(dy, x, nullptr, rstd, dw, nullptr, n, E);
  }
}

#define MLKV_INSTANTIATE(T)                                                                     \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, int, int, T);    \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, \
                                      T*, int, int);                                            \
  template void rmsnorm_forward<T>(const T*, const T*, T*, T*, int, int, T);                    \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, T*, T*, int, int);
MLKV_INSTANTIATE(float)
MLKV_INSTANTIATE(double)
#undef MLKV_INSTANTIATE

}  // namespace mlkv::ops
