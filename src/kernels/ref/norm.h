// Reference LayerNorm and RMSNorm (kernels/ops.h).
#pragma once

#include <cmath>
#include <cstdint>

namespace mlkv::ref {

// y = (x - mean) rstd w + b per row of x[n, E]; mean/rstd [n] saved when not null.
template <typename T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int n, int E,
                       T eps) {
  for (int t = 0; t < n; ++t) {
    const T* r = x + int64_t{t} * E;
    double m = 0, v = 0;
    for (int i = 0; i < E; ++i) m += r[i];
    m /= E;
    for (int i = 0; i < E; ++i) v += (r[i] - m) * (r[i] - m);
    v /= E;
    const double rs = 1.0 / std::sqrt(v + static_cast<double>(eps));
    for (int i = 0; i < E; ++i) {
      y[int64_t{t} * E + i] = static_cast<T>((r[i] - m) * rs * w[i] + (b ? static_cast<double>(b[i]) : 0.0));
    }
    if (mean) mean[t] = static_cast<T>(m);
    if (rstd) rstd[t] = static_cast<T>(rs);
  }
}

// dx += rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat = (x - mean) rstd;
// dw += sum_t dy xhat; db += sum_t dy (db may be null).
template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                        T* dw, T* db, int n, int E) {
  for (int t = 0; t < n; ++t) {
    const T* g = dy + int64_t{t} * E;
    const T* r = x + int64_t{t} * E;
    const double m = mean[t], rs = rstd[t];
    double sg = 0, sgx = 0;
    for (int i = 0; i < E; ++i) {
      sg += static_cast<double>(g[i]) * w[i];
      sgx += static_cast<double>(g[i]) * w[i] * (r[i] - m) * rs;
    }
    for (int i = 0; i < E; ++i) {
      const double xhat = (r[i] - m) * rs;
      dx[int64_t{t} * E + i] = static_cast<T>(dx[int64_t{t} * E + i] +
                                              rs * (g[i] * static_cast<double>(w[i]) - sg / E - xhat * sgx / E));
    }
  }
  for (int i = 0; i < E; ++i) {
    double aw = 0, ab = 0;
    for (int t = 0; t < n; ++t) {
      const double g = dy[int64_t{t} * E + i];
      aw += g * (x[int64_t{t} * E + i] - static_cast<double>(mean[t])) * rstd[t];
      ab += g;
    }
    dw[i] = static_cast<T>(dw[i] + aw);
    if (db) db[i] = static_cast<T>(db[i] + ab);
  }
}

// y = x rstd w, rstd = 1 / sqrt(mean(x^2) + eps); rstd [n] saved when not null.
template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int n, int E, T eps) {
  for (int t = 0; t < n; ++t) {
    const T* r = x + int64_t{t} * E;
    double ss = 0;
    for (int i = 0; i < E; ++i) ss += static_cast<double>(r[i]) * r[i];
    const double rs = 1.0 / std::sqrt(ss / E + static_cast<double>(eps));
    for (int i = 0; i < E; ++i) y[int64_t{t} * E + i] = static_cast<T>(r[i] * rs * w[i]);
    if (rstd) rstd[t] = static_cast<T>(rs);
  }
}

// dx += rstd (g - xhat mean(g xhat)), g = dy w, xhat = x rstd; dw += sum_t dy xhat.
template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int n,
                      int E) {
  for (int t = 0; t < n; ++t) {
    const T* g = dy + int64_t{t} * E;
    const T* r = x + int64_t{t} * E;
    const double rs = rstd[t];
    double sgx = 0;
    for (int i = 0; i < E; ++i) sgx += static_cast<double>(g[i]) * w[i] * r[i] * rs;
    for (int i = 0; i < E; ++i) {
      dx[int64_t{t} * E + i] = static_cast<T>(dx[int64_t{t} * E + i] +
                                              rs * (g[i] * static_cast<double>(w[i]) - r[i] * rs * sgx / E));
    }
  }
  for (int i = 0; i < E; ++i) {
    double aw = 0;
    for (int t = 0; t < n; ++t) aw += static_cast<double>(dy[int64_t{t} * E + i]) * x[int64_t{t} * E + i] * rstd[t];
    dw[i] = static_cast<T>(dw[i] + aw);
  }
}

}  // namespace mlkv::ref
