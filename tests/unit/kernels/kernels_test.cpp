// Every float op of kernels/ops.h on every instruction-set path (scalar, AVX2, AVX-512; forced
// with cpu::set_isa, the MLKV_ISA switch) against the scalar reference (kernels/ref/), forward and
// backward. A path the CPU cannot run is reported as skipped, never as passed.
//
// Tolerances follow the arithmetic, as llama.cpp's test-backend-ops and CTranslate2's per-device
// tests do: a sum of n products in f32 errs by at most n * eps * sum |terms| (eps = 2^-24, the unit
// roundoff; the worst case, used for short sums), and with overwhelming probability by
// 4 sqrt(n) * eps * sum |terms| when the rounding errors are independent (Higham & Mary 2019's
// probabilistic bound; used for the long sums of attention and backward passes, where the worst
// case is a thousand times looser than what happens). Element-wise approximations (exp, erf,
// sigmoid) err by their stated error times the size of what they feed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/half.h"
#include "core/quant.h"
#include "core/tensor.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/ref.h"

namespace mlkv::ops::cpu {
// gtest prints a path by its name (test names, ctest listings).
void PrintTo(Isa isa, std::ostream* os) { *os << isa_name(isa); }
}  // namespace mlkv::ops::cpu

namespace mlkv::ops {
namespace {

using cpu::Isa;

constexpr double kEps = 5.96e-8;  // f32 unit roundoff, 2^-24

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Probabilistic bound on a sum of n terms whose absolute values add up to sum_abs.
double prob_bound(double n, double sum_abs) { return 4.0 * std::sqrt(n) * kEps * sum_abs; }

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(double(x)));
  return m;
}

// Expects |got[i] - want[i]| <= tol(i) for every i, and reports the worst ratio.
template <typename Tol>
void expect_close(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                  Tol tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(want[i]));
    const double t = tol(i);
    if (!(err <= t) || !std::isfinite(got[i])) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i]
                    << " (tolerance " << t << ")";
      return;
    }
    if (t > 0 && err / t > worst) {
      worst = err / t;
      at = i;
    }
  }
  (void)at;
  std::printf("  [%s] %-34s worst error %.2g of its bound\n",
              cpu::isa_name(cpu::active_isa()), what, worst);
}

class Kernels : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu::cpu_supports(GetParam())) {
      GTEST_SKIP() << "this CPU cannot run the " << cpu::isa_name(GetParam())
                   << " kernels: not tested here";
    }
    cpu::set_isa(GetParam());
  }
  void TearDown() override { cpu::set_isa(cpu::best_isa()); }
};

// A linear layer's outputs against the f64 reference: got = x w^T + b and acc = 1 + x w^T (acc
// started at 1 and accumulated into), where x is what the layer multiplied and wu the f32 values
// its weights hold. |error| <= 2 K eps sum_k |x_k w_k| (+ the bias or accumulator it is added to).
void expect_linear(const std::string& tag, const std::vector<float>& x, const std::vector<float>& wu,
                   const std::vector<float>& b, int T, int K, int N, const std::vector<float>& got,
                   const std::vector<float>& acc) {
  std::vector<float> want(size_t(T) * N), want_acc(size_t(T) * N, 1.0f);
  ref::linear_forward(x.data(), wu.data(), b.data(), want.data(), T, K, N);
  ref::linear_forward(x.data(), wu.data(), (const float*)nullptr, want_acc.data(), T, K, N, true);
  auto tol = [&](const std::vector<float>& base, size_t i, bool bias) {
    const int t = int(i) / N, o = int(i) % N;
    double s = 0;
    for (int k = 0; k < K; ++k) s += std::fabs(double(x[size_t(t) * K + k]) * wu[size_t(o) * K + k]);
    return 2.0 * K * kEps * s + 2 * kEps * std::fabs(bias ? b[size_t(o)] : base[i]);
  };
  expect_close(tag.c_str(), got, want, [&](size_t i) { return tol(want, i, true); });
  expect_close((tag + " +=").c_str(), acc, want_acc, [&](size_t i) { return tol(want_acc, i, false) + 2 * kEps; });
}

// y = x w^T + b: T <= 32 takes the streaming GEMV (tiles of 4, 2 and 1 token rows, blocks of 4
// weight rows and a partial last block; more than one tile goes in slices of 128 columns, the last
// one partial for K = 250 and 160), larger T sgemm (low-precision weights widened block by block);
// odd K exercise the column tails. Low-precision weights are checked against the f32
// reference over the same stored values widened (exact in f32: f16 and bf16 are subsets of f32,
// and a q8_0 value d q has at most 11 + 7 significant bits), so every format meets the f32 bound.
// q8_0 weights multiply the activations as quantize_query_q8 rounds them (integer block products
// for T <= kMaxGemvIntRows, the f32 paths over the rounded rows beyond): the reference takes the
// rounded x. Weights in panels of 16 rows (F32_P16, F16_P16, BF16_P16) take one kernel for every T.
TEST_P(Kernels, LinearForwardEveryWeightFormat) {
  const std::vector<std::pair<int, int>> shapes = {{37, 13}, {64, 96}, {250, 7}, {33, 200}};
  const std::vector<std::pair<int, int>> q8_shapes = {{32, 13}, {64, 96}, {256, 7}, {96, 201}, {160, 9}};
  // Panels of 16 rows: no full panel (N 13), panels and row-major tail rows, chunks of 256
  // columns with a partial last one (K 600), groups of 4 and 2 panels and single ones.
  const std::vector<std::pair<int, int>> panel_shapes = {{37, 13}, {64, 96}, {250, 7}, {33, 200}, {600, 50}, {40, 112}};
  for (int T : {1, 2, 3, 4, 5, 8, 9, 13, 14, 15, 16, 17, 28, 32, 33, 40}) {
    for (DType wt : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kF32P16,
                     DType::kF16P16, DType::kBF16P16}) {
      for (auto [K, N] : wt == DType::kQ8_0 ? q8_shapes : dtype_is_panels(wt) ? panel_shapes : shapes) {
        auto x = randn(size_t(T) * K, 1 + T);
        const auto w = randn(size_t(N) * K, 2 + K), b = randn(size_t(N), 3);
        std::vector<float> x_in = x;  // what the layer is given; x: what it multiplies
        if (wt == DType::kQ8_0) {
          std::vector<int8_t> q(x.size());
          std::vector<float> d(x.size() / 32);
          quantize_query_q8(x.data(), q.data(), d.data(), int64_t(x.size()));
          for (size_t i = 0; i < x.size(); ++i) x[i] = d[i / 32] * q[i];  // one f32 rounding: in the bound
        }
        // The stored weights and the f32 values they hold.
        const Tensor wf = [&] {
          Tensor t({N, K});
          std::copy(w.begin(), w.end(), t.data());
          return t;
        }();
        const Tensor stored = wt == DType::kF32 ? wf : wf.to(wt);
        const Tensor widened = stored.to(DType::kF32);
        const std::vector<float> wu(widened.data(), widened.data() + widened.numel());
        std::vector<float> got(size_t(T) * N, 0.0f), acc(size_t(T) * N, 1.0f);
        if (wt == DType::kF32) {
          linear_forward<float>(x.data(), w.data(), b.data(), got.data(), T, K, N);
          linear_forward<float>(x.data(), w.data(), nullptr, acc.data(), T, K, N, true);
        } else {
          linear_forward_lowp(x_in.data(), stored.raw(), wt, b.data(), got.data(), T, K, N);
          linear_forward_lowp(x_in.data(), stored.raw(), wt, nullptr, acc.data(), T, K, N, true);
        }
        expect_linear("linear T=" + std::to_string(T) + " K=" + std::to_string(K) + " " + dtype_name(wt),
                      x, wu, b, T, K, N, got, acc);
      }
    }
  }
}

// Many token rows against weights in panels: x [400, 2048] (3.2 MB) exceeds three quarters of any
// L2 cache, so gemv_panels takes the token rows in blocks (a partial last one) and re-reads the
// panels per block; the result is the reference's within the f32 bound, written and accumulated.
TEST_P(Kernels, LinearForwardPanelsInRowBlocks) {
  const int T = 400, K = 2048, N = 40;  // 2 panels and 8 row-major tail rows
  const auto x = randn(size_t(T) * K, 31), w = randn(size_t(N) * K, 32), b = randn(size_t(N), 33);
  for (DType wt : {DType::kF32P16, DType::kBF16P16}) {
    Tensor wf({N, K});
    std::copy(w.begin(), w.end(), wf.data());
    const Tensor stored = wf.to(wt), widened = stored.to(DType::kF32);
    const std::vector<float> wu(widened.data(), widened.data() + widened.numel());
    std::vector<float> got(size_t(T) * N), acc(got.size(), 1.0f);
    linear_forward_lowp(x.data(), stored.raw(), wt, b.data(), got.data(), T, K, N);
    linear_forward_lowp(x.data(), stored.raw(), wt, nullptr, acc.data(), T, K, N, true);
    expect_linear(std::string("linear T=400 K=2048 ") + dtype_name(wt), x, wu, b, T, K, N, got, acc);
  }
}

// The kernels' activation quantizer is quantize_query_q8 bit for bit (the scales' bits and every
// int8): random blocks over 24 binades, values that land exactly halfway between two steps
// (rounded away from zero, as std::lround), all-zero blocks, blocks so small that 1 / d
// overflows (q = 0), and blocks holding a NaN or an infinity (d = NaN, q = 0).
TEST_P(Kernels, QuantizeQ8MatchesDefinition) {
  std::vector<float> x;
  std::mt19937 g(7);
  std::normal_distribution<float> nd;
  for (int b = 0; b < 200; ++b) {
    const float scale = std::ldexp(1.0f, b % 24 - 12);
    for (int i = 0; i < 32; ++i) x.push_back(nd(g) * scale);
  }
  // Halves: the largest value 127 makes d = 1 and id = 1, so x / d is x itself: 0.5, -0.5, 1.5,
  // -1.5, ..., 15.5, -15.5, then 2.5 + 2^-20 (just above a half).
  x.push_back(127.0f);
  for (int i = 0; i < 30; ++i) x.push_back((i % 2 ? -1.0f : 1.0f) * (0.5f + float(i / 2)));
  x.push_back(2.5f + std::ldexp(1.0f, -20));
  for (int i = 0; i < 32; ++i) x.push_back(0.0f);
  for (int i = 0; i < 32; ++i) x.push_back(i % 2 ? 1e-44f : -3e-45f);  // d subnormal: 1 / d = inf
  for (int i = 0; i < 32; ++i) x.push_back(i == 5 ? 3.0e38f : -1.0f);  // the largest finite values
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    for (int i = 0; i < 32; ++i) x.push_back(i == 17 ? bad : 1.0f);
  }
  const int64_t n = int64_t(x.size());
  std::vector<int8_t> qr(x.size()), qk(x.size(), 99);
  std::vector<float> dr(x.size() / 32), dk(x.size() / 32, -1.0f);
  quantize_query_q8(x.data(), qr.data(), dr.data(), n);
  cpu::kernels().quantize_q8(x.data(), qk.data(), dk.data(), n);
  for (size_t b = 0; b < dr.size(); ++b) {
    const bool both_nan = std::isnan(dr[b]) && std::isnan(dk[b]);
    EXPECT_TRUE(both_nan || std::memcmp(&dr[b], &dk[b], 4) == 0) << "block " << b << ": d " << dk[b] << " vs " << dr[b];
    for (int i = 0; i < 32; ++i) {
      ASSERT_EQ(int(qk[b * 32 + i]), int(qr[b * 32 + i])) << "block " << b << " value " << i << " x " << x[b * 32 + i];
    }
  }
  // The halves went away from zero (the rule, not the SIMD unit's ties-to-even).
  const int8_t* halves = qk.data() + 200 * 32;
  EXPECT_EQ(int(halves[1]), 1);    // 0.5
  EXPECT_EQ(int(halves[2]), -1);   // -0.5
  EXPECT_EQ(int(halves[5]), 3);    // 2.5
  EXPECT_EQ(int(halves[6]), -3);   // -2.5
  EXPECT_EQ(int(halves[31]), 3);   // 2.5 + 2^-20
}

// The formats the CPU linear layer does not take, and q8_0 rows that are not whole blocks, are
// refused with the reason rather than read out of bounds.
TEST(KernelsLowp, RefusesOtherFormatsAndPartialBlocks) {
  std::vector<float> x(64, 1.0f), y(4);
  Tensor w({4, 64}, DType::kQ4_0);
  EXPECT_THROW(linear_forward_lowp(x.data(), w.raw(), DType::kQ4_0, nullptr, y.data(), 1, 64, 4),
               Error);
  Tensor q({4, 32}, DType::kQ8_0);
  try {
    linear_forward_lowp(x.data(), q.raw(), DType::kQ8_0, nullptr, y.data(), 1, 48, 4);
    ADD_FAILURE() << "a q8_0 row of 48 values was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
}

TEST_P(Kernels, LinearBackward) {
  const int n = 37, K = 29, N = 41;
  const auto x = randn(size_t(n) * K, 1), w = randn(size_t(N) * K, 2), dy = randn(size_t(n) * N, 3);
  std::vector<float> dx(size_t(n) * K, 0.5f), dw(size_t(N) * K, -1.0f), db(size_t(N), 2.0f);
  auto rdx = dx, rdw = dw, rdb = db;
  linear_backward<float>(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), n, K, N);
  ref::linear_backward(dy.data(), x.data(), w.data(), rdx.data(), rdw.data(), rdb.data(), n, K, N);
  // Sums of N (dx), n (dw, db) products of unit-normal values: sum |terms| <= terms * ~1.
  // Sums of N (dx) and n (dw, db) products of unit normals (sum |terms| <= ~terms) onto a value
  // of size ~2.
  expect_close("linear backward dx", dx, rdx, [&](size_t) { return prob_bound(N, N) + 4 * kEps; });
  expect_close("linear backward dw", dw, rdw, [&](size_t) { return prob_bound(n, n) + 4 * kEps; });
  expect_close("linear backward db", db, rdb, [&](size_t) { return prob_bound(n, n) + 4 * kEps; });
}

TEST_P(Kernels, NormsForwardAndBackward) {
  for (int E : {45, 64, 70, 768}) {
    const int n = 9;
    auto x = randn(size_t(n) * E, 4, 3.0f);
    for (auto& v : x) v += 0.7f;  // non-zero mean
    const auto w = randn(E, 5), b = randn(E, 6), dy = randn(size_t(n) * E, 7);
    std::vector<float> y(x.size()), ry(x.size()), m(n), s(n), rm(n), rs(n);
    layernorm_forward<float>(x.data(), w.data(), b.data(), y.data(), m.data(), s.data(), n, E, 1e-5f);
    ref::layernorm_forward(x.data(), w.data(), b.data(), ry.data(), rm.data(), rs.data(), n, E, 1e-5f);
    // mean and rstd err by ~E eps relative; y = xhat w + b carries that into |xhat w|.
    auto fwd_tol = [&](size_t i) {
      const size_t c = i % size_t(E);
      return 4.0 * E * kEps * (std::fabs(double(ry[i]) - b[c]) + std::fabs(b[c]) + std::fabs(w[c]));
    };
    expect_close(("layernorm E=" + std::to_string(E)).c_str(), y, ry, fwd_tol);
    rmsnorm_forward<float>(x.data(), w.data(), y.data(), s.data(), n, E, 1e-6f);
    ref::rmsnorm_forward(x.data(), w.data(), ry.data(), rs.data(), n, E, 1e-6f);
    expect_close(("rmsnorm E=" + std::to_string(E)).c_str(), y, ry,
                 [&](size_t i) { return 4.0 * E * kEps * (std::fabs(ry[i]) + std::fabs(w[i % size_t(E)])); });

    // Backward, from the reference's saved statistics (so only the backward pass differs).
    ref::layernorm_forward(x.data(), w.data(), b.data(), ry.data(), rm.data(), rs.data(), n, E, 1e-5f);
    std::vector<float> dx(x.size(), 0.25f), dw(E, 1.0f), db(E, -1.0f);
    auto rdx = dx, rdw = dw, rdb = db;
    layernorm_backward<float>(dy.data(), x.data(), w.data(), rm.data(), rs.data(), dx.data(), dw.data(), db.data(), n, E);
    ref::layernorm_backward(dy.data(), x.data(), w.data(), rm.data(), rs.data(), rdx.data(), rdw.data(), rdb.data(), n, E);
    // dx: sums of E products scaled by rstd; dw, db: sums of n products.
    const double sx = 2 * prob_bound(E, max_abs(rdx)), sw = 8.0 * n * kEps * (max_abs(rdw) + 3 * n);
    expect_close("layernorm backward dx", dx, rdx, [&](size_t) { return sx + 1e-6; });
    expect_close("layernorm backward dw", dw, rdw, [&](size_t) { return sw; });
    expect_close("layernorm backward db", db, rdb, [&](size_t) { return sw; });
    ref::rmsnorm_forward(x.data(), w.data(), ry.data(), rs.data(), n, E, 1e-6f);
    std::vector<float> dx2(x.size(), 0.25f), dw2(E, 1.0f);
    auto rdx2 = dx2, rdw2 = dw2;
    rmsnorm_backward<float>(dy.data(), x.data(), w.data(), rs.data(), dx2.data(), dw2.data(), n, E);
    ref::rmsnorm_backward(dy.data(), x.data(), w.data(), rs.data(), rdx2.data(), rdw2.data(), n, E);
    expect_close("rmsnorm backward dx", dx2, rdx2, [&](size_t) { return 2 * prob_bound(E, max_abs(rdx2)) + 1e-6; });
    expect_close("rmsnorm backward dw", dw2, rdw2, [&](size_t) { return 8.0 * n * kEps * (max_abs(rdw2) + 3 * n); });
  }
}

// GELU (A&S erf: absolute error 1.5e-7 in erf, so 0.75e-7 |x| in gelu) and its tanh form, SiLU
// (exp: relative 2e-7): forward, backward and the recomputed activation, on lengths that leave
// vector tails.
TEST_P(Kernels, Activations) {
  for (int64_t n : {int64_t{1}, int64_t{203}, int64_t{40000}}) {
    const auto x = randn(size_t(n), 7, 3.0f), g = randn(size_t(n), 8, 2.0f), dy = randn(size_t(n), 9);
    for (bool tanh_form : {false, true}) {
      std::vector<float> y(static_cast<size_t>(n)), ry(static_cast<size_t>(n)), dx(static_cast<size_t>(n)), rdx(static_cast<size_t>(n)), y2(static_cast<size_t>(n));
      gelu_forward<float>(x.data(), y.data(), n, tanh_form);
      ref::gelu_forward(x.data(), ry.data(), n, tanh_form);
      expect_close(tanh_form ? "gelu (tanh)" : "gelu (erf)", y, ry,
                   [&](size_t i) { return 4e-7 * std::max(1.0f, std::fabs(x[i])); });
      gelu_backward<float>(x.data(), dy.data(), dx.data(), y2.data(), n, tanh_form);
      ref::gelu_backward(x.data(), dy.data(), rdx.data(), (float*)nullptr, n, tanh_form);
      EXPECT_EQ(y2, y) << "the backward pass recomputes exactly the forward activation";
      // gelu' errs by ~|x| phi(x) times the erf error, and (tanh form) by 1 - tanh^2 cancelling.
      expect_close(tanh_form ? "gelu (tanh) backward" : "gelu (erf) backward", dx, rdx,
                   [&](size_t i) { return 2e-6 * std::fabs(dy[i]) * std::max(1.0f, std::fabs(x[i])); });
    }
    std::vector<float> s(static_cast<size_t>(n)), rs(static_cast<size_t>(n));
    swiglu_forward<float>(g.data(), x.data(), s.data(), n);
    ref::swiglu_forward(g.data(), x.data(), rs.data(), n);
    expect_close("swiglu", s, rs, [&](size_t i) {
      return 1e-6 * std::fabs(x[i]) * std::max(1.0f, std::fabs(g[i]));
    });
    std::vector<float> dg(static_cast<size_t>(n)), du(static_cast<size_t>(n)), sy(static_cast<size_t>(n)), rdg(static_cast<size_t>(n)), rdu(static_cast<size_t>(n));
    swiglu_backward<float>(g.data(), x.data(), dy.data(), dg.data(), du.data(), sy.data(), n);
    ref::swiglu_backward(g.data(), x.data(), dy.data(), rdg.data(), rdu.data(), (float*)nullptr, n);
    EXPECT_EQ(sy, s);
    auto bt = [&](size_t i) {
      return 2e-6 * std::fabs(dy[i]) * (1 + std::fabs(x[i])) * std::max(1.0f, std::fabs(g[i]));
    };
    expect_close("swiglu backward dgate", dg, rdg, bt);
    expect_close("swiglu backward dup", du, rdu, bt);
  }
}

// The vector exp inside softmax, cross-entropy and the activations against libm over the whole
// float range (relative error of the Cephes polynomial ~1e-7; 0 below FLT_MIN, inf past FLT_MAX).
TEST_P(Kernels, ExpAccuracy) {
  std::vector<float> x;
  for (float v = -100.0f; v <= 100.0f; v += 0.0137f) x.push_back(v);
  std::vector<float> e(x);
  cpu::kernels().exp_sub_sum(e.data(), static_cast<int64_t>(e.size()), 0.0f);
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
  std::vector<float> row = {0.5f};
  softmax_rows(row.data(), 1, 1);  // a length-1 row is exactly 1
  EXPECT_EQ(row[0], 1.0f);
  // NaN stays NaN on every path, wherever it sits in a row (vector body or tail), so a NaN logit
  // gives a NaN loss and a NaN softmax, never a finite number that hides it.
  for (int at : {0, 5, 16, 33, 36}) {
    std::vector<float> r(37, 0.25f);
    r[static_cast<size_t>(at)] = std::nanf("");
    EXPECT_TRUE(std::isnan(cpu::kernels().max_n(r.data(), 37))) << at;
    std::vector<float> e2(r);
    cpu::kernels().exp_sub_sum(e2.data(), 37, 0.0f);
    EXPECT_TRUE(std::isnan(e2[static_cast<size_t>(at)])) << at;
    std::vector<float> sm(r);
    softmax_rows(sm.data(), 1, 37);
    EXPECT_TRUE(std::isnan(sm[0])) << at;
    std::vector<float> lg(r), loss(1);
    const int32_t tgt = 3;
    EXPECT_TRUE(std::isnan(cross_entropy_forward_backward<float>(lg.data(), &tgt, 1, 37, 1.0f, false,
                                                                  loss.data())))
        << at;
  }
  // -inf entries (masked scores) are not NaN: their exp is 0.
  std::vector<float> masked(20, -INFINITY);
  masked[3] = 1.0f;
  softmax_rows(masked.data(), 1, 20);
  EXPECT_EQ(masked[3], 1.0f);
  EXPECT_EQ(masked[4], 0.0f);
}

TEST_P(Kernels, Rope) {
  RopeTable<float> rt;
  rt.build(8, 64, rope_inv_freq(8, 10000.0));
  const int d = 12, H = 2;  // partial rotary: 8 of 12 dims
  auto x = randn(size_t(3) * H * d, 9);
  const auto orig = x;
  const int32_t pos[3] = {0, 5, 63};
  rope_forward<float>(x.data(), 3, H, d, pos, rt);
  auto r = orig;
  ref::rope_forward(r.data(), 3, H, d, pos, rt);
  expect_close("rope", x, r, [&](size_t i) { return 4 * kEps * (std::fabs(orig[i]) + 4); });
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
  rope_backward<float>(x.data(), 3, H, d, pos, rt);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], orig[i], 1e-5);
  // A rotary width past one vector: 64 of 64 dims (Llama), 16 of 64 (Pythia).
  for (int n_rot : {64, 16, 6}) {
    RopeTable<float> big;
    big.build(n_rot, 100, rope_inv_freq(n_rot, 10000.0));
    auto y = randn(size_t(5) * 3 * 64, 10);
    auto ry = y;
    const int32_t p5[5] = {0, 1, 17, 50, 99};
    rope_forward<float>(y.data(), 5, 3, 64, p5, big);
    ref::rope_forward(ry.data(), 5, 3, 64, p5, big);
    // Each output is two products and a sum (a c - b s) of values of size |x|: 3 roundings.
    expect_close(("rope n_rot=" + std::to_string(n_rot)).c_str(), y, ry,
                 [&](size_t) { return 3 * kEps * 2 * max_abs(ry); });
  }
}

TEST_P(Kernels, EmbeddingCrossEntropySoftmax) {
  const int n = 9, E = 19, V = 1037;
  const std::vector<int32_t> tok = {3, 1, 3, 0, 10, 3, 7, 1, 2};
  const auto table = randn(size_t(V) * E, 16), dx = randn(size_t(n) * E, 17);
  std::vector<float> x(size_t(n) * E), rx(size_t(n) * E);
  embedding_forward<float>(tok.data(), table.data(), x.data(), n, E);
  ref::embedding_forward(tok.data(), table.data(), rx.data(), n, E);
  EXPECT_EQ(x, rx);
  std::vector<float> dt(size_t(V) * E, 0.5f), rdt(dt);
  embedding_backward<float>(tok.data(), dx.data(), dt.data(), n, E);
  ref::embedding_backward(tok.data(), dx.data(), rdt.data(), n, E);
  expect_close("embedding backward", dt, rdt, [&](size_t) { return 4 * kEps * 4; });

  auto logits = randn(size_t(n) * V, 18, 3.0f);
  auto rl = logits;
  std::vector<float> loss(n), rloss(n);
  const double total = cross_entropy_forward_backward<float>(logits.data(), tok.data(), n, V, 0.5f, true, loss.data());
  const double rtotal = ref::cross_entropy_forward_backward(rl.data(), tok.data(), n, V, 0.5f, true, rloss.data());
  // logsumexp over V terms: relative error ~V eps in the sum, absolute in its log.
  EXPECT_NEAR(total, rtotal, n * 4.0 * V * kEps);
  // grad = scale (p - onehot): p's relative error is the sum's (V terms) plus exp's; the onehot
  // subtraction rounds once at the size of scale.
  expect_close("cross-entropy grad", logits, rl,
               [&](size_t i) { return prob_bound(V, std::fabs(rl[i])) + 2 * 0.5 * kEps; });

  auto sm = randn(size_t(3) * 301, 19, 4.0f);
  auto rsm = sm;
  softmax_rows(sm.data(), 3, 301);
  ref::softmax_rows(rsm.data(), 3, 301);
  expect_close("softmax rows", sm, rsm, [&](size_t i) { return 4.0 * 301 * kEps * rsm[i] + 1e-9; });
  std::vector<float> row = {1.0f, 2.0f, 3.0f};
  EXPECT_NEAR(logsumexp(row.data(), 3), std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), 1e-6);
  const auto a = randn(77, 10), b = randn(77, 11);
  double d = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += double(a[i]) * b[i];
    s += std::fabs(double(a[i]) * b[i]);
  }
  EXPECT_NEAR(dot(a.data(), b.data(), 77), d, 2 * 77 * kEps * s);
}

// Training attention (causal, whole sequences, GQA) forward and backward against the reference.
TEST_P(Kernels, TrainingAttention) {
  for (int G : {4, 2, 1}) {
    const AttnDims a{2, 70, 4, G, 8};  // ctx 70 > the 64-row block
    const int64_t nq = a.n_rows() * a.n_head * a.head_dim, nk = a.n_rows() * G * a.head_dim;
    const auto q = randn(size_t(nq), 20, 1.5f), k = randn(size_t(nk), 21, 1.5f),
               v = randn(size_t(nk), 22), dout = randn(size_t(nq), 23);
    std::vector<float> o(static_cast<size_t>(nq)), ro(static_cast<size_t>(nq)), lse(size_t(a.batch) * a.n_head * a.ctx), rlse(lse);
    AttnScratch<float> s;
    attention_forward<float>(q.data(), k.data(), v.data(), o.data(), lse.data(), a, s);
    ref::attention_forward(q.data(), k.data(), v.data(), ro.data(), rlse.data(), a);
    // Each output is a convex combination of up to ctx values with weights from d-term dot
    // products.
    const double bo = prob_bound(a.ctx + a.head_dim, max_abs(v));
    const std::string tag = " G=" + std::to_string(G);
    expect_close(("attention forward" + tag).c_str(), o, ro, [&](size_t) { return bo; });
    // lse = max score + log(sum): scores are d-term dot products (|score| <= sqrt(d) |q| |k|),
    // the sum has up to ctx terms.
    const double qk = std::sqrt(double(a.head_dim)) * max_abs(q) * max_abs(k);
    expect_close(("attention lse" + tag).c_str(), lse, rlse,
                 [&](size_t) { return prob_bound(a.head_dim, qk) + prob_bound(a.ctx, 1.0); });
    std::vector<float> dq(size_t(nq), 0.0f), dk(size_t(nk), 0.25f), dv(size_t(nk), -0.5f);
    auto rdq = dq, rdk = dk, rdv = dv;
    attention_backward<float>(q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), a, s);
    ref::attention_backward(q.data(), k.data(), v.data(), dout.data(), rdq.data(), rdk.data(), rdv.data(), a);
    // dK, dV sum over the ctx rows of every query head of the group.
    const double nb = a.ctx * (a.n_head / G) + a.head_dim;
    expect_close(("attention backward dq" + tag).c_str(), dq, rdq, [&](size_t) { return 2 * prob_bound(nb, max_abs(rdq)); });
    expect_close(("attention backward dk" + tag).c_str(), dk, rdk, [&](size_t) { return 2 * prob_bound(nb, max_abs(rdk)); });
    expect_close(("attention backward dv" + tag).c_str(), dv, rdv, [&](size_t) { return 2 * prob_bound(nb, max_abs(rdv)); });
  }
}

// Rows of d values in a cache format, and the values they hold (the reference reads those).
struct Encoded {
  std::vector<char> bytes;
  std::vector<float> values;
};
Encoded encode_rows(const std::vector<float>& x, int d, DType dt) {
  Tensor t({static_cast<int64_t>(x.size()) / d, d});
  std::copy(x.begin(), x.end(), t.data());
  const Tensor e = t.to(dt), back = e.to(DType::kF32);
  Encoded r;
  r.bytes.assign(static_cast<const char*>(e.raw()), static_cast<const char*>(e.raw()) + e.nbytes());
  r.values.assign(back.data(), back.data() + back.numel());
  return r;
}

constexpr DType kKvFormats[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0};

// Decode attention of a group of query rows sharing one KV head: head sizes on and off the vector
// width, lengths across the 8-key and value blocks, groups wider than kMaxAttendGroup, every cache
// format for keys and values (the result against the reference on the values the rows hold:
// quantized rows are read in registers, never widened beforehand; over q8_0 / q4_0 keys the
// reference reads the query rows as the integer kernel quantizes them), and keys and values cut
// into chunks.
TEST_P(Kernels, DecodeAttention) {
  for (int d : {64, 128, 20, 8, 80, 96, 288}) {
    for (int len : {1, 7, 8, 300, 530}) {
      // 96 (an odd number of 32-value blocks) and 288 (above the integer kernels' 256, so q8_0 /
      // q4_0 keys are widened and the query is not rounded): fewer shapes.
      if ((d == 96 || d == 288) && len != 300 && len != 7) continue;
      for (int n_q : {1, 3, 5, 8, 9, 12, 16, 70}) {
        const int ldq = n_q * d + 5, ldo = n_q * d + 3;  // strides wider than the rows
        const auto qrows = randn(size_t(n_q) * ldq, 2 + len);
        const auto K = randn(size_t(len) * d, 3 + n_q), V = randn(size_t(len) * d, 4 + d);
        const float scale = 1.0f / std::sqrt(float(d));
        std::vector<float> scratch(size_t(std::min(n_q, kMaxAttendGroup)) * len);
        const std::string tag = "attend d=" + std::to_string(d) + " len=" + std::to_string(len) +
                                " n_q=" + std::to_string(n_q);
        for (DType kt : kKvFormats) {
          for (DType vt : kKvFormats) {
            if (d % dtype_block_values(kt) || d % dtype_block_values(vt)) continue;
            if (kt != vt && !(len == 300 && n_q == 3)) continue;  // mixed pairs: one shape
            const Encoded ke = encode_rows(K, d, kt), ve = encode_rows(V, d, vt);
            std::vector<float> out(size_t(n_q) * ldo, -7.0f), want(out);
            const size_t krb = dtype_row_bytes(kt, d), vrb = dtype_row_bytes(vt, d);
            // Chunks of 5, 11, then the rest for one shape; blocks of 16 positions (a paged cache:
            // the prefetch cursor across chunks) for another; else one chunk.
            std::vector<KvChunk> chunks;
            for (int p = 0; p < len;) {
              const int n = len == 300 ? std::min(len - p, chunks.empty() ? 5 : chunks.size() == 1 ? 11 : len)
                            : len == 530 ? std::min(len - p, 16)
                                         : len;
              chunks.push_back({ke.bytes.data() + size_t(p) * krb, ve.bytes.data() + size_t(p) * vrb, n});
              p += n;
            }
            attend_chunks(qrows.data(), n_q, ldq, chunks.data(), int(chunks.size()), kt, vt, d, scale,
                          out.data(), ldo, scratch.data());
            // Over q8_0 / q4_0 keys the scores are integer dot products with the query rows
            // quantized per block (quantize_query_q8); the reference reads those query values.
            std::vector<float> qref = qrows;
            if (cpu::int_key_scores(kt, d)) {
              std::vector<int8_t> qi(static_cast<size_t>(d));
              std::vector<float> qs(static_cast<size_t>(d / 32));
              for (int r = 0; r < n_q; ++r) {
                quantize_query_q8(qrows.data() + size_t(r) * ldq, qi.data(), qs.data(), d);
                for (int i = 0; i < d; ++i) qref[size_t(r) * ldq + i] = qs[size_t(i / 32)] * qi[size_t(i)];
              }
            }
            ref::attend(qref.data(), n_q, ldq, ke.values.data(), ve.values.data(), len, d, scale,
                        want.data(), ldo);
            const double bound = prob_bound(len + d, max_abs(ve.values));
            expect_close((tag + " k " + dtype_name(kt) + " v " + dtype_name(vt)).c_str(), out, want,
                         [&](size_t) { return bound; });
            for (int r = 0; r + 1 < n_q; ++r) {  // padding between rows untouched
              for (int i = d; i < ldo; ++i) ASSERT_EQ(out[size_t(r) * ldo + i], -7.0f);
            }
          }
        }
      }
    }
  }
}

// Over q8_0 / q4_0 keys a NaN stays visible as in f32: a NaN in a query row makes that row's
// output NaN (its block's scale is NaN), a NaN key (stored as a NaN block) every row's.
TEST_P(Kernels, QuantizedKeysKeepNaN) {
  const int d = 64, len = 37;
  for (auto [kt, n_q] : {std::pair{DType::kQ8_0, 3}, {DType::kQ4_0, 3}, {DType::kQ8_0, 12}}) {
    for (bool nan_key : {false, true}) {
      auto q = randn(size_t(n_q) * d, 5);
      auto K = randn(size_t(len) * d, 6);
      const auto V = randn(size_t(len) * d, 7);
      if (nan_key) {
        K[size_t(20) * d + 3] = std::nanf("");
      } else {
        q[size_t(1) * d + 40] = std::nanf("");
      }
      const Encoded ke = encode_rows(K, d, kt);
      std::vector<float> out(size_t(n_q) * d), scratch(size_t(n_q) * len);
      const KvChunk c{ke.bytes.data(), V.data(), len};
      attend_chunks(q.data(), n_q, d, &c, 1, kt, DType::kF32, d, 0.125f, out.data(), d, scratch.data());
      for (int r = 0; r < n_q; ++r) {
        const bool want_nan = nan_key || r == 1;
        for (int i = 0; i < d; ++i) {
          ASSERT_EQ(std::isnan(out[size_t(r) * d + i]), want_nan)
              << dtype_name(kt) << (nan_key ? " NaN key" : " NaN query") << " row " << r << " value " << i;
        }
      }
    }
  }
}

// AVX-512 scores over q8_0 / q4_0 keys, and the q8_0 GEMV, with VNNI (dpbusd) and without
// (maddubs + madd) form the same integers and scale them in the same order: equal results. Groups
// of 9-16 rows over q8_0 keys take the rows-in-lanes path with VNNI (scores_q8_lanes), 1-8 rows
// at d a multiple of 64 the keys-in-registers path (scores_q8_keys).
TEST(KernelsInt, VnniAndMaddubsAgree) {
  if (!cpu::cpu_supports(cpu::Isa::kAvx512) || !__builtin_cpu_supports("avx512vnni")) {
    GTEST_SKIP() << "this CPU has no AVX-512 VNNI: only one of the two paths can run";
  }
  const cpu::Kernels &vnni = cpu::avx512_kernels(), &base = cpu::avx512_kernels_without_vnni();
  for (DType kt : {DType::kQ8_0, DType::kQ4_0}) {
    const int fi = cpu::kv_format_index(kt);
    ASSERT_NE(vnni.attn_scores[fi], base.attn_scores[fi]) << "the VNNI entry is not installed";
    for (auto [d, n_q] : {std::pair{64, 5}, {96, 5}, {256, 5}, {64, 1}, {128, 3}, {64, 8}, {64, 12},
                          {128, 16}, {256, 9}}) {
      const int len = 203;
      const auto q = randn(size_t(n_q) * d, 8 + d), K = randn(size_t(len) * d, 9 + d);
      const Encoded ke = encode_rows(K, d, kt);
      const KvChunk c{ke.bytes.data(), nullptr, len};
      std::vector<float> a(size_t(n_q) * len), b(a.size());
      const size_t rb = dtype_row_bytes(kt, d);
      vnni.attn_scores[fi](q.data(), n_q, d, &c, 1, d, rb, 0.125f, a.data(), len);
      base.attn_scores[fi](q.data(), n_q, d, &c, 1, d, rb, 0.125f, b.data(), len);
      for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i], b[i]) << dtype_name(kt) << " d=" << d << " score " << i;
      }
    }
  }
  // The q8_0 x q8 GEMV: 4 weight rows and a tail of 3, against 1 to 5 token rows.
  ASSERT_NE(vnni.gemv4_q8_int, base.gemv4_q8_int) << "the VNNI GEMV is not installed";
  for (int T : {1, 2, 3, 4, 5}) {
    const int K = 160;
    const auto x = randn(size_t(T) * K, 20 + T), w = randn(size_t(4) * K, 21);
    std::vector<int8_t> xq(x.size());
    std::vector<float> xd(x.size() / 32);
    quantize_query_q8(x.data(), xq.data(), xd.data(), int64_t(x.size()));
    const Encoded we = encode_rows(w, K, DType::kQ8_0);
    float a[4 * 5], b[4 * 5];
    vnni.gemv4_q8_int(xq.data(), xd.data(), we.bytes.data(), T, K, a);
    base.gemv4_q8_int(xq.data(), xd.data(), we.bytes.data(), T, K, b);
    for (int i = 0; i < 4 * T; ++i) ASSERT_EQ(a[i], b[i]) << "gemv T=" << T << " output " << i;
    vnni.gemv_tail_q8_int(xq.data(), xd.data(), we.bytes.data(), 3, T, K, a);
    base.gemv_tail_q8_int(xq.data(), xd.data(), we.bytes.data(), 3, T, K, b);
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < 3; ++j) ASSERT_EQ(a[t * 4 + j], b[t * 4 + j]) << "tail T=" << T << " " << t << "," << j;
    }
  }
}

// The KV-cache ops on their own: rows stored through a slot whose sequences live in scattered
// blocks, then causal attention of prefill runs (the GEMM path) and decode runs (the attend
// kernel, chunk by chunk) against the reference over the values the slot holds (rounded or
// quantized by the format; rotated first when the reader needs rotated keys from a raw-key slot),
// for every format of keys and values.
TEST_P(Kernels, CacheStoreAndAttention) {
  const std::pair<DType, DType> formats[] = {
      {DType::kF32, DType::kF32},   {DType::kF16, DType::kF16},   {DType::kBF16, DType::kBF16},
      {DType::kQ8_0, DType::kQ8_0}, {DType::kQ4_0, DType::kQ4_0}, {DType::kQ8_0, DType::kF16},
      {DType::kF16, DType::kQ4_0}};
  for (int d : {32, 20}) {
    for (auto [kt, vt] : formats) {
      if (d % dtype_block_values(kt) || d % dtype_block_values(vt)) continue;
      for (bool rotate : {false, true}) {
        const int G = 2, H = 4, bs = 4, n_seq = 2, n_ctx = 24, bps = n_ctx / bs;
        const size_t krb = dtype_row_bytes(kt, d), vrb = dtype_row_bytes(vt, d);
        std::vector<std::vector<int32_t>> tables = {{5, 0, 9, 2, 7, 11}, {1, 3, 4, 6, 8, 10}};
        std::vector<char> kbuf(size_t(G) * n_seq * bps * bs * krb), vbuf(size_t(G) * n_seq * bps * bs * vrb);
        KvSlotView slot;
        slot.k_dtype = kt;
        slot.v_dtype = vt;
        slot.n_head_kv = G;
        slot.head_dim = d;
        slot.block_size = bs;
        slot.k_row_bytes = krb;
        slot.v_row_bytes = vrb;
        slot.k_head_stride = size_t(n_seq) * bps * bs * krb;
        slot.v_head_stride = size_t(n_seq) * bps * bs * vrb;
        slot.k = kbuf.data();
        slot.v = vbuf.data();
        slot.block_tables = tables.data();
        slot.keys_rotated = !rotate;
        // Sequence 0: positions 0..17 (a prefill run of 18 rows); sequence 1: 0..9, then a decode
        // row at position 9. Everything is stored first, as the model does before attending.
        const int len0 = 18, len1 = 10;
        std::vector<int32_t> seq, pos;
        for (int i = 0; i < len0; ++i) seq.push_back(0), pos.push_back(i);
        for (int i = 0; i < len1; ++i) seq.push_back(1), pos.push_back(i);
        const int n = len0 + len1;
        const auto k = randn(size_t(n) * G * d, 40 + d), v = randn(size_t(n) * G * d, 41 + d);
        kv_store(slot, seq.data(), pos.data(), n, k.data(), v.data());
        // What the slot holds: the same rows through the format's definition.
        const auto kq = encode_rows(k, d, kt).values, vq = encode_rows(v, d, vt).values;
        RopeTable<float> rt;
        rt.build(d, n_ctx, rope_inv_freq(d, 10000.0));
        const auto q = randn(size_t(len0 + 1) * H * d, 42 + d);
        std::vector<AttnRun> runs = {{0, 0, len0, 0}, {1, len0, 1, len1 - 1}};
        std::vector<float> out(q.size(), -7.0f), want(q.size());
        attention_cached(slot, runs, q.data(), H, rotate, rt, out.data());
        // Reference: per row and head, the visible keys and values as the slot stores them.
        auto stored = [&](const std::vector<float>& src, int s, int h, int p) {
          const int i = s == 0 ? p : len0 + p;
          return std::vector<float>(src.begin() + (int64_t(i) * G + h) * d, src.begin() + (int64_t(i) * G + h + 1) * d);
        };
        for (const AttnRun& r : runs) {
          for (int t = 0; t < r.n_rows; ++t) {
            const int p = r.pos0 + t, nvis = p + 1;
            for (int h = 0; h < H; ++h) {
              const int g = h / (H / G);
              std::vector<float> K, V;
              for (int j = 0; j < nvis; ++j) {
                auto kr = stored(kq, r.seq, g, j), vr = stored(vq, r.seq, g, j);
                if (rotate) {
                  const int32_t pj = j;
                  ref::rope_forward(kr.data(), 1, 1, d, &pj, rt);
                }
                K.insert(K.end(), kr.begin(), kr.end());
                V.insert(V.end(), vr.begin(), vr.end());
              }
              const int64_t o = (int64_t(r.row0 + t) * H + h) * d;
              // Keys read as stored q8_0 / q4_0 blocks: the query as quantize_query_q8 rounds it.
              std::vector<float> qr(q.begin() + o, q.begin() + o + d);
              if (!rotate && cpu::int_key_scores(kt, d)) {
                std::vector<int8_t> qi(static_cast<size_t>(d));
                std::vector<float> qs(static_cast<size_t>(d / 32));
                quantize_query_q8(qr.data(), qi.data(), qs.data(), d);
                for (int i = 0; i < d; ++i) qr[size_t(i)] = qs[size_t(i / 32)] * qi[size_t(i)];
              }
              ref::attend(qr.data(), 1, d, K.data(), V.data(), nvis, d, 1.0 / std::sqrt(double(d)),
                          want.data() + o, d);
            }
          }
        }
        const std::string tag = std::string("cache attention d=") + std::to_string(d) + " k " +
                                dtype_name(kt) + " v " + dtype_name(vt) + (rotate ? " rotated" : "");
        expect_close(tag.c_str(), out, want, [&](size_t) { return prob_bound(n_ctx + d, max_abs(vq)); });
      }
    }
  }
}

TEST_P(Kernels, AdamW) {
  for (int64_t n : {int64_t{5}, int64_t{100003}}) {
    auto p = randn(size_t(n), 30), g = randn(size_t(n), 31), m = randn(size_t(n), 32, 0.1f),
         v = randn(size_t(n), 33, 0.1f);
    for (auto& x : v) x = std::fabs(x);
    auto rp = p, rg = g, rm = m, rv = v;
    const AdamWStep h{0.9f, 0.95f, 1e-8f, 1e-3f, 0.01f, 1.0f / (1 - 0.9f), 1.0f / (1 - 0.95f), 0.5f};
    adamw_update<float>(p.data(), g.data(), m.data(), v.data(), n, h, true);
    ref::adamw_update(rp.data(), rg.data(), rm.data(), rv.data(), n, h, true);
    expect_close("adamw p", p, rp, [&](size_t i) { return 8 * kEps * (std::fabs(rp[i]) + 1e-3 * 10); });
    expect_close("adamw m", m, rm, [&](size_t i) { return 4 * kEps * (std::fabs(rm[i]) + 1); });
    expect_close("adamw v", v, rv, [&](size_t i) { return 4 * kEps * (std::fabs(rv[i]) + 1); });
    for (float x : g) ASSERT_EQ(x, 0.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, Kernels,
                         ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512),
                         [](const ::testing::TestParamInfo<Isa>& info) {
                           return std::string(cpu::isa_name(info.param));
                         });

TEST(Isa, ParseAndSelect) {
  EXPECT_EQ(cpu::parse_isa("avx2"), Isa::kAvx2);
  EXPECT_EQ(cpu::parse_isa("scalar"), Isa::kScalar);
  EXPECT_THROW(cpu::parse_isa("neon"), Error);
  EXPECT_TRUE(cpu::cpu_supports(Isa::kScalar));
  EXPECT_TRUE(cpu::cpu_supports(cpu::best_isa()));
  if (!cpu::cpu_supports(Isa::kAvx512)) {
    EXPECT_THROW(cpu::set_isa(Isa::kAvx512), Error);
  }
  std::printf("  this CPU: best path %s\n", cpu::isa_name(cpu::best_isa()));
}

}  // namespace
}  // namespace mlkv::ops
