// Softmax pieces and the fused cross-entropy of the output head on the CPU (kernels/ops.h).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/loss.h"

namespace mlkv::ops {

float logsumexp(const float* x, int n) {
  // Used once per scored row (log p = x - logsumexp): libm exp and a double sum, for accuracy.
  float mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i] - mx));
  return mx + static_cast<float>(std::log(sum));
}

void softmax_rows(float* x, int rows, int n) {
  const cpu::Kernels& k = cpu::kernels();
  for (int r = 0; r < rows; ++r) {
    float* row = x + int64_t{r} * n;
    const float inv = 1.0f / k.exp_sub_sum(row, n, k.max_n(row, n));
    k.scale_n(row, n, inv);
  }
}

template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int n, int V, T scale,
                                      bool grad, T* row_loss) {
  if constexpr (std::is_same_v<T, double>) {
    return ref::cross_entropy_forward_backward(logits, target, n, V, scale, grad, row_loss);
  } else {
    const cpu::Kernels& k = cpu::kernels();
#pragma omp parallel for schedule(static) if (int64_t{n} * V > 32768)
    for (int t = 0; t < n; ++t) {
      float* row = logits + int64_t{t} * V;
      const int tgt = target[t];
      const float x_t = row[tgt];
      const float mx = k.max_n(row, V);
      const float sum = k.exp_sub_sum(row, V, mx);  // row = exp(x - max)
      row_loss[t] = mx + std::log(sum) - x_t;
      if (grad) {
        k.scale_n(row, V, scale / sum);
        row[tgt] -= scale;
      }
    }
    double total = 0;
    for (int t = 0; t < n; ++t) total += static_cast<double>(row_loss[t]);
    return total;
  }
}

template double cross_entropy_forward_backward<float>(float*, const int32_t*, int, int, float, bool,
                                                      float*);
template double cross_entropy_forward_backward<double>(double*, const int32_t*, int, int, double,
                                                       bool, double*);

}  // namespace mlkv::ops
