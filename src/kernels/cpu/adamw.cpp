// The AdamW update, the gradient norm's sum of squares and the small array helpers on the CPU
// (kernels/ops.h).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/adamw.h"

namespace mlkv::ops {

namespace {
constexpr int64_t kAdamChunk = int64_t{1} << 16;  // parameters per AdamW work item
}  // namespace

template <typename T>
void adamw_update(T* p, T* g, T* m, T* v, int64_t n, const AdamWStep& h, bool zero_grad) {
  if constexpr (std::is_same_v<T, double>) {
    ref::adamw_update(p, g, m, v, n, h, zero_grad);
  } else {
    // Memory-bound (28-32 bytes per parameter): one pass, chunks across threads.
    const cpu::Kernels& k = cpu::kernels();
    const int64_t n_chunks = (n + kAdamChunk - 1) / kAdamChunk;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t i = c * kAdamChunk, m_n = std::min(kAdamChunk, n - i);
      k.adamw(p + i, g + i, m + i, v + i, m_n, h, zero_grad);
    }
  }
}

template <typename T>
void add_inplace(T* y, const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  } else {
    cpu::kernels().add_n(y, x, n);
  }
}

template <typename T>
void zero(T* y, int64_t n) {
  std::memset(y, 0, sizeof(T) * static_cast<size_t>(n));
}

float dot(const float* a, const float* b, int64_t n) { return cpu::kernels().dot_n(a, b, n); }

double sum_squares(const float* x, int64_t n) {
  const int64_t n_chunks = (n + kAdamChunk - 1) / kAdamChunk;
  std::vector<double> part(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) if (n_chunks > 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t c0 = c * kAdamChunk, c1 = std::min(n, c0 + kAdamChunk);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = c0; j < c1; ++j) s += static_cast<double>(x[j]) * x[j];
    part[static_cast<size_t>(c)] = s;
  }
  double total = 0;
  for (double s : part) total += s;
  return total;
}

#define MLKV_INSTANTIATE(T)                                                       \
  template void adamw_update<T>(T*, T*, T*, T*, int64_t, const AdamWStep&, bool); \
  template void add_inplace<T>(T*, const T*, int64_t);                            \
  template void zero<T>(T*, int64_t);
MLKV_INSTANTIATE(float)
MLKV_INSTANTIATE(double)
#undef MLKV_INSTANTIATE

}  // namespace mlkv::ops
