// Optimised kernels against the scalar references in kernels/ref.h. Tolerances follow the
// maths: a dot product of length K in f32 errs by about K * eps * sum|x*w|.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/half.h"
#include "kernels/ops.h"
#include "kernels/ref.h"

namespace mlkv {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(Matmul, MatchesReferenceAcrossPaths) {
  // T <= 32 takes the streaming GEMV (tiles of 4 and 2 token rows, single rows), larger T OpenBLAS;
  // odd K and N exercise the tails.
  for (int T : {1, 2, 3, 5, 8, 9, 15, 32, 33, 40}) {
    for (auto [K, N] : {std::pair{37, 13}, std::pair{64, 96}, std::pair{250, 7}}) {
      const auto x = randn(size_t(T) * K, 1 + T), w = randn(size_t(N) * K, 2 + K),
                 b = randn(size_t(N), 3);
      std::vector<float> y(size_t(T) * N), r(size_t(T) * N);
      ops::matmul(x.data(), w.data(), b.data(), y.data(), T, K, N);
      ref::matmul(x.data(), w.data(), b.data(), r.data(), T, K, N);
      const double tol =
          4.0 * K * 1.2e-7 * 3.0 * std::sqrt(double(K));  // |sum| bound ~ sqrt(K) * 3 sigma
      for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], r[i], tol) << "T=" << T << " K=" << K;
      // accumulate adds on top
      std::vector<float> acc(y.size(), 1.0f);
      ops::matmul(x.data(), w.data(), nullptr, acc.data(), T, K, N, true);
      for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(acc[i], 1.0f + r[i] - b[i % N], tol);
    }
  }
}

TEST(Matmul, F16WeightsMatchReferenceOnRoundedWeights) {
  for (int T : {1, 2, 5, 8, 9, 19, 32, 40}) {
    for (auto [K, N] : {std::pair{37, 13}, std::pair{64, 200}, std::pair{250, 7}}) {
      const auto x = randn(size_t(T) * K, 1 + T), w = randn(size_t(N) * K, 2 + K),
                 b = randn(size_t(N), 3);
      std::vector<uint16_t> wh(w.size());
      f32_to_f16_n(w.data(), wh.data(), w.size());
      std::vector<float> wr(w.size());
      f16_to_f32_n(wh.data(), wr.data(), w.size());
      std::vector<float> y(size_t(T) * N), r(size_t(T) * N);
      ops::matmul_f16(x.data(), wh.data(), b.data(), y.data(), T, K, N);
      ref::matmul(x.data(), wr.data(), b.data(), r.data(), T, K, N);
      const double tol = 4.0 * K * 1.2e-7 * 3.0 * std::sqrt(double(K));
      for (size_t i = 0; i < y.size(); ++i)
        ASSERT_NEAR(y[i], r[i], tol) << "T=" << T << " K=" << K << " i=" << i;
    }
  }
}

TEST(Norms, MatchReference) {
  const int T = 7, E = 45;
  const auto x = randn(size_t(T) * E, 4, 3.0f), w = randn(E, 5), b = randn(E, 6);
  std::vector<float> y(x.size()), r(x.size());
  ops::layernorm_forward(x.data(), w.data(), b.data(), y.data(), T, E, 1e-5f);
  ref::layernorm(x.data(), w.data(), b.data(), r.data(), T, E, 1e-5f);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], r[i], 1e-5);
  ops::rmsnorm_forward(x.data(), w.data(), y.data(), T, E, 1e-6f);
  ref::rmsnorm(x.data(), w.data(), r.data(), T, E, 1e-6f);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], r[i], 1e-5);
}

TEST(Activations, MatchReference) {
  const auto x = randn(1000, 7, 3.0f), g = randn(1000, 8, 2.0f);
  std::vector<float> y(x.size());
  for (bool tanh_approx : {false, true}) {
    ops::gelu_forward(x.data(), y.data(), int64_t(x.size()), tanh_approx);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], ref::gelu(x[i], tanh_approx), 1e-6);
  }
  ops::swiglu_forward(g.data(), x.data(), y.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], ref::silu(g[i]) * x[i], 1e-5);
}

TEST(Rope, RotatesHalvesAndInverts) {
  ops::RopeTable rt;
  rt.build(8, 64, ops::rope_inv_freq(8, 10000.0));
  const int d = 12, H = 2;  // partial rotary: 8 of 12 dims
  auto x = randn(size_t(3) * H * d, 9);
  const auto orig = x;
  const int pos[3] = {0, 5, 63};
  ops::rope_apply(x.data(), 3, H, d, pos, rt);
  // Position 0 is the identity; dims past n_rot are untouched.
  for (int i = 0; i < H * d; ++i) EXPECT_FLOAT_EQ(x[i], orig[i]);
  for (int t = 1; t < 3; ++t) {
    for (int h = 0; h < H; ++h) {
      const float* a = orig.data() + (t * H + h) * d;
      const float* b = x.data() + (t * H + h) * d;
      for (int i = 8; i < d; ++i) EXPECT_EQ(a[i], b[i]);
      for (int i = 0; i < 4; ++i) {  // pair (i, i+4), angle pos * 10000^(-2i/8)
        const double ang = pos[t] * std::pow(10000.0, -2.0 * i / 8);
        EXPECT_NEAR(b[i], a[i] * std::cos(ang) - a[i + 4] * std::sin(ang), 1e-5);
        EXPECT_NEAR(b[i + 4], a[i + 4] * std::cos(ang) + a[i] * std::sin(ang), 1e-5);
      }
    }
  }
  ops::rope_apply(x.data(), 3, H, d, pos, rt, /*inverse=*/true);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], orig[i], 1e-5);
}

// Decode attention of a group of query rows sharing one KV head, against softmax(q K^T) V in
// double: head sizes on and off the 8-wide path, lengths across the 8-key and value blocks, groups
// wider than kMaxGroup, f32 and f16 caches.
TEST(Attend, SharedKvMatchesReference) {
  for (int d : {64, 128, 20, 8}) {
    for (int len : {1, 7, 8, 300, 530}) {
      for (int n_q : {1, 3, 12, 70}) {
        const int ldq = n_q * d + 5, ldo = n_q * d + 3;  // strides wider than the rows
        auto qrows = randn(size_t(n_q) * ldq, 2 + len, 1.0f);
        const auto K = randn(size_t(len) * d, 3 + n_q, 1.0f),
                   V = randn(size_t(len) * d, 4 + d, 1.0f);
        std::vector<uint16_t> Kh(K.size()), Vh(V.size());
        f32_to_f16_n(K.data(), Kh.data(), K.size());
        f32_to_f16_n(V.data(), Vh.data(), V.size());
        const float scale = 1.0f / std::sqrt(float(d));
        std::vector<float> out(size_t(n_q) * ldo, -7.0f), outh(out), scratch(size_t(n_q) * len);
        ops::attend_shared_kv(qrows.data(), n_q, ldq, K.data(), V.data(), len, d, scale, out.data(),
                              ldo, scratch.data());
        ops::attend_shared_kv_f16(qrows.data(), n_q, ldq, Kh.data(), Vh.data(), len, d, scale,
                                  outh.data(), ldo, scratch.data());
        for (int half = 0; half < 2; ++half) {
          double worst = 0;
          for (int r = 0; r < n_q; ++r) {
            const float* qr = qrows.data() + size_t(r) * ldq;
            std::vector<double> p(static_cast<size_t>(len));
            double mx = -1e300, sum = 0;
            for (int j = 0; j < len; ++j) {
              double acc = 0;
              for (int i = 0; i < d; ++i) {
                const float k = half ? f16_to_f32(Kh[size_t(j) * d + i]) : K[size_t(j) * d + i];
                acc += double(qr[i]) * k;
              }
              p[size_t(j)] = acc * scale;
              mx = std::max(mx, p[size_t(j)]);
            }
            for (auto& v : p) sum += (v = std::exp(v - mx));
            for (int i = 0; i < d; ++i) {
              double o = 0;
              for (int j = 0; j < len; ++j) {
                const float v = half ? f16_to_f32(Vh[size_t(j) * d + i]) : V[size_t(j) * d + i];
                o += p[size_t(j)] / sum * v;
              }
              const float got = (half ? outh : out)[size_t(r) * ldo + i];
              worst = std::max(worst, std::fabs(got - o));
            }
            // Padding between rows untouched.
            for (int i = d; i < ldo && r + 1 < n_q; ++i)
              EXPECT_EQ((half ? outh : out)[size_t(r) * ldo + i], -7.0f);
          }
          EXPECT_LT(worst, 2e-5) << "d " << d << " len " << len << " n_q " << n_q << " f16 "
                                 << half;
        }
      }
    }
  }
}

TEST(Vec, DotAxpyF16) {
  const auto a = randn(77, 10), b = randn(77, 11);
  std::vector<uint16_t> bh(b.size());
  f32_to_f16_n(b.data(), bh.data(), b.size());
  double ref = 0, refh = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ref += double(a[i]) * b[i];
    refh += double(a[i]) * f16_to_f32(bh[i]);
  }
  EXPECT_NEAR(ops::dot(a.data(), b.data(), 77), ref, 1e-4);
  EXPECT_NEAR(ops::dot_f16(a.data(), bh.data(), 77), refh, 1e-4);
  std::vector<float> y(77, 1.0f), yh(77, 1.0f);
  ops::axpy(0.5f, b.data(), y.data(), 77);
  ops::axpy_f16(0.5f, bh.data(), yh.data(), 77);
  for (size_t i = 0; i < 77; ++i) {
    EXPECT_FLOAT_EQ(y[i], 1.0f + 0.5f * b[i]);
    EXPECT_FLOAT_EQ(yh[i], 1.0f + 0.5f * f16_to_f32(bh[i]));
  }
  std::vector<float> row = {1.0f, 2.0f, 3.0f};
  EXPECT_NEAR(ops::logsumexp(row.data(), 3),
              std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), 1e-6);
}

}  // namespace
}  // namespace mlkv

namespace mlkv {
namespace {

// The vectorised exp / erf inside softmax, SwiGLU and GELU against libm over wide ranges.
TEST(VecMath, ExpAndErfAccuracy) {
  std::vector<float> x;
  for (float v = -100.0f; v <= 100.0f; v += 0.0137f) x.push_back(v);
  std::vector<float> e(x);
  ops::exp_sub_sum(e.data(), static_cast<int>(e.size()), 0.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp(static_cast<double>(x[i]));
    if (want > 3e38) {
      EXPECT_TRUE(std::isinf(e[i]) || e[i] > 3e38f) << x[i];
    } else if (want < 1.18e-38) {  // below FLT_MIN: flushed to zero
      EXPECT_LE(e[i], 2e-38f) << x[i];
    } else {
      EXPECT_NEAR(e[i] / want, 1.0, 4e-7) << x[i];
    }
  }
  std::vector<float> g(x.size());
  std::vector<float> xs(x.size());
  for (size_t i = 0; i < x.size(); ++i) xs[i] = x[i] * 0.08f;  // [-8, 8]
  ops::gelu_forward(xs.data(), g.data(), static_cast<int64_t>(xs.size()), false);
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_NEAR(g[i], ref::gelu(xs[i], false), 2e-7 * std::max(1.0f, std::fabs(xs[i]))) << xs[i];
  }
  std::vector<float> up(xs.size(), 1.5f), s(xs.size());
  ops::swiglu_forward(xs.data(), up.data(), s.data(), static_cast<int64_t>(xs.size()));
  for (size_t i = 0; i < xs.size(); ++i)
    EXPECT_NEAR(s[i], ref::silu(xs[i]) * 1.5f, 1e-6 * std::max(1.0f, std::fabs(xs[i])));
}

}  // namespace
}  // namespace mlkv
