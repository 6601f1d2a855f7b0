// Calibrated folds: key maps (least squares, KL), attention in double, output maps, the per-layer
// choice. See fold.h.
#include "convert/fold.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <iterator>
#include <limits>

#include "core/check.h"

namespace mlkv::calib {

Mat Mat::identity(int n) {
  Mat m(n, n);
  for (int i = 0; i < n; ++i) m(i, i) = 1.0;
  return m;
}

namespace {

bool is_identity(const Mat& P) {
  for (int i = 0; i < P.rows; ++i) {
    for (int j = 0; j < P.cols; ++j) {
      if (P(i, j) != (i == j ? 1.0 : 0.0)) return false;
    }
  }
  return true;
}

// Solves A X = B for symmetric positive definite A [n, n] and B [n, m] (row-major), in place in
// B. False when A is not numerically positive definite.
bool cholesky_solve(std::vector<double> A, int n, std::vector<double>& B, int m) {
  for (int j = 0; j < n; ++j) {
    double s = A[static_cast<size_t>(j) * n + j];
    for (int k = 0; k < j; ++k)
      s -= A[static_cast<size_t>(j) * n + k] * A[static_cast<size_t>(j) * n + k];
    if (!(s > 0)) return false;
    const double l = std::sqrt(s);
    A[static_cast<size_t>(j) * n + j] = l;
    for (int i = j + 1; i < n; ++i) {
      double t = A[static_cast<size_t>(i) * n + j];
      for (int k = 0; k < j; ++k)
        t -= A[static_cast<size_t>(i) * n + k] * A[static_cast<size_t>(j) * n + k];
      A[static_cast<size_t>(i) * n + j] = t / l;
    }
  }
  for (int c = 0; c < m; ++c) {
    for (int i = 0; i < n; ++i) {  // L y = b
      double t = B[static_cast<size_t>(i) * m + c];
      for (int k = 0; k < i; ++k)
        t -= A[static_cast<size_t>(i) * n + k] * B[static_cast<size_t>(k) * m + c];
      B[static_cast<size_t>(i) * m + c] = t / A[static_cast<size_t>(i) * n + i];
    }
    for (int i = n - 1; i >= 0; --i) {  // L^T x = y
      double t = B[static_cast<size_t>(i) * m + c];
      for (int k = i + 1; k < n; ++k)
        t -= A[static_cast<size_t>(k) * n + i] * B[static_cast<size_t>(k) * m + c];
      B[static_cast<size_t>(i) * m + c] = t / A[static_cast<size_t>(i) * n + i];
    }
  }
  return true;
}

// Minimises f (value and gradient) from x by L-BFGS with a backtracking (Armijo) line search.
using Objective = std::function<double(const std::vector<double>&, std::vector<double>*)>;
std::vector<double> lbfgs(const Objective& f, std::vector<double> x, int max_iter) {
  const size_t n = x.size();
  constexpr int kHistory = 8;
  std::vector<std::vector<double>> S, Y;
  std::vector<double> rho;
  std::vector<double> g(n), g_new(n), dir(n), x_new(n), alpha(kHistory);
  double fx = f(x, &g);
  auto dot = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  for (int it = 0; it < max_iter; ++it) {
    // Two-loop recursion: dir = -H g.
    dir = g;
    const int m = static_cast<int>(S.size());
    for (int i = m - 1; i >= 0; --i) {
      alpha[static_cast<size_t>(i)] =
          rho[static_cast<size_t>(i)] * dot(S[static_cast<size_t>(i)], dir);
      for (size_t k = 0; k < n; ++k)
        dir[k] -= alpha[static_cast<size_t>(i)] * Y[static_cast<size_t>(i)][k];
    }
    double gamma = 1.0;
    if (m > 0)
      gamma = dot(S.back(), Y.back()) / dot(Y.back(), Y.back());
    else
      gamma = 1.0 / std::max(1e-12, std::sqrt(dot(g, g)));
    for (double& v : dir) v *= gamma;
    for (int i = 0; i < m; ++i) {
      const double beta = rho[static_cast<size_t>(i)] * dot(Y[static_cast<size_t>(i)], dir);
      for (size_t k = 0; k < n; ++k)
        dir[k] += S[static_cast<size_t>(i)][k] * (alpha[static_cast<size_t>(i)] - beta);
    }
    for (double& v : dir) v = -v;
    double slope = dot(g, dir);
    if (!(slope < 0)) {  // not a descent direction: restart from steepest descent
      S.clear();
      Y.clear();
      rho.clear();
      for (size_t k = 0; k < n; ++k) dir[k] = -g[k];
      slope = -dot(g, g);
      if (!(slope < 0)) break;
    }
    double step = 1.0, f_new = 0;
    bool ok = false;
    for (int ls = 0; ls < 30; ++ls) {
      for (size_t k = 0; k < n; ++k) x_new[k] = x[k] + step * dir[k];
      f_new = f(x_new, &g_new);
      if (std::isfinite(f_new) && f_new <= fx + 1e-4 * step * slope) {
        ok = true;
        break;
      }
      step *= 0.5;
    }
    if (!ok) break;
    std::vector<double> s(n), y(n);
    for (size_t k = 0; k < n; ++k) {
      s[k] = x_new[k] - x[k];
      y[k] = g_new[k] - g[k];
    }
    const double sy = dot(s, y);
    const double f_old = fx;
    x.swap(x_new);
    g.swap(g_new);
    fx = f_new;
    if (sy > 1e-16) {
      if (static_cast<int>(S.size()) == kHistory) {
        S.erase(S.begin());
        Y.erase(Y.begin());
        rho.erase(rho.begin());
      }
      S.push_back(std::move(s));
      Y.push_back(std::move(y));
      rho.push_back(1.0 / sy);
    }
    if (f_old - fx <= 1e-10 * std::max(1.0, std::fabs(fx))) break;
  }
  return x;
}

// Causal softmax of row t's logits s[0 .. t] in place; returns log sum exp.
double softmax_inplace(double* s, int n) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int u = 0; u < n; ++u) mx = std::max(mx, s[u]);
  double sum = 0;
  for (int u = 0; u < n; ++u) {
    s[u] = std::exp(s[u] - mx);
    sum += s[u];
  }
  const double inv = 1.0 / sum;
  for (int u = 0; u < n; ++u) s[u] *= inv;
  return mx + std::log(sum);
}

// logits s[u] = sum_k qs[k] kt[k * ctx + u] for u <= t (keys transposed: the inner loop runs over
// keys, which vectorises without reassociating sums).
void logits_row(const double* qs, const double* kt, int d, int ctx, int n, double* s) {
  std::fill(s, s + n, 0.0);
  for (int k = 0; k < d; ++k) {
    const double a = qs[k];
    const double* kr = kt + static_cast<size_t>(k) * ctx;
    for (int u = 0; u < n; ++u) s[u] += a * kr[u];
  }
}

// qm = P^T q (or q when P is empty), times scale.
void map_query(const Mat& P, const double* q, int d, double scale, double* qm) {
  if (P.empty()) {
    for (int k = 0; k < d; ++k) qm[k] = scale * q[k];
    return;
  }
  for (int j = 0; j < d; ++j) {
    double s = 0;
    for (int i = 0; i < d; ++i) s += P(i, j) * q[i];
    qm[j] = scale * s;
  }
}

// The rows of the sequences in order.
template <typename F>
void for_rows(const std::vector<int>& seqs, int ctx, F&& f) {
  for (int s : seqs) {
    for (int t = 0; t < ctx; ++t) f(int64_t{s} * ctx + t);
  }
}

}  // namespace

Mat key_map(const RotaryLayout& r, const std::vector<double>& theta) {
  MLKV_CHECK(static_cast<int>(theta.size()) == r.n_params());
  Mat P(r.d, r.d);
  const int h = r.half(), nf = r.n_free();
  for (int i = 0; i < h; ++i) {
    const double a = theta[static_cast<size_t>(2 * i)], b = theta[static_cast<size_t>(2 * i + 1)];
    P(i, i) = a;
    P(i, i + h) = -b;
    P(i + h, i) = b;
    P(i + h, i + h) = a;
  }
  for (int x = 0; x < nf; ++x) {
    for (int y = 0; y < nf; ++y)
      P(r.n_rot + x, r.n_rot + y) = theta[static_cast<size_t>(r.n_rot + x * nf + y)];
  }
  return P;
}

std::vector<double> key_params(const RotaryLayout& r, const Mat& P) {
  std::vector<double> th(static_cast<size_t>(r.n_params()));
  const int h = r.half(), nf = r.n_free();
  for (int i = 0; i < h; ++i) {
    th[static_cast<size_t>(2 * i)] = 0.5 * (P(i, i) + P(i + h, i + h));
    th[static_cast<size_t>(2 * i + 1)] = 0.5 * (P(i + h, i) - P(i, i + h));
  }
  for (int x = 0; x < nf; ++x) {
    for (int y = 0; y < nf; ++y)
      th[static_cast<size_t>(r.n_rot + x * nf + y)] = P(r.n_rot + x, r.n_rot + y);
  }
  return th;
}

std::vector<double> key_grad(const RotaryLayout& r, const Mat& dP) {
  std::vector<double> g(static_cast<size_t>(r.n_params()));
  const int h = r.half(), nf = r.n_free();
  for (int i = 0; i < h; ++i) {
    g[static_cast<size_t>(2 * i)] = dP(i, i) + dP(i + h, i + h);
    g[static_cast<size_t>(2 * i + 1)] = dP(i + h, i) - dP(i, i + h);
  }
  for (int x = 0; x < nf; ++x) {
    for (int y = 0; y < nf; ++y)
      g[static_cast<size_t>(r.n_rot + x * nf + y)] = dP(r.n_rot + x, r.n_rot + y);
  }
  return g;
}

double rotary_commutator(const RotaryLayout& r, const Mat& P, const std::vector<double>& inv_freq,
                         int n_pos) {
  double worst = 0;
  const int h = r.half();
  for (int pos = 0; pos < n_pos; ++pos) {
    Mat R = Mat::identity(r.d);
    for (int i = 0; i < h; ++i) {
      const double c = std::cos(pos * inv_freq[static_cast<size_t>(i)]);
      const double s = std::sin(pos * inv_freq[static_cast<size_t>(i)]);
      R(i, i) = c;
      R(i, i + h) = -s;
      R(i + h, i) = s;
      R(i + h, i + h) = c;
    }
    for (int i = 0; i < r.d; ++i) {
      for (int j = 0; j < r.d; ++j) {
        double pr = 0, rp = 0;
        for (int k = 0; k < r.d; ++k) {
          pr += P(i, k) * R(k, j);
          rp += R(i, k) * P(k, j);
        }
        worst = std::max(worst, std::fabs(pr - rp));
      }
    }
  }
  return worst;
}

Mat fit_key_map_ls(const RotaryLayout& r, HeadView ko, HeadView ks, const std::vector<int>& seqs,
                   int ctx) {
  const int d = r.d, h = r.half(), nf = r.n_free();
  Mat Sss(d, d), Sos(d, d);
  std::vector<double> so(static_cast<size_t>(d)), ss(static_cast<size_t>(d));
  int64_t n = 0;
  for_rows(seqs, ctx, [&](int64_t t) {
    const float* o = ko.row(t);
    const float* s = ks.row(t);
    for (int i = 0; i < d; ++i) {
      so[static_cast<size_t>(i)] += o[i];
      ss[static_cast<size_t>(i)] += s[i];
      for (int j = 0; j < d; ++j) {
        Sss(i, j) += double(s[i]) * s[j];
        Sos(i, j) += double(o[i]) * s[j];
      }
    }
    ++n;
  });
  std::vector<double> th(static_cast<size_t>(r.n_params()), 0.0);
  for (int i = 0; i < h; ++i) {
    const double den = Sss(i, i) + Sss(i + h, i + h);
    th[static_cast<size_t>(2 * i)] = den > 0 ? (Sos(i, i) + Sos(i + h, i + h)) / den : 1.0;
    th[static_cast<size_t>(2 * i + 1)] = den > 0 ? (Sos(i + h, i) - Sos(i, i + h)) / den : 0.0;
  }
  if (nf > 0 && n > 0) {
    // Free block, centred: (C_ss + l I) P^T = C_os^T.
    std::vector<double> A(static_cast<size_t>(nf) * nf), B(static_cast<size_t>(nf) * nf);
    double tr = 0;
    const double inv_n = 1.0 / static_cast<double>(n);
    for (int x = 0; x < nf; ++x) {
      for (int y = 0; y < nf; ++y) {
        const int i = r.n_rot + x, j = r.n_rot + y;
        A[static_cast<size_t>(x) * nf + y] = Sss(i, j) * inv_n - ss[static_cast<size_t>(i)] *
                                                                     ss[static_cast<size_t>(j)] *
                                                                     inv_n * inv_n;
        // B = C_os^T: B[y][x] = C_os[x][y]
        B[static_cast<size_t>(y) * nf + x] = Sos(i, j) * inv_n - so[static_cast<size_t>(i)] *
                                                                     ss[static_cast<size_t>(j)] *
                                                                     inv_n * inv_n;
      }
      tr += A[static_cast<size_t>(x) * nf + x];
    }
    const double lambda = 1e-9 * tr / nf + 1e-300;
    for (int x = 0; x < nf; ++x) A[static_cast<size_t>(x) * nf + x] += lambda;
    if (cholesky_solve(A, nf, B, nf)) {  // B = P^T
      for (int x = 0; x < nf; ++x) {
        for (int y = 0; y < nf; ++y)
          th[static_cast<size_t>(r.n_rot + x * nf + y)] = B[static_cast<size_t>(y) * nf + x];
      }
    } else {
      for (int x = 0; x < nf; ++x) th[static_cast<size_t>(r.n_rot + x * nf + x)] = 1.0;
    }
  }
  return key_map(r, th);
}

KlData kl_data(HeadView q, HeadView ko, HeadView ks, int d, int ctx, const std::vector<int>& seqs,
               int64_t max_pairs) {
  KlData k;
  k.d = d;
  k.ctx = ctx;
  k.scale = 1.0 / std::sqrt(static_cast<double>(d));
  const int64_t pairs_per_seq = int64_t{ctx} * (ctx + 1) / 2;
  std::vector<double> ko_t(static_cast<size_t>(d) * ctx), qs(static_cast<size_t>(d));
  for (int s : seqs) {
    if (!k.q.empty() && static_cast<int64_t>(k.q.size() + 1) * pairs_per_seq > max_pairs) break;
    std::vector<double> qq(static_cast<size_t>(ctx) * d), kr(static_cast<size_t>(ctx) * d),
        kt(static_cast<size_t>(d) * ctx);
    std::vector<double> p(static_cast<size_t>(pairs_per_seq));
    for (int t = 0; t < ctx; ++t) {
      const int64_t row = int64_t{s} * ctx + t;
      for (int i = 0; i < d; ++i) {
        qq[static_cast<size_t>(t) * d + i] = q.row(row)[i];
        kr[static_cast<size_t>(t) * d + i] = ks.row(row)[i];
        kt[static_cast<size_t>(i) * ctx + t] = ks.row(row)[i];
        ko_t[static_cast<size_t>(i) * ctx + t] = ko.row(row)[i];
      }
    }
    for (int t = 0; t < ctx; ++t) {
      double* pr = p.data() + static_cast<size_t>(t) * (t + 1) / 2;
      for (int i = 0; i < d; ++i)
        qs[static_cast<size_t>(i)] = k.scale * qq[static_cast<size_t>(t) * d + i];
      logits_row(qs.data(), ko_t.data(), d, ctx, t + 1, pr);
      softmax_inplace(pr, t + 1);
      for (int u = 0; u <= t; ++u) {
        if (pr[u] > 0) k.neg_entropy += pr[u] * std::log(pr[u]);
      }
    }
    k.q.push_back(std::move(qq));
    k.ks.push_back(std::move(kr));
    k.ks_t.push_back(std::move(kt));
    k.p.push_back(std::move(p));
    k.n_queries += ctx;
  }
  return k;
}

double kl_objective(const KlData& k, const Mat& P, Mat* dP) {
  const int d = k.d, ctx = k.ctx;
  if (k.n_queries == 0) return 0;
  std::vector<double> qm(static_cast<size_t>(d)), s(static_cast<size_t>(ctx)),
      w(static_cast<size_t>(d));
  double F = 0;
  if (dP != nullptr) *dP = Mat(d, d);
  for (size_t si = 0; si < k.q.size(); ++si) {
    const double* kt = k.ks_t[si].data();
    const double* kr = k.ks[si].data();
    for (int t = 0; t < ctx; ++t) {
      const double* q = k.q[si].data() + static_cast<size_t>(t) * d;
      const double* p = k.p[si].data() + static_cast<size_t>(t) * (t + 1) / 2;
      map_query(P, q, d, k.scale, qm.data());
      logits_row(qm.data(), kt, d, ctx, t + 1, s.data());
      double ps = 0;
      for (int u = 0; u <= t; ++u) ps += p[u] * s[u];
      F += softmax_inplace(s.data(), t + 1) - ps;
      if (dP == nullptr) continue;
      // d/dlogit_u = p'_u - p_u; logit_u = scale q^T P k_u: w = sum_u (p'_u - p_u) k_u.
      std::fill(w.begin(), w.end(), 0.0);
      for (int u = 0; u <= t; ++u) {
        const double g = s[static_cast<size_t>(u)] - p[u];
        const double* ku = kr + static_cast<size_t>(u) * d;
        for (int i = 0; i < d; ++i) w[static_cast<size_t>(i)] += g * ku[i];
      }
      for (int i = 0; i < d; ++i) {
        const double a = k.scale * q[i];
        double* row = &(*dP)(i, 0);
        for (int j = 0; j < d; ++j) row[j] += a * w[static_cast<size_t>(j)];
      }
    }
  }
  const double inv = 1.0 / static_cast<double>(k.n_queries);
  if (dP != nullptr) {
    for (double& v : dP->a) v *= inv;
  }
  return (F + k.neg_entropy) * inv;
}

Mat fit_key_map_kl(const KlData& k, const RotaryLayout& r, const Mat& init, int max_iter) {
  if (k.n_queries == 0 || max_iter <= 0) return init;
  auto f = [&](const std::vector<double>& th, std::vector<double>* g) {
    Mat dP;
    const double v = kl_objective(k, key_map(r, th), &dP);
    *g = key_grad(r, dP);
    return v;
  };
  return key_map(r, lbfgs(f, key_params(r, init), max_iter));
}

void attend_head(HeadView q, HeadView k, HeadView v, const Mat& P, int d, int ctx, int n_seq,
                 double* out, int64_t out_stride) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> kt(static_cast<size_t>(d) * ctx), vv(static_cast<size_t>(ctx) * d),
      qd(static_cast<size_t>(d)), qm(static_cast<size_t>(d)), s(static_cast<size_t>(ctx));
  for (int sq = 0; sq < n_seq; ++sq) {
    const int64_t r0 = int64_t{sq} * ctx;
    for (int t = 0; t < ctx; ++t) {
      for (int i = 0; i < d; ++i) {
        kt[static_cast<size_t>(i) * ctx + t] = k.row(r0 + t)[i];
        vv[static_cast<size_t>(t) * d + i] = v.row(r0 + t)[i];
      }
    }
    for (int t = 0; t < ctx; ++t) {
      for (int i = 0; i < d; ++i) qd[static_cast<size_t>(i)] = q.row(r0 + t)[i];
      map_query(P, qd.data(), d, scale, qm.data());
      logits_row(qm.data(), kt.data(), d, ctx, t + 1, s.data());
      softmax_inplace(s.data(), t + 1);
      double* o = out + (r0 + t) * out_stride;
      std::fill(o, o + d, 0.0);
      for (int u = 0; u <= t; ++u) {
        const double a = s[static_cast<size_t>(u)];
        const double* vr = vv.data() + static_cast<size_t>(u) * d;
        for (int i = 0; i < d; ++i) o[i] += a * vr[i];
      }
    }
  }
}

Moments output_moments(const double* o, const double* o_hat, int Q, const std::vector<int>& seqs,
                       int ctx) {
  Moments m;
  m.Q = Q;
  const int D = m.dim();
  m.s.assign(static_cast<size_t>(D) * D, 0.0);
  std::vector<int64_t> rows;
  for_rows(seqs, ctx, [&](int64_t t) { rows.push_back(t); });
  m.n = static_cast<int64_t>(rows.size());
  constexpr int kBlock = 64;
  std::vector<double> Z(static_cast<size_t>(kBlock) * D);
  for (size_t b0 = 0; b0 < rows.size(); b0 += kBlock) {
    const int nb = static_cast<int>(std::min<size_t>(kBlock, rows.size() - b0));
    for (int r = 0; r < nb; ++r) {
      const int64_t t = rows[b0 + static_cast<size_t>(r)];
      double* z = Z.data() + static_cast<size_t>(r) * D;
      std::copy(o + t * Q, o + (t + 1) * Q, z);
      std::copy(o_hat + t * Q, o_hat + (t + 1) * Q, z + Q);
      z[2 * Q] = 1.0;
    }
#pragma omp parallel for schedule(dynamic, 8)
    for (int i = 0; i < D; ++i) {
      double* srow = m.s.data() + static_cast<size_t>(i) * D;
      for (int r = 0; r < nb; ++r) {
        const double* z = Z.data() + static_cast<size_t>(r) * D;
        const double zi = z[i];
        for (int j = i; j < D; ++j) srow[j] += zi * z[j];
      }
    }
  }
  for (int i = 0; i < D; ++i) {
    for (int j = 0; j < i; ++j)
      m.s[static_cast<size_t>(i) * D + j] = m.s[static_cast<size_t>(j) * D + i];
  }
  return m;
}

OutputMap fit_output_map(const Moments& m, double kappa, bool bias) {
  const int Q = m.Q;
  OutputMap f;
  if (m.n == 0) return f;
  const double n = static_cast<double>(m.n);
  std::vector<double> mo(static_cast<size_t>(Q)), mh(static_cast<size_t>(Q));
  for (int i = 0; i < Q; ++i) {
    mo[static_cast<size_t>(i)] = bias ? m.at(i, 2 * Q) / n : 0.0;
    mh[static_cast<size_t>(i)] = bias ? m.at(Q + i, 2 * Q) / n : 0.0;
  }
  std::vector<double> A(static_cast<size_t>(Q) * Q), B(static_cast<size_t>(Q) * Q);
  double tr = 0;
  for (int i = 0; i < Q; ++i) {
    for (int j = 0; j < Q; ++j) {
      A[static_cast<size_t>(i) * Q + j] =
          m.at(Q + i, Q + j) / n - mh[static_cast<size_t>(i)] * mh[static_cast<size_t>(j)];
      // B = C_oh^T: B[j][i] = C_oh[i][j]
      B[static_cast<size_t>(j) * Q + i] =
          m.at(i, Q + j) / n - mo[static_cast<size_t>(i)] * mh[static_cast<size_t>(j)];
    }
    tr += A[static_cast<size_t>(i) * Q + i];
  }
  const double lambda = kappa * tr / Q;
  for (int i = 0; i < Q; ++i) {
    A[static_cast<size_t>(i) * Q + i] += lambda;
    B[static_cast<size_t>(i) * Q + i] += lambda;
  }
  if (!cholesky_solve(A, Q, B, Q)) return f;  // B = W^T
  f.W = Mat(Q, Q);
  for (int i = 0; i < Q; ++i) {
    for (int j = 0; j < Q; ++j) f.W(i, j) = B[static_cast<size_t>(j) * Q + i];
  }
  if (bias) {
    f.c.resize(static_cast<size_t>(Q));
    for (int i = 0; i < Q; ++i) {
      double s = mo[static_cast<size_t>(i)];
      for (int j = 0; j < Q; ++j) s -= f.W(i, j) * mh[static_cast<size_t>(j)];
      f.c[static_cast<size_t>(i)] = s;
    }
  }
  return f;
}

double output_error(const Moments& m, const OutputMap& f, const Mat& G) {
  const int Q = m.Q, D = m.dim();
  // r = A z with A = [I, -W, -c]; error = sum_t r^T G r = tr(G A S A^T).
  Mat A(Q, D);
  for (int i = 0; i < Q; ++i) {
    A(i, i) = 1.0;
    for (int j = 0; j < Q; ++j) A(i, Q + j) = f.W.empty() ? (i == j ? -1.0 : 0.0) : -f.W(i, j);
    A(i, 2 * Q) = f.c.empty() ? 0.0 : -f.c[static_cast<size_t>(i)];
  }
  Mat AS(Q, D);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < Q; ++i) {
    double* out = &AS(i, 0);
    for (int k = 0; k < D; ++k) {
      const double a = A(i, k);
      if (a == 0) continue;
      const double* srow = m.s.data() + static_cast<size_t>(k) * D;
      for (int j = 0; j < D; ++j) out[j] += a * srow[j];
    }
  }
  double err = 0;
#pragma omp parallel for schedule(static) reduction(+ : err)
  for (int i = 0; i < Q; ++i) {
    for (int j = 0; j < Q; ++j) {
      double r = 0;
      for (int k = 0; k < D; ++k) r += AS(i, k) * A(j, k);
      err += G(i, j) * r;
    }
  }
  return err;
}

std::vector<double> original_outputs(const LayerData& L) {
  const int H = L.n_head, d = L.rot.d, Q = H * d, per_src = H / L.n_head_kv_src;
  std::vector<double> o(static_cast<size_t>(int64_t{L.n_seq} * L.ctx * Q));
  const Mat none;
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < H; ++h) {
    const int64_t kv_off = int64_t{h / per_src} * d, kv_stride = int64_t{L.n_head_kv_src} * d;
    attend_head(HeadView{L.q + int64_t{h} * d, Q}, HeadView{L.ko + kv_off, kv_stride},
                HeadView{L.vo + kv_off, kv_stride}, none, d, L.ctx, L.n_seq,
                o.data() + int64_t{h} * d, Q);
  }
  return o;
}

LayerFold fit_layer(const LayerData& L, const FitOptions& opt) {
  const int H = L.n_head, d = L.rot.d, Q = H * d, ctx = L.ctx;
  const int64_t rows = int64_t{L.n_seq} * ctx;
  const int per_src = H / L.n_head_kv_src, per_kv = H / L.n_head_kv;
  auto qv = [&](int h) { return HeadView{L.q + int64_t{h} * d, int64_t{Q}}; };
  auto kov = [&](int h) {
    return HeadView{L.ko + int64_t{h / per_src} * d, int64_t{L.n_head_kv_src} * d};
  };
  auto ksv = [&](int h) {
    return HeadView{L.ks + int64_t{h / per_kv} * d, int64_t{L.n_head_kv} * d};
  };
  auto vsv = [&](int h) {
    return HeadView{L.vs + int64_t{h / per_kv} * d, int64_t{L.n_head_kv} * d};
  };

  // The original outputs and those with the shared K/V as they are.
  std::vector<double> o_own;
  if (L.o == nullptr) o_own = original_outputs(L);
  const double* o = L.o != nullptr ? L.o : o_own.data();
  std::vector<double> oh(static_cast<size_t>(rows * Q));
  const Mat none;
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < H; ++h) {
    attend_head(qv(h), ksv(h), vsv(h), none, d, ctx, L.n_seq, oh.data() + int64_t{h} * d, Q);
  }
  const Moments held_id = output_moments(o, oh.data(), Q, L.held, ctx);
  LayerFold r;
  r.key_maps.resize(static_cast<size_t>(H));
  r.held_rows = held_id.n;
  r.err_owner = r.err = output_error(held_id, OutputMap{}, *L.G);
  {
    double e = 0;  // tr(G S_oo)
    for (int i = 0; i < Q; ++i) {
      for (int j = 0; j < Q; ++j) e += (*L.G)(i, j) * held_id.at(i, j);
    }
    r.energy = e;
  }
  if (!opt.fold) return r;

  // Key maps per query head: identity, least squares, KL from the better of the two; the one
  // with the lowest held-out KL.
  std::vector<double> kl_id(static_cast<size_t>(H)), kl_best(static_cast<size_t>(H));
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < H; ++h) {
    const KlData fit = kl_data(qv(h), kov(h), ksv(h), d, ctx, L.fit, opt.kl_pairs);
    const KlData held = kl_data(qv(h), kov(h), ksv(h), d, ctx, L.held, opt.kl_pairs);
    const Mat I = Mat::identity(d);
    const Mat ls = fit_key_map_ls(L.rot, kov(h), ksv(h), L.fit, ctx);
    double best = kl_objective(held, I, nullptr);
    kl_id[static_cast<size_t>(h)] = best;
    Mat chosen;  // empty: identity
    const double ls_held = kl_objective(held, ls, nullptr);
    if (ls_held < best) {
      best = ls_held;
      chosen = ls;
    }
    if (opt.kl) {
      const Mat& init = kl_objective(fit, ls, nullptr) < kl_objective(fit, I, nullptr) ? ls : I;
      const Mat P = fit_key_map_kl(fit, L.rot, init, opt.kl_iters);
      const double v = kl_objective(held, P, nullptr);
      if (v < best) {
        best = v;
        chosen = P;
      }
    }
    if (!chosen.empty() && is_identity(chosen)) chosen = Mat();
    kl_best[static_cast<size_t>(h)] = best;
    r.key_maps[static_cast<size_t>(h)] = std::move(chosen);
  }
  for (int h = 0; h < H; ++h) {
    r.kl_owner += kl_id[static_cast<size_t>(h)] / H;
    r.kl += kl_best[static_cast<size_t>(h)] / H;
    if (!r.key_maps[static_cast<size_t>(h)].empty()) ++r.heads_folded;
  }

  // Outputs with the chosen key maps (heads without one keep theirs).
  std::vector<double> ohp;
  if (r.heads_folded > 0) {
    ohp = oh;
#pragma omp parallel for schedule(dynamic, 1)
    for (int h = 0; h < H; ++h) {
      const Mat& P = r.key_maps[static_cast<size_t>(h)];
      if (P.empty()) continue;
      attend_head(qv(h), ksv(h), vsv(h), P, d, ctx, L.n_seq, ohp.data() + int64_t{h} * d, Q);
    }
  }

  // The output maps of both variants for every ridge strength; the best on held-out rows.
  struct Best {
    double err;
    bool keys;
    OutputMap out;
  } best{r.err_owner, false, OutputMap{}};
  for (int variant = 0; variant < (r.heads_folded > 0 ? 2 : 1); ++variant) {
    const std::vector<double>& x = variant == 0 ? oh : ohp;
    const Moments fit = output_moments(o, x.data(), Q, L.fit, ctx);
    const Moments held = variant == 0 ? held_id : output_moments(o, x.data(), Q, L.held, ctx);
    if (variant == 1) {
      const double e = output_error(held, OutputMap{}, *L.G);
      if (e < best.err) best = {e, true, OutputMap{}};
    }
    const std::vector<double> kappas =
        opt.coarse_ridge ? std::vector<double>(std::begin(kCoarseRidge), std::end(kCoarseRidge))
                         : std::vector<double>(std::begin(kFineRidge), std::end(kFineRidge));
    for (double kappa : kappas) {
      OutputMap f = fit_output_map(fit, kappa, L.bias);
      if (f.W.empty()) continue;
      const double e = output_error(held, f, *L.G);
      if (e < best.err) best = {e, variant == 1, std::move(f)};
    }
  }
  if (!(r.err_owner > 0 && best.err < r.err_owner * (1.0 - opt.min_gain))) {
    best = {r.err_owner, false, OutputMap{}};
  }
  if (!best.keys) {
    for (Mat& P : r.key_maps) P = Mat();
    r.heads_folded = 0;
    r.kl = r.kl_owner;
  }
  r.out = std::move(best.out);
  r.err = best.err;
  return r;
}

}  // namespace mlkv::calib
