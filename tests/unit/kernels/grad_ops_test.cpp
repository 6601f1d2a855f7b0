// Gradient checks of every op with a backward pass (kernels/ops.h): the double-precision backward
// (the scalar reference) against central finite differences of L = sum(r * forward(inputs)) for a
// random r, and the float kernels (the active SIMD path, sgemm) against the double ones. Measured errors are printed; bounds sit
// just above them (FD in double: ~1e-9 normalised; float vs double: ~1e-6).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "kernels/ops.h"
#include "train_test_util.h"

namespace mlkv::ops {
namespace {

using mlkv::testing::cast_vec;
using mlkv::testing::fd_check;
using mlkv::testing::FdResult;
using mlkv::testing::norm_err;
using mlkv::testing::rand_vec;
using mlkv::testing::sample_indices;

constexpr double kFdBound = 1e-7;     // normalised error of double backward vs central differences
constexpr double kFloatBound = 2e-5;  // normalised error of the float path vs the double path

double dotv(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void expect_fd(const char* what, std::vector<double>& x, const std::vector<double>& g,
               const std::function<double()>& loss, size_t k = 40) {
  const FdResult r = fd_check(x, g, loss, sample_indices(x.size(), k, 17));
  std::printf("  [fd] %-28s normalised err %.2e  (relative %.2e, %d entries)\n", what,
              r.max_norm_err, r.max_rel_err, r.checked);
  EXPECT_LT(r.max_norm_err, kFdBound) << what;
}

TEST(GradOps, Linear) {
  const int n = 7, K = 5, N = 6;
  auto x = rand_vec(n * K, 1), w = rand_vec(N * K, 2), b = rand_vec(N, 3), r = rand_vec(n * N, 4);
  auto loss = [&] {
    std::vector<double> y(n * N);
    linear_forward(x.data(), w.data(), b.data(), y.data(), n, K, N);
    return dotv(y, r);
  };
  std::vector<double> dx(n * K, 0.5), dw(N * K, 0.0), db(N, 0.0);  // dx starts non-zero: += check
  linear_backward(r.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), n, K, N);
  for (auto& v : dx) v -= 0.5;
  expect_fd("linear dx", x, dx, loss);
  expect_fd("linear dw", w, dw, loss);
  expect_fd("linear db", b, db, loss);
}

TEST(GradOps, LayerNormAndRmsNorm) {
  const int n = 6, E = 70;  // E > 64: more than one column block in the dw reduction
  auto x = rand_vec(n * E, 5, 2.0), w = rand_vec(E, 6), b = rand_vec(E, 7), r = rand_vec(n * E, 8);
  for (int i = 0; i < n * E; ++i) x[i] += 0.3;  // non-zero mean
  std::vector<double> mean(n), rstd(n);
  auto ln_loss = [&] {
    std::vector<double> y(n * E);
    layernorm_forward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), n, E, 1e-5);
    return dotv(y, r);
  };
  ln_loss();
  std::vector<double> dx(n * E, 0.0), dw(E, 0.0), db(E, 0.0);
  layernorm_backward(r.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(),
                     db.data(), n, E);
  expect_fd("layernorm dx", x, dx, ln_loss);
  expect_fd("layernorm dw", w, dw, ln_loss);
  expect_fd("layernorm db", b, db, ln_loss);

  auto rms_loss = [&] {
    std::vector<double> y(n * E);
    rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), n, E, 1e-6);
    return dotv(y, r);
  };
  rms_loss();
  std::vector<double> rdx(n * E, 0.0), rdw(E, 0.0);
  rmsnorm_backward(r.data(), x.data(), w.data(), rstd.data(), rdx.data(), rdw.data(), n, E);
  expect_fd("rmsnorm dx", x, rdx, rms_loss);
  expect_fd("rmsnorm dw", w, rdw, rms_loss);

  // float vs double
  auto xf = cast_vec<float>(x), wf = cast_vec<float>(w), bf = cast_vec<float>(b),
       rf = cast_vec<float>(r);
  std::vector<float> yf(n * E), mf(n), sf(n), dxf(n * E, 0.f), dwf(E, 0.f), dbf(E, 0.f);
  layernorm_forward(xf.data(), wf.data(), bf.data(), yf.data(), mf.data(), sf.data(), n, E, 1e-5f);
  layernorm_backward(rf.data(), xf.data(), wf.data(), mf.data(), sf.data(), dxf.data(), dwf.data(),
                     dbf.data(), n, E);
  EXPECT_LT(norm_err(dxf, dx), kFloatBound);
  EXPECT_LT(norm_err(dwf, dw), kFloatBound);
  EXPECT_LT(norm_err(dbf, db), kFloatBound);
}

TEST(GradOps, Gelu) {
  const int64_t n = 203;  // not a multiple of 8: vector body and scalar tail
  for (bool tanh_approx : {false, true}) {
    auto x = rand_vec(n, 9, 2.5), r = rand_vec(n, 10);
    auto loss = [&] {
      std::vector<double> y(n);
      gelu_forward(x.data(), y.data(), n, tanh_approx);
      return dotv(y, r);
    };
    std::vector<double> dx(n), y(n), y2(n);
    gelu_backward(x.data(), r.data(), dx.data(), y.data(), n, tanh_approx);
    gelu_forward(x.data(), y2.data(), n, tanh_approx);
    EXPECT_EQ(norm_err(y, y2), 0.0);  // the recomputed activation is the forward's
    expect_fd(tanh_approx ? "gelu (tanh) dx" : "gelu (erf) dx", x, dx, loss, 203);
    // float (A&S erf, vector exp) vs double (libm)
    auto xf = cast_vec<float>(x), rf = cast_vec<float>(r);
    std::vector<float> yf(n), dxf(n), yb(n);
    gelu_forward(xf.data(), yf.data(), n, tanh_approx);
    gelu_backward(xf.data(), rf.data(), dxf.data(), yb.data(), n, tanh_approx);
    EXPECT_LT(norm_err(yf, y), 1e-6);
    EXPECT_LT(norm_err(dxf, dx), 3e-6);  // tanh form: 1 - tanh^2 cancels near saturation
    std::printf("  [f32] gelu%s: y err %.2e, dx err %.2e\n", tanh_approx ? " (tanh)" : "",
                norm_err(yf, y), norm_err(dxf, dx));
  }
}

TEST(GradOps, SwiGlu) {
  const int64_t n = 101;
  auto g = rand_vec(n, 11, 2.0), u = rand_vec(n, 12), r = rand_vec(n, 13);
  auto loss = [&] {
    std::vector<double> y(n);
    swiglu_forward(g.data(), u.data(), y.data(), n);
    return dotv(y, r);
  };
  std::vector<double> dg(n), du(n), y(n);
  swiglu_backward(g.data(), u.data(), r.data(), dg.data(), du.data(), y.data(), n);
  expect_fd("swiglu dgate", g, dg, loss, 101);
  expect_fd("swiglu dup", u, du, loss, 101);
  auto gf = cast_vec<float>(g), uf = cast_vec<float>(u), rf = cast_vec<float>(r);
  std::vector<float> dgf(n), duf(n), yf(n);
  swiglu_backward(gf.data(), uf.data(), rf.data(), dgf.data(), duf.data(), yf.data(), n);
  EXPECT_LT(norm_err(dgf, dg), 1e-6);
  EXPECT_LT(norm_err(duf, du), 1e-6);
  EXPECT_LT(norm_err(yf, y), 1e-6);
}

TEST(GradOps, Rope) {
  const int ctx = 5, n = 10, H = 3, d = 8, n_rot = 6;
  RopeTable<double> tab;
  tab.build(n_rot, ctx, rope_inv_freq(n_rot, 10000.0));
  std::vector<int32_t> pos(n);
  for (int t = 0; t < n; ++t) pos[t] = t % ctx;
  auto x = rand_vec(n * H * d, 14), r = rand_vec(n * H * d, 15);
  auto loss = [&] {
    std::vector<double> y = x;
    rope_forward(y.data(), n, H, d, pos.data(), tab);
    return dotv(y, r);
  };
  std::vector<double> dx = r;
  rope_backward(dx.data(), n, H, d, pos.data(), tab);
  expect_fd("rope dx", x, dx, loss);
  // Row t sits at position t % ctx: row 0 and row ctx are both at position 0 (unrotated).
  std::vector<double> y = x;
  rope_forward(y.data(), n, H, d, pos.data(), tab);
  for (int i = 0; i < H * d; ++i) {
    EXPECT_EQ(y[i], x[i]);
    EXPECT_EQ(y[ctx * H * d + i], x[ctx * H * d + i]);
  }
}

TEST(GradOps, EmbeddingAndCrossEntropy) {
  const int n = 9, E = 4, V = 11;
  const std::vector<int32_t> tok = {3, 1, 3, 0, 10, 3, 7, 1, 2};
  auto table = rand_vec(V * E, 16), r = rand_vec(n * E, 17);
  auto loss = [&] {
    std::vector<double> x(n * E);
    embedding_forward(tok.data(), table.data(), x.data(), n, E);
    return dotv(x, r);
  };
  std::vector<double> dt(V * E, 0.0);
  embedding_backward(tok.data(), r.data(), dt.data(), n, E);
  expect_fd("embedding dtable", table, dt, loss, 44);

  const int Vc = 37;
  auto logits = rand_vec(n * Vc, 18, 3.0);
  std::vector<double> scratch(n);
  auto ce = [&] {
    std::vector<double> l = logits;
    return cross_entropy_forward_backward(l.data(), tok.data(), n, Vc, 1.0, false, scratch.data());
  };
  std::vector<double> g = logits;
  const double total =
      cross_entropy_forward_backward(g.data(), tok.data(), n, Vc, 1.0, true, scratch.data());
  EXPECT_NEAR(total, ce(), 1e-12);
  expect_fd("cross-entropy dlogits", logits, g, ce, 120);
  // float vs double
  auto lf = cast_vec<float>(logits);
  std::vector<float> sf(n);
  const double tf =
      cross_entropy_forward_backward(lf.data(), tok.data(), n, Vc, 1.0f, true, sf.data());
  EXPECT_NEAR(tf, total, 1e-5 * std::fabs(total));
  EXPECT_LT(norm_err(lf, g), 1e-6);
}

// Naive causal GQA attention in double, for the forward check.
std::vector<double> naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                                    const std::vector<double>& v, const AttnDims& a) {
  const int S = a.ctx, H = a.n_head, G = a.n_head_kv, d = a.head_dim;
  std::vector<double> o(a.n_rows() * H * d, 0.0);
  for (int b = 0; b < a.batch; ++b) {
    for (int h = 0; h < H; ++h) {
      const int g = h / (H / G);
      for (int i = 0; i < S; ++i) {
        std::vector<double> s(i + 1);
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          double acc = 0;
          for (int e = 0; e < d; ++e) {
            acc += q[((b * S + i) * H + h) * d + e] * k[((b * S + j) * G + g) * d + e];
          }
          s[j] = acc / std::sqrt(double(d));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (int j = 0; j <= i; ++j) {
          for (int e = 0; e < d; ++e) {
            o[((b * S + i) * H + h) * d + e] += s[j] / sum * v[((b * S + j) * G + g) * d + e];
          }
        }
      }
    }
  }
  return o;
}

class GradAttention : public ::testing::TestWithParam<int> {};

TEST_P(GradAttention, MhaGqaMqa) {
  const int G = GetParam();
  // ctx 70 > the 64-row block: two blocks, the second seeing all keys.
  AttnDims a{2, 70, 4, G, 4};
  const int64_t nq = a.n_rows() * a.n_head * a.head_dim, nk = a.n_rows() * G * a.head_dim;
  auto q = rand_vec(nq, 20, 1.5), k = rand_vec(nk, 21, 1.5), v = rand_vec(nk, 22),
       r = rand_vec(nq, 23);
  AttnScratch<double> s;
  std::vector<double> o(nq), lse(a.batch * a.n_head * a.ctx);
  attention_forward(q.data(), k.data(), v.data(), o.data(), lse.data(), a, s);
  EXPECT_LT(norm_err(o, naive_attention(q, k, v, a)), 1e-13);
  auto loss = [&] {
    std::vector<double> oo(nq), ll(lse.size());
    attention_forward(q.data(), k.data(), v.data(), oo.data(), ll.data(), a, s);
    return dotv(oo, r);
  };
  std::vector<double> dq(nq, 0.0), dk(nk, 0.25), dv(nk, -0.5);  // dk, dv accumulate
  attention_backward(q.data(), k.data(), v.data(), o.data(), lse.data(), r.data(), dq.data(),
                     dk.data(), dv.data(), a, s);
  for (auto& x : dk) x -= 0.25;
  for (auto& x : dv) x += 0.5;
  const std::string tag = G == 4 ? "MHA" : G == 1 ? "MQA" : "GQA";
  expect_fd(("attention dq " + tag).c_str(), q, dq, loss, 60);
  expect_fd(("attention dk " + tag).c_str(), k, dk, loss, 60);
  expect_fd(("attention dv " + tag).c_str(), v, dv, loss, 60);

  // float vs double
  auto qf = cast_vec<float>(q), kf = cast_vec<float>(k), vf = cast_vec<float>(v),
       rf = cast_vec<float>(r);
  AttnScratch<float> sf;
  std::vector<float> of(nq), lf(lse.size()), dqf(nq, 0.f), dkf(nk, 0.f), dvf(nk, 0.f);
  attention_forward(qf.data(), kf.data(), vf.data(), of.data(), lf.data(), a, sf);
  attention_backward(qf.data(), kf.data(), vf.data(), of.data(), lf.data(), rf.data(), dqf.data(),
                     dkf.data(), dvf.data(), a, sf);
  std::printf("  [f32] attention %s: o %.2e dq %.2e dk %.2e dv %.2e\n", tag.c_str(),
              norm_err(of, o), norm_err(dqf, dq), norm_err(dkf, dk), norm_err(dvf, dv));
  EXPECT_LT(norm_err(of, o), kFloatBound);
  EXPECT_LT(norm_err(dqf, dq), kFloatBound);
  EXPECT_LT(norm_err(dkf, dk), kFloatBound);
  EXPECT_LT(norm_err(dvf, dv), kFloatBound);
}

INSTANTIATE_TEST_SUITE_P(KvHeads, GradAttention, ::testing::Values(4, 2, 1));

}  // namespace
}  // namespace mlkv::ops
