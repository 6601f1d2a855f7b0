// Softmax pieces, the fused cross-entropy of the output head and the distillation KL term on the
// CPU (kernels/ops.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

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

template <typename T>
double distill_kl_forward_backward(const T* student, T* teacher, int n, int V, T temp, T scale,
                                   bool grad, T* row_kl) {
  if constexpr (std::is_same_v<T, double>) {
    return ref::distill_kl_forward_backward(student, teacher, n, V, temp, scale, grad, row_kl);
  } else {
    const cpu::Kernels& k = cpu::kernels();
    const float inv = 1.0f / temp;
    const bool scaled = temp != 1.0f;  // (T = 1: the logits as they are, no rounding)
#pragma omp parallel if (int64_t{n} * V > 32768)
    {
      // One row of the student's scaled logits per thread, kept between calls.
      thread_local std::vector<float> scratch;
      if (scratch.size() < static_cast<size_t>(V)) scratch.resize(static_cast<size_t>(V));
      float* s = scratch.data();
#pragma omp for schedule(static)
      for (int t = 0; t < n; ++t) {
        const float* z = student + int64_t{t} * V;
        float* p = teacher + int64_t{t} * V;
        auto student_scaled = [&] {  // s = z / T
          std::memcpy(s, z, sizeof(float) * static_cast<size_t>(V));
          if (scaled) k.scale_n(s, V, inv);
        };
        if (scaled) k.scale_n(p, V, inv);  // p = teacher / T
        const float mt = k.max_n(p, V);
        student_scaled();
        const float ms = k.max_n(s, V);
        k.scale_n(s, V, -1.0f);  // s = teacher / T - student / T
        k.add_n(s, p, V);
        const float sum_t = k.exp_sub_sum(p, V, mt);  // p = e^(teacher / T - mt)
        // KL = E_p[teacher / T - student / T] - lse_p + lse_q.
        const double e_diff = static_cast<double>(k.dot_n(p, s, V)) / sum_t;
        student_scaled();
        const float sum_s = k.exp_sub_sum(s, V, ms);  // s = e^(student / T - ms)
        const double lse_t = mt + std::log(static_cast<double>(sum_t));
        const double lse_s = ms + std::log(static_cast<double>(sum_s));
        row_kl[t] = static_cast<float>(e_diff - lse_t + lse_s);
        if (grad) {  // p = scale (q - p) / T
          const float c = scale * inv;
          k.scale_n(p, V, -c / sum_t);
          k.scale_n(s, V, c / sum_s);
          k.add_n(p, s, V);
        }
      }
    }
    double total = 0;
    for (int t = 0; t < n; ++t) total += static_cast<double>(row_kl[t]);
    return total;
  }
}

template double cross_entropy_forward_backward<float>(float*, const int32_t*, int, int, float, bool,
                                                      float*);
template double cross_entropy_forward_backward<double>(double*, const int32_t*, int, int, double,
                                                       bool, double*);

template double distill_kl_forward_backward<float>(const float*, float*, int, int, float, float,
                                                   bool, float*);
template double distill_kl_forward_backward<double>(const double*, double*, int, int, double,
                                                    double, bool, double*);

}  // namespace mlkv::ops
