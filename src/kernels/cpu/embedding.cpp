// Token embedding forward and backward on the CPU (kernels/ops.h).
#include <cstring>

#include "kernels/ops.h"

namespace mlkv::ops {

template <typename T>
void embedding_forward(const int32_t* tok, const T* table, T* x, int n, int E) {
#pragma omp parallel for schedule(static) if (int64_t{n} * E > 32768)
  for (int t = 0; t < n; ++t) {
    std::memcpy(x + int64_t{t} * E, table + int64_t{tok[t]} * E, sizeof(T) * static_cast<size_t>(E));
  }
}

// Rows in order: a token that appears twice adds its two gradients in a fixed order.
template <typename T>
void embedding_backward(const int32_t* tok, const T* dx, T* dtable, int n, int E) {
  for (int t = 0; t < n; ++t) add_inplace(dtable + int64_t{tok[t]} * E, dx + int64_t{t} * E, E);
}

template void embedding_forward<float>(const int32_t*, const float*, float*, int, int);
template void embedding_forward<double>(const int32_t*, const double*, double*, int, int);
template void embedding_backward<float>(const int32_t*, const float*, float*, int, int);
template void embedding_backward<double>(const int32_t*, const double*, double*, int, int);

}  // namespace mlkv::ops
