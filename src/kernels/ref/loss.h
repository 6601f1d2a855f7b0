// Reference log-softmax pieces: logsumexp, softmax rows, fused cross-entropy and the
// distillation KL term (kernels/ops.h).
#pragma once

#include <algorithm>
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

// row_kl[t] = KL(softmax(teacher[t] / temp) || softmax(student[t] / temp)); with grad, teacher[t]
// becomes scale (q - p) / temp, the gradient of scale KL w.r.t. the student's logits.
template <typename T>
double distill_kl_forward_backward(const T* student, T* teacher, int n, int V, T temp, T scale,
                                   bool grad, T* row_kl) {
  const double inv = 1.0 / static_cast<double>(temp);
  double total = 0;
  for (int t = 0; t < n; ++t) {
    const T* s = student + int64_t{t} * V;
    T* p = teacher + int64_t{t} * V;
    double ms = -INFINITY, mt = -INFINITY;
    for (int i = 0; i < V; ++i) {
      ms = std::max(ms, s[i] * inv);
      mt = std::max(mt, p[i] * inv);
    }
    double sum_s = 0, sum_t = 0;
    for (int i = 0; i < V; ++i) {
      sum_s += std::exp(s[i] * inv - ms);
      sum_t += std::exp(p[i] * inv - mt);
    }
    const double lse_s = ms + std::log(sum_s), lse_t = mt + std::log(sum_t);
    double kl = 0;
    for (int i = 0; i < V; ++i) {
      const double log_p = p[i] * inv - lse_t, log_q = s[i] * inv - lse_s;
      kl += std::exp(log_p) * (log_p - log_q);
    }
    row_kl[t] = static_cast<T>(kl);
    total += static_cast<double>(row_kl[t]);
    if (grad) {
      for (int i = 0; i < V; ++i) {
        const double q = std::exp(s[i] * inv - lse_s), pi = std::exp(p[i] * inv - lse_t);
        p[i] = static_cast<T>(static_cast<double>(scale) * (q - pi) * inv);
      }
    }
  }
  return total;
}

}  // namespace mlkv::ref
