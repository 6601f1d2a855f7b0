// Scalar reference kernels: the source of truth the optimised kernels are tested against.
// Written for clarity (double accumulation), never for speed.
#pragma once

#include <cmath>
#include <cstdint>

namespace mlkv::ref {

inline void matmul(const float* x, const float* w, const float* b, float* y, int T, int K, int N) {
  for (int t = 0; t < T; ++t) {
    for (int n = 0; n < N; ++n) {
      double acc = b ? b[n] : 0.0;
      for (int k = 0; k < K; ++k) acc += static_cast<double>(x[t * K + k]) * w[int64_t{n} * K + k];
      y[int64_t{t} * N + n] = static_cast<float>(acc);
    }
  }
}

inline void layernorm(const float* x, const float* w, const float* b, float* y, int T, int E,
                      float eps) {
  for (int t = 0; t < T; ++t) {
    const float* r = x + int64_t{t} * E;
    double mean = 0, var = 0;
    for (int i = 0; i < E; ++i) mean += r[i];
    mean /= E;
    for (int i = 0; i < E; ++i) var += (r[i] - mean) * (r[i] - mean);
    var /= E;
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (int i = 0; i < E; ++i) y[int64_t{t} * E + i] = static_cast<float>((r[i] - mean) * rstd * w[i] + b[i]);
  }
}

inline void rmsnorm(const float* x, const float* w, float* y, int T, int E, float eps) {
  for (int t = 0; t < T; ++t) {
    const float* r = x + int64_t{t} * E;
    double ss = 0;
    for (int i = 0; i < E; ++i) ss += static_cast<double>(r[i]) * r[i];
    const double rstd = 1.0 / std::sqrt(ss / E + eps);
    for (int i = 0; i < E; ++i) y[int64_t{t} * E + i] = static_cast<float>(r[i] * rstd * w[i]);
  }
}

inline float gelu(float x, bool tanh_approx) {
  const double v = x;
  if (tanh_approx) {
    const double k = std::sqrt(2.0 / M_PI);
    return static_cast<float>(0.5 * v * (1 + std::tanh(k * (v + 0.044715 * v * v * v))));
  }
  return static_cast<float>(0.5 * v * (1 + std::erf(v / std::sqrt(2.0))));
}

inline float silu(float x) { return static_cast<float>(x / (1 + std::exp(-static_cast<double>(x)))); }

}  // namespace mlkv::ref
