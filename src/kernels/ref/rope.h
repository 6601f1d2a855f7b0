// Reference rotary position embedding, rotate-half layout (kernels/ops.h: rope_forward).
#pragma once

#include <cstdint>

#include "kernels/types.h"

namespace mlkv::ref {

// Rotates the first n_rot dims of every head of x[n, n_heads, head_dim] in place: pairs
// (i, i + n_rot / 2) by angle pos[t] * inv_freq[i] (-angle when inverse, which is also the
// backward pass: a rotation's transpose is its inverse).
template <typename T>
void rope_forward(T* x, int n, int n_heads, int head_dim, const int32_t* pos,
                  const ops::RopeTable<T>& rt, bool inverse = false) {
  const int half = rt.n_rot / 2;
  const double sign = inverse ? -1.0 : 1.0;
  for (int t = 0; t < n; ++t) {
    const T* c = rt.cos.data() + int64_t{pos[t]} * half;
    const T* s = rt.sin.data() + int64_t{pos[t]} * half;
    for (int h = 0; h < n_heads; ++h) {
      T* v = x + (int64_t{t} * n_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double a = v[i], b = v[i + half], si = sign * s[i];
        v[i] = static_cast<T>(a * c[i] - b * si);
        v[i + half] = static_cast<T>(b * c[i] + a * si);
      }
    }
  }
}

}  // namespace mlkv::ref
