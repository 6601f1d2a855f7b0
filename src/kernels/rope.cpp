// Rotary position embedding, rotate-half layout (GPT-NeoX / HF Llama): within each head the
// first n_rot dims form pairs (i, i + n_rot/2) rotated by pos * theta^(-2i/n_rot).
// Tables are computed in double and rounded once, so long positions keep full f32 accuracy.
#include <cmath>

#include "core/check.h"
#include "kernels/ops.h"

namespace mlkv::ops {

std::vector<double> rope_inv_freq(int n_rot, double theta) {
  std::vector<double> f(static_cast<size_t>(n_rot / 2));
  for (int i = 0; i < n_rot / 2; ++i) f[static_cast<size_t>(i)] = std::pow(theta, -2.0 * i / n_rot);
  return f;
}

void RopeTable::build(int rot, int pos, const std::vector<double>& inv_freq) {
  MLKV_CHECK(static_cast<int>(inv_freq.size()) == rot / 2);
  n_rot = rot;
  n_pos = pos;
  const int half = rot / 2;
  cos.assign(static_cast<size_t>(pos) * half, 1.0f);
  sin.assign(static_cast<size_t>(pos) * half, 0.0f);
  for (int p = 0; p < pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double a = p * inv_freq[static_cast<size_t>(i)];
      cos[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(a));
      sin[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

void rope_apply(float* x, int T, int n_heads, int head_dim, const int* pos, const RopeTable& rt,
                bool inverse) {
  const int half = rt.n_rot / 2;
  if (half == 0) return;
  const float sign = inverse ? -1.0f : 1.0f;
  for (int t = 0; t < T; ++t) {
    MLKV_CHECK(pos[t] >= 0 && pos[t] < rt.n_pos);
    const float* c = rt.cos.data() + static_cast<size_t>(pos[t]) * half;
    const float* s = rt.sin.data() + static_cast<size_t>(pos[t]) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (int64_t{t} * n_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        const float si = sign * s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = b * c[i] + a * si;
      }
    }
  }
}

}  // namespace mlkv::ops
