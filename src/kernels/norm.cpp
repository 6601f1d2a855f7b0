// LayerNorm and RMSNorm forward, one row per token, rows in parallel.
#include <cmath>

#include "kernels/ops.h"

namespace mlkv::ops {

void layernorm_forward(const float* x, const float* w, const float* b, float* y, int T, int E,
                       float eps, float* mean_out, float* rstd_out) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int t = 0; t < T; ++t) {
    const float* r = x + int64_t{t} * E;
    float* o = y + int64_t{t} * E;
    double sum = 0;
    for (int i = 0; i < E; ++i) sum += r[i];
    const float mean = static_cast<float>(sum / E);
    double var = 0;
    for (int i = 0; i < E; ++i) {
      const float d = r[i] - mean;
      var += static_cast<double>(d) * d;
    }
    const float rstd = static_cast<float>(1.0 / std::sqrt(var / E + eps));
    for (int i = 0; i < E; ++i) o[i] = (r[i] - mean) * rstd * w[i] + b[i];
    if (mean_out) mean_out[t] = mean;
    if (rstd_out) rstd_out[t] = rstd;
  }
}

void rmsnorm_forward(const float* x, const float* w, float* y, int T, int E, float eps,
                     float* rstd_out) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int t = 0; t < T; ++t) {
    const float* r = x + int64_t{t} * E;
    float* o = y + int64_t{t} * E;
    double ss = 0;
    for (int i = 0; i < E; ++i) ss += static_cast<double>(r[i]) * r[i];
    const float rstd = static_cast<float>(1.0 / std::sqrt(ss / E + eps));
    for (int i = 0; i < E; ++i) o[i] = r[i] * rstd * w[i];
    if (rstd_out) rstd_out[t] = rstd;
  }
}

}  // namespace mlkv::ops
