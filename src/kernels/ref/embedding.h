// Reference token embedding (kernels/ops.h).
#pragma once

#include <cstdint>

namespace mlkv::ref {

// x[t] = table[tok[t]] for rows of E values.
template <typename T>
void embedding_forward(const int32_t* tok, const T* table, T* x, int n, int E) {
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < E; ++i) x[int64_t{t} * E + i] = table[int64_t{tok[t]} * E + i];
  }
}

// dtable[tok[t]] += dx[t], rows in order.
template <typename T>
void embedding_backward(const int32_t* tok, const T* dx, T* dtable, int n, int E) {
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < E; ++i) dtable[int64_t{tok[t]} * E + i] += dx[int64_t{t} * E + i];
  }
}

}  // namespace mlkv::ref
