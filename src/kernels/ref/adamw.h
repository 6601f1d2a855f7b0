// Reference AdamW update (kernels/ops.h: adamw_update; formula in kernels/types.h AdamWStep).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/types.h"

namespace mlkv::ref {

template <typename T>
void adamw_update(T* p, T* g, T* m, T* v, int64_t n, const ops::AdamWStep& h, bool zero_grad) {
  for (int64_t i = 0; i < n; ++i) {
    const double gi = static_cast<double>(g[i]) * h.grad_scale;
    const double mi = h.beta1 * static_cast<double>(m[i]) + (1.0 - h.beta1) * gi;
    const double vi = h.beta2 * static_cast<double>(v[i]) + (1.0 - h.beta2) * gi * gi;
    const double denom = std::sqrt(vi * h.bias_corr2) + h.eps;
    p[i] = static_cast<T>(p[i] - h.lr * (mi * h.bias_corr1 / denom + h.weight_decay * static_cast<double>(p[i])));
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    if (zero_grad) g[i] = T(0);
  }
}

}  // namespace mlkv::ref
