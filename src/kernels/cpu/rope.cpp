// Rotary position embedding on the CPU (kernels/ops.h), and its tables (kernels/types.h).
#include <cmath>
#include <type_traits>

#include "core/check.h"
#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/rope.h"

namespace mlkv::ops {

std::vector<double> rope_inv_freq(int n_rot, double theta) {
  std::vector<double> f(static_cast<size_t>(n_rot / 2));
  for (int i = 0; i < n_rot / 2; ++i) f[static_cast<size_t>(i)] = std::pow(theta, -2.0 * i / n_rot);
  return f;
}

template <typename T>
void RopeTable<T>::build(int rot, int pos, const std::vector<double>& inv_freq) {
  MLKV_CHECK(static_cast<int>(inv_freq.size()) == rot / 2);
  n_rot = rot;
  n_pos = pos;
  const int half = rot / 2;
  cos.assign(static_cast<size_t>(pos) * half, T(1));
  sin.assign(static_cast<size_t>(pos) * half, T(0));
  for (int p = 0; p < pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double a = p * inv_freq[static_cast<size_t>(i)];
      cos[static_cast<size_t>(p) * half + i] = static_cast<T>(std::cos(a));
      sin[static_cast<size_t>(p) * half + i] = static_cast<T>(std::sin(a));
    }
  }
}

template <typename T>
void rope_forward(T* x, int n, int n_heads, int head_dim, const int32_t* pos,
                  const RopeTable<T>& rt, bool inverse) {
  const int half = rt.n_rot / 2;
  if (half == 0 || n <= 0) return;
  for (int t = 0; t < n; ++t) MLKV_CHECK(pos[t] >= 0 && pos[t] < rt.n_pos);
  if constexpr (std::is_same_v<T, double>) {
    ref::rope_forward(x, n, n_heads, head_dim, pos, rt, inverse);
  } else {
    const cpu::Kernels& k = cpu::kernels();
    const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (int64_t{n} * n_heads * half > 32768)
    for (int t = 0; t < n; ++t) {
      const float* c = rt.cos.data() + int64_t{pos[t]} * half;
      const float* s = rt.sin.data() + int64_t{pos[t]} * half;
      k.rope_row(x + int64_t{t} * n_heads * head_dim, n_heads, head_dim, c, s, half, sign);
    }
  }
}

template struct RopeTable<float>;
template struct RopeTable<double>;
template void rope_forward<float>(float*, int, int, int, const int32_t*, const RopeTable<float>&,
                                  bool);
template void rope_forward<double>(double*, int, int, int, const int32_t*,
                                   const RopeTable<double>&, bool);

}  // namespace mlkv::ops
