// Reference log-softmax pieces: logsumexp, softmax rows, fused cross-entropy (kernels/ops.h).
#pragma once

#include <cmath>
#include <cstdint>

namespace mlkv::ref {

template <typename T>
double logsumexp(const T* x, int n) {
  double mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = x[i] > mx ? static_cast<double>(x[i]) : mx;
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(x[i] - mx);
  return mx + std::log(s);
}

// In-place softmax of each row of x[rows, n].
template <typename T>
void softmax_rows(T* x, int rows, int n) {
  for (int r = 0; r < rows; ++r) {
    T* row = x + int64_t{r} * n;
    const double lse = logsumexp(row, n);
    for (int i = 0; i < n; ++i) row[i] = static_cast<T>(std::exp(row[i] - lse));
  }
}

// row_loss[t] = logsumexp(logits[t]) - logits[t, target[t]]; with grad, logits[t] becomes
// scale (softmax - onehot(target)). Returns the sum of the row losses.
template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int n, int V, T scale,
                                      bool grad, T* row_loss) {
  double total = 0;
  for (int t = 0; t < n; ++t) {
    T* row = logits + int64_t{t} * V;
    const double lse = logsumexp(row, V);
    const double loss = lse - row[target[t]];
    row_loss[t] = static_cast<T>(loss);
    total += static_cast<double>(row_loss[t]);
    if (grad) {
      for (int i = 0; i < V; ++i) {
        row[i] = static_cast<T>(static_cast<double>(scale) * (std::exp(row[i] - lse) - (i == target[t] ? 1.0 : 0.0)));
      }
    }
  }
  return total;
}

}  // namespace mlkv::ref
