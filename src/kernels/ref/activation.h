// Reference GELU (exact and tanh form) and SwiGLU, forward and backward (kernels/ops.h).
#pragma once

#include <cmath>
#include <cstdint>

namespace mlkv::ref {

inline double gelu(double x, bool tanh_form) {
  if (tanh_form) {
    const double k = std::sqrt(2.0 / M_PI);
    return 0.5 * x * (1 + std::tanh(k * (x + 0.044715 * x * x * x)));
  }
  return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
}

inline double gelu_deriv(double x, bool tanh_form) {
  if (tanh_form) {
    const double k = std::sqrt(2.0 / M_PI);
    const double th = std::tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x);
  }
  const double cdf = 0.5 * (1 + std::erf(x / std::sqrt(2.0)));
  return cdf + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n, bool tanh_form) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(gelu(x[i], tanh_form));
}

// dx = dy gelu'(x) (dx may alias dy); y = gelu(x) when y is not null.
template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, T* y, int64_t n, bool tanh_form) {
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[i], d = dy[i];
    if (y) y[i] = static_cast<T>(gelu(xi, tanh_form));
    dx[i] = static_cast<T>(d * gelu_deriv(xi, tanh_form));
  }
}

// y = silu(gate) up
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    y[i] = static_cast<T>(g * sigmoid(g) * up[i]);
  }
}

// dgate = dy up silu'(gate) (may alias dy), dup = dy silu(gate), y = silu(gate) up when not null.
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i], u = up[i], d = dy[i], s = sigmoid(g);
    if (y) y[i] = static_cast<T>(g * s * u);
    dup[i] = static_cast<T>(d * g * s);
    dgate[i] = static_cast<T>(d * u * s * (1 + g * (1 - s)));
  }
}

}  // namespace mlkv::ref
