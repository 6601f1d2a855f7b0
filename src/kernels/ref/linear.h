// Reference linear layer (kernels/ops.h: linear_forward / linear_backward).
#pragma once

#include <cstdint>

namespace mlkv::ref {

// y[n, N] (+)= x[n, K] w[N, K]^T + b[N]
template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, int n, int K, int N,
                    bool accumulate = false) {
  for (int t = 0; t < n; ++t) {
    for (int o = 0; o < N; ++o) {
      double acc = b ? static_cast<double>(b[o]) : 0.0;
      for (int k = 0; k < K; ++k) {
        acc += static_cast<double>(x[int64_t{t} * K + k]) * static_cast<double>(w[int64_t{o} * K + k]);
      }
      T& dst = y[int64_t{t} * N + o];
      dst = static_cast<T>(accumulate ? static_cast<double>(dst) + acc : acc);
    }
  }
}

// dx[n, K] (+)= dy w (dx may be null); dw[N, K] += dy^T x (may be null); db[N] += sum_t dy (may be
// null).
template <typename T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, int n, int K, int N,
                     bool accumulate_dx = true) {
  if (dx) {
    for (int t = 0; t < n; ++t) {
      for (int k = 0; k < K; ++k) {
        double acc = 0;
        for (int o = 0; o < N; ++o) {
          acc += static_cast<double>(dy[int64_t{t} * N + o]) * static_cast<double>(w[int64_t{o} * K + k]);
        }
        T& dst = dx[int64_t{t} * K + k];
        dst = static_cast<T>(accumulate_dx ? static_cast<double>(dst) + acc : acc);
      }
    }
  }
  if (dw) {
    for (int o = 0; o < N; ++o) {
      for (int k = 0; k < K; ++k) {
        double acc = 0;
        for (int t = 0; t < n; ++t) {
          acc += static_cast<double>(dy[int64_t{t} * N + o]) * static_cast<double>(x[int64_t{t} * K + k]);
        }
        dw[int64_t{o} * K + k] = static_cast<T>(static_cast<double>(dw[int64_t{o} * K + k]) + acc);
      }
    }
  }
  if (db) {
    for (int o = 0; o < N; ++o) {
      double acc = 0;
      for (int t = 0; t < n; ++t) acc += static_cast<double>(dy[int64_t{t} * N + o]);
      db[o] = static_cast<T>(static_cast<double>(db[o]) + acc);
    }
  }
}

}  // namespace mlkv::ref
