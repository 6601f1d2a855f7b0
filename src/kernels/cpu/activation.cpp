// GELU and SwiGLU forward/backward on the CPU (kernels/ops.h): chunks of the array in parallel
// through the active path's element-wise kernels.
#include <algorithm>
#include <type_traits>

#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/activation.h"

namespace mlkv::ops {

namespace {

constexpr int64_t kChunk = 16384;  // elements per work item (a multiple of every vector width)

// Runs f(begin, count) over [0, n) in chunks, in parallel when there is more than one.
template <typename F>
void for_chunks(int64_t n, F&& f) {
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n_chunks > 2)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t i0 = c * kChunk;
    f(i0, std::min(kChunk, n - i0));
  }
}

}  // namespace

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n, bool tanh_form) {
  if constexpr (std::is_same_v<T, double>) {
    ref::gelu_forward(x, y, n, tanh_form);
  } else {
    const cpu::Kernels& k = cpu::kernels();
    for_chunks(n, [&](int64_t i, int64_t m) { k.gelu_fwd(x + i, y + i, m, tanh_form); });
  }
}

template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, T* y, int64_t n, bool tanh_form) {
  if constexpr (std::is_same_v<T, double>) {
    ref::gelu_backward(x, dy, dx, y, n, tanh_form);
  } else {
    const cpu::Kernels& k = cpu::kernels();
    for_chunks(n, [&](int64_t i, int64_t m) {
      k.gelu_bwd(x + i, dy + i, dx + i, y ? y + i : nullptr, m, tanh_form);
    });
  }
}

template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) {
  if constexpr (std::is_same_v<T, double>) {
    ref::swiglu_forward(gate, up, y, n);
  } else {
    const cpu::Kernels& k = cpu::kernels();
    for_chunks(n, [&](int64_t i, int64_t m) { k.swiglu_fwd(gate + i, up + i, y + i, m); });
  }
}

template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, T* y, int64_t n) {
  if constexpr (std::is_same_v<T, double>) {
    ref::swiglu_backward(gate, up, dy, dgate, dup, y, n);
  } else {
    const cpu::Kernels& k = cpu::kernels();
    for_chunks(n, [&](int64_t i, int64_t m) {
      k.swiglu_bwd(gate + i, up + i, dy + i, dgate + i, dup + i, y ? y + i : nullptr, m);
    });
  }
}

#define MLKV_INSTANTIATE(T)                                                           \
  template void gelu_forward<T>(const T*, T*, int64_t, bool);                         \
  template void gelu_backward<T>(const T*, const T*, T*, T*, int64_t, bool);          \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t);                   \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t);
MLKV_INSTANTIATE(float)
MLKV_INSTANTIATE(double)
#undef MLKV_INSTANTIATE

}  // namespace mlkv::ops
