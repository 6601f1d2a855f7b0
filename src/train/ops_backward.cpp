// Training kernels (ops_backward.h) except attention (ops_attention.cpp): GEMM adapter, linear,
// norms, activations, rotary, embedding, cross-entropy. Generic template code serves double; float
// adds AVX2 exp/erf where libm would dominate. Reductions across rows use column blocks summed
// row by row, so results never depend on the number of threads.
#include "train/ops_backward.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/check.h"
#include "train/vec_math.h"

namespace mlkv::train {

namespace {

constexpr int kColBlock = 64;  // columns per thread work item in column reductions
// Loops over fewer elements than this run on one thread: a parallel region costs microseconds
// (milliseconds on a loaded machine), more than the work.
constexpr int64_t kElemParallel = 32768;

template <typename T>
T sum_n(const T* x, int n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += x[i];
  return s;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// GEMM
// ------------------------------------------------------------------------------------------------

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                  const double* B, int ldb, double beta, double* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ------------------------------------------------------------------------------------------------
// linear
// ------------------------------------------------------------------------------------------------

template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, int n, int K, int N,
                    bool accumulate) {
  gemm<T>(false, true, n, N, K, T(1), x, K, w, K, accumulate ? T(1) : T(0), y, N);
  if (b == nullptr) return;
#pragma omp parallel for schedule(static) if (int64_t{n} * N > kElemParallel)
  for (int t = 0; t < n; ++t) {
    T* row = y + int64_t{t} * N;
#pragma omp simd
    for (int i = 0; i < N; ++i) row[i] += b[i];
  }
}

template <typename T>
void colsum_add(const T* dy, int n, int N, T* db) {
  const int n_blocks = (N + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (int64_t{n} * N > kElemParallel)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int i0 = blk * kColBlock, i1 = std::min(N, i0 + kColBlock);
    T acc[kColBlock] = {};
    for (int t = 0; t < n; ++t) {
      const T* row = dy + int64_t{t} * N;
#pragma omp simd
      for (int i = i0; i < i1; ++i) acc[i - i0] += row[i];
    }
    for (int i = i0; i < i1; ++i) db[i] += acc[i - i0];
  }
}

template <typename T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, int n, int K, int N,
                     bool accumulate_dx) {
  if (dx != nullptr)
    gemm<T>(false, false, n, K, N, T(1), dy, N, w, K, accumulate_dx ? T(1) : T(0), dx, K);
  if (dw != nullptr) gemm<T>(true, false, N, K, n, T(1), dy, N, x, K, T(1), dw, K);
  if (db != nullptr) colsum_add(dy, n, N, db);
}

// ------------------------------------------------------------------------------------------------
// norms
// ------------------------------------------------------------------------------------------------

template <typename T>
void layernorm_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int n, int E,
                       T eps) {
#pragma omp parallel for schedule(static) if (int64_t{n} * E > kElemParallel)
  for (int t = 0; t < n; ++t) {
    const T* r = x + int64_t{t} * E;
    T* o = y + int64_t{t} * E;
    const T m = sum_n(r, E) / T(E);
    T var = 0;
#pragma omp simd reduction(+ : var)
    for (int i = 0; i < E; ++i) var += (r[i] - m) * (r[i] - m);
    const T rs = T(1) / std::sqrt(var / T(E) + eps);
#pragma omp simd
    for (int i = 0; i < E; ++i) o[i] = (r[i] - m) * rs * w[i] + b[i];
    mean[t] = m;
    rstd[t] = rs;
  }
}

template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx,
                        T* dw, T* db, int n, int E) {
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w.
#pragma omp parallel for schedule(static) if (int64_t{n} * E > kElemParallel)
  for (int t = 0; t < n; ++t) {
    const T* g = dy + int64_t{t} * E;
    const T* r = x + int64_t{t} * E;
    T* d = dx + int64_t{t} * E;
    const T m = mean[t], rs = rstd[t];
    T sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
    for (int i = 0; i < E; ++i) {
      const T gi = g[i] * w[i];
      sg += gi;
      sgx += gi * (r[i] - m);
    }
    const T a = sg / T(E), c = sgx * rs / T(E);
#pragma omp simd
    for (int i = 0; i < E; ++i) {
      const T xhat = (r[i] - m) * rs;
      d[i] += rs * (g[i] * w[i] - a - xhat * c);
    }
  }
  const int n_blocks = (E + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (int64_t{n} * E > kElemParallel)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int i0 = blk * kColBlock, i1 = std::min(E, i0 + kColBlock);
    T aw[kColBlock] = {}, ab[kColBlock] = {};
    for (int t = 0; t < n; ++t) {
      const T* g = dy + int64_t{t} * E;
      const T* r = x + int64_t{t} * E;
      const T m = mean[t], rs = rstd[t];
#pragma omp simd
      for (int i = i0; i < i1; ++i) {
        aw[i - i0] += g[i] * (r[i] - m) * rs;
        ab[i - i0] += g[i];
      }
    }
    for (int i = i0; i < i1; ++i) {
      dw[i] += aw[i - i0];
      if (db != nullptr) db[i] += ab[i - i0];
    }
  }
}

template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int n, int E, T eps) {
#pragma omp parallel for schedule(static) if (int64_t{n} * E > kElemParallel)
  for (int t = 0; t < n; ++t) {
    const T* r = x + int64_t{t} * E;
    T* o = y + int64_t{t} * E;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < E; ++i) ss += r[i] * r[i];
    const T rs = T(1) / std::sqrt(ss / T(E) + eps);
#pragma omp simd
    for (int i = 0; i < E; ++i) o[i] = r[i] * rs * w[i];
    rstd[t] = rs;
  }
}

template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int n,
                      int E) {
  // dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * rstd.
#pragma omp parallel for schedule(static) if (int64_t{n} * E > kElemParallel)
  for (int t = 0; t < n; ++t) {
    const T* g = dy + int64_t{t} * E;
    const T* r = x + int64_t{t} * E;
    T* d = dx + int64_t{t} * E;
    const T rs = rstd[t];
    T sgx = 0;
#pragma omp simd reduction(+ : sgx)
    for (int i = 0; i < E; ++i) sgx += g[i] * w[i] * r[i];
    const T c = sgx * rs * rs / T(E);
#pragma omp simd
    for (int i = 0; i < E; ++i) d[i] += rs * (g[i] * w[i] - r[i] * c);
  }
  const int n_blocks = (E + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (int64_t{n} * E > kElemParallel)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int i0 = blk * kColBlock, i1 = std::min(E, i0 + kColBlock);
    T aw[kColBlock] = {};
    for (int t = 0; t < n; ++t) {
      const T* g = dy + int64_t{t} * E;
      const T* r = x + int64_t{t} * E;
      const T rs = rstd[t];
#pragma omp simd
      for (int i = i0; i < i1; ++i) aw[i - i0] += g[i] * r[i] * rs;
    }
    for (int i = i0; i < i1; ++i) dw[i] += aw[i - i0];
  }
}

// ------------------------------------------------------------------------------------------------
// activations
// ------------------------------------------------------------------------------------------------

namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kTanhK = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kTanhC = 0.044715;

// Scalar GELU and derivative in double (the reference formulas).
inline double gelu_ref(double x, bool tanh_approx, double* deriv) {
  if (tanh_approx) {
    const double u = kTanhK * (x + kTanhC * x * x * x);
    const double th = std::tanh(u);
    if (deriv)
      *deriv = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * kTanhK * (1 + 3 * kTanhC * x * x);
    return 0.5 * x * (1 + th);
  }
  const double cdf = 0.5 * (1 + std::erf(x * kInvSqrt2));
  if (deriv) *deriv = cdf + x * std::exp(-0.5 * x * x) * kInvSqrt2Pi;
  return x * cdf;
}

}  // namespace

template <typename T>
void gelu_forward(const T* x, T* y, int64_t n, bool tanh_approx) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t n8 = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      _mm256_storeu_ps(y + i, tanh_approx ? vec::gelu_tanh8(v, nullptr) : vec::gelu8(v, nullptr));
    }
    for (int64_t i = n8; i < n; ++i)
      y[i] = static_cast<float>(gelu_ref(x[i], tanh_approx, nullptr));
  } else {
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(gelu_ref(x[i], tanh_approx, nullptr));
  }
}

template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, T* y, int64_t n, bool tanh_approx) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t n8 = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      __m256 d;
      const __m256 g = tanh_approx ? vec::gelu_tanh8(v, &d) : vec::gelu8(v, &d);
      if (y != nullptr) _mm256_storeu_ps(y + i, g);
      _mm256_storeu_ps(dx + i, _mm256_mul_ps(d, _mm256_loadu_ps(dy + i)));
    }
    for (int64_t i = n8; i < n; ++i) {
      double d;
      const double g = gelu_ref(x[i], tanh_approx, &d);
      if (y != nullptr) y[i] = static_cast<float>(g);
      dx[i] = static_cast<float>(d * dy[i]);
    }
  } else {
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n; ++i) {
      double d;
      const double g = gelu_ref(x[i], tanh_approx, &d);
      if (y != nullptr) y[i] = static_cast<T>(g);
      dx[i] = static_cast<T>(d * dy[i]);
    }
  }
}

template <typename T>
void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t n8 = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 g = _mm256_loadu_ps(gate + i);
      _mm256_storeu_ps(y + i,
                       _mm256_mul_ps(_mm256_mul_ps(g, vec::sigmoid8(g)), _mm256_loadu_ps(up + i)));
    }
    for (int64_t i = n8; i < n; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  } else {
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n; ++i) y[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
  }
}

template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, T* y, int64_t n) {
  // silu(g) = g s, s = sigmoid(g); silu'(g) = s (1 + g (1 - s)).
  if constexpr (std::is_same_v<T, float>) {
    const int64_t n8 = n / 8 * 8;
    const __m256 one = _mm256_set1_ps(1.0f);
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);
      const __m256 d = _mm256_loadu_ps(dy + i);
      const __m256 s = vec::sigmoid8(g);
      const __m256 silu = _mm256_mul_ps(g, s);
      const __m256 dsilu = _mm256_mul_ps(s, _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
      if (y != nullptr) _mm256_storeu_ps(y + i, _mm256_mul_ps(silu, u));
      _mm256_storeu_ps(dup + i, _mm256_mul_ps(d, silu));
      _mm256_storeu_ps(dgate + i, _mm256_mul_ps(_mm256_mul_ps(d, u), dsilu));
    }
    for (int64_t i = n8; i < n; ++i) {
      const float g = gate[i], u = up[i], d = dy[i];
      const float s = 1.0f / (1.0f + std::exp(-g));
      if (y != nullptr) y[i] = g * s * u;
      dup[i] = d * g * s;
      dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
    }
  } else {
#pragma omp parallel for schedule(static) if (n > kElemParallel)
    for (int64_t i = 0; i < n; ++i) {
      const T g = gate[i], u = up[i], d = dy[i];
      const T s = T(1) / (T(1) + std::exp(-g));
      if (y != nullptr) y[i] = g * s * u;
      dup[i] = d * g * s;
      dgate[i] = d * u * s * (T(1) + g * (T(1) - s));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// rotary
// ------------------------------------------------------------------------------------------------

template <typename T>
void RopeTab<T>::build(int rot, int pos, const std::vector<double>& inv_freq) {
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
void rope_forward(T* x, int n, int n_heads, int head_dim, int ctx, const RopeTab<T>& tab,
                  bool inverse) {
  const int half = tab.n_rot / 2;
  if (half == 0) return;
  MLKV_CHECK(ctx <= tab.n_pos);
  const T sign = inverse ? T(-1) : T(1);
#pragma omp parallel for schedule(static) if (int64_t{n} * n_heads * half > kElemParallel)
  for (int t = 0; t < n; ++t) {
    const int pos = t % ctx;
    const T* c = tab.cos.data() + static_cast<size_t>(pos) * half;
    const T* s = tab.sin.data() + static_cast<size_t>(pos) * half;
    for (int h = 0; h < n_heads; ++h) {
      T* v = x + (int64_t{t} * n_heads + h) * head_dim;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const T a = v[i], b = v[i + half];
        const T si = sign * s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = b * c[i] + a * si;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// embedding, cross-entropy, helpers
// ------------------------------------------------------------------------------------------------

template <typename T>
void embedding_forward(const int32_t* tok, const T* table, T* x, int n, int E) {
#pragma omp parallel for schedule(static) if (int64_t{n} * E > kElemParallel)
  for (int t = 0; t < n; ++t) {
    std::memcpy(x + int64_t{t} * E, table + int64_t{tok[t]} * E,
                sizeof(T) * static_cast<size_t>(E));
  }
}

template <typename T>
void embedding_backward(const int32_t* tok, const T* dx, T* dtable, int n, int E) {
  for (int t = 0; t < n; ++t) add_inplace(dtable + int64_t{tok[t]} * E, dx + int64_t{t} * E, E);
}

template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int n, int V, T scale,
                                      bool grad, T* row_loss) {
#pragma omp parallel for schedule(static) if (int64_t{n} * V > kElemParallel)
  for (int t = 0; t < n; ++t) {
    T* row = logits + int64_t{t} * V;
    const int tgt = target[t];
    const T x_t = row[tgt];
    T mx, sum;
    if constexpr (std::is_same_v<T, float>) {
      mx = vec::max_n(row, V);
      sum = vec::exp_affine_sum(row, V, 1.0f, mx);  // row = exp(x - max)
    } else {
      mx = row[0];
      for (int i = 1; i < V; ++i) mx = std::max(mx, row[i]);
      sum = 0;
      for (int i = 0; i < V; ++i) {
        row[i] = std::exp(row[i] - mx);
        sum += row[i];
      }
    }
    row_loss[t] = mx + std::log(sum) - x_t;
    if (grad) {
      if constexpr (std::is_same_v<T, float>) {
        vec::scale_n(row, V, scale / sum);
      } else {
        const T f = scale / sum;
        for (int i = 0; i < V; ++i) row[i] *= f;
      }
      row[tgt] -= scale;
    }
  }
  double total = 0;
  for (int t = 0; t < n; ++t) total += static_cast<double>(row_loss[t]);
  return total;
}

template <typename T>
void add_inplace(T* y, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <typename T>
void zero(T* y, int64_t n) {
  std::memset(y, 0, sizeof(T) * static_cast<size_t>(n));
}

// ------------------------------------------------------------------------------------------------
// instantiations
// ------------------------------------------------------------------------------------------------

#define MLKV_INSTANTIATE(T)                                                                        \
  template void linear_forward<T>(const T*, const T*, const T*, T*, int, int, int, bool);          \
  template void linear_backward<T>(const T*, const T*, const T*, T*, T*, T*, int, int, int, bool); \
  template void colsum_add<T>(const T*, int, int, T*);                                             \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, int, int, T);       \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*,    \
                                      T*, int, int);                                               \
  template void rmsnorm_forward<T>(const T*, const T*, T*, T*, int, int, T);                       \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, T*, T*, int, int);     \
  template void gelu_forward<T>(const T*, T*, int64_t, bool);                                      \
  template void gelu_backward<T>(const T*, const T*, T*, T*, int64_t, bool);                       \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t);                                \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t);             \
  template struct RopeTab<T>;                                                                      \
  template void rope_forward<T>(T*, int, int, int, int, const RopeTab<T>&, bool);                  \
  template void embedding_forward<T>(const int32_t*, const T*, T*, int, int);                      \
  template void embedding_backward<T>(const int32_t*, const T*, T*, int, int);                     \
  template double cross_entropy_forward_backward<T>(T*, const int32_t*, int, int, T, bool, T*);    \
  template void add_inplace<T>(T*, const T*, int64_t);                                             \
  template void zero<T>(T*, int64_t);

MLKV_INSTANTIATE(float)
MLKV_INSTANTIATE(double)
#undef MLKV_INSTANTIATE

}  // namespace mlkv::train
