// LayerNorm / RMSNorm rows forward and backward, column reductions for their weight and bias
// gradients, the bias-gradient column sum, rotary and the AdamW update (kernels.h), written once
// over the vector type V.
// Reductions along a row use vector accumulators (kLanes partial sums); column reductions add
// rows in order, so results never depend on the number of threads.

inline V vload_n(const float* p, int r) { return r == kLanes ? vload(p) : vload_partial(p, r); }
inline void vstore_n(float* p, V a, int r) {
  if (r == kLanes) {
    vstore(p, a);
  } else {
    vstore_partial(p, a, r);
  }
}

inline float row_sum(const float* x, int E) {
  V acc = vzero();
  for (int i = 0; i < E; i += kLanes) acc = vadd(acc, vload_n(x + i, static_cast<int>(tail_of(E, i))));
  return vsum(acc);
}

void layernorm_row(const float* x, const float* w, const float* b, float* y, int E, float eps,
                   float* mean, float* rstd) {
  const float m = row_sum(x, E) / static_cast<float>(E);
  const V mv = vset1(m);
  V var = vzero();
  int i = 0;
  for (; i + kLanes <= E; i += kLanes) {
    const V d = vsub(vload(x + i), mv);
    var = vfma(d, d, var);
  }
  float vs = vsum(var);
  for (; i < E; ++i) vs += (x[i] - m) * (x[i] - m);
  const float v = vs / static_cast<float>(E);
  const float rs = 1.0f / std::sqrt(v + eps);
  const V rv = vset1(rs);
  for (i = 0; i < E; i += kLanes) {
    const int r = static_cast<int>(tail_of(E, i));
    V o = vmul(vmul(vsub(vload_n(x + i, r), mv), rv), vload_n(w + i, r));
    if (b) o = vadd(o, vload_n(b + i, r));
    vstore_n(y + i, o, r);
  }
  *mean = m;
  *rstd = rs;
}

void rmsnorm_row(const float* x, const float* w, float* y, int E, float eps, float* rstd) {
  V ss = vzero();
  for (int i = 0; i < E; i += kLanes) {
    const V xv = vload_n(x + i, static_cast<int>(tail_of(E, i)));
    ss = vfma(xv, xv, ss);
  }
  const float rs = 1.0f / std::sqrt(vsum(ss) / static_cast<float>(E) + eps);
  const V rv = vset1(rs);
  for (int i = 0; i < E; i += kLanes) {
    const int r = static_cast<int>(tail_of(E, i));
    vstore_n(y + i, vmul(vmul(vload_n(x + i, r), rv), vload_n(w + i, r)), r);
  }
  *rstd = rs;
}

// LayerNorm: dx += rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat = (x - mean) rstd.
// RMSNorm:   dx += rstd (g - xhat mean(g xhat)),          xhat = x rstd (mean = 0).
void norm_bwd_row(const float* dy, const float* x, const float* w, float mean, float rstd,
                  float* dx, int E, bool rms) {
  const V mv = vset1(mean);
  V sg = vzero(), sgx = vzero();
  for (int i = 0; i < E; i += kLanes) {
    const int r = static_cast<int>(tail_of(E, i));
    const V g = vmul(vload_n(dy + i, r), vload_n(w + i, r));
    sg = vadd(sg, g);
    sgx = vfma(g, vsub(vload_n(x + i, r), mv), sgx);  // padded lanes: g = 0
  }
  const float fe = static_cast<float>(E);
  const float a = rms ? 0.0f : vsum(sg) / fe;
  const float c = vsum(sgx) * rstd * rstd / fe;  // xhat mean(g xhat) = (x - mean) c
  const V av = vset1(a), cv = vset1(c), rv = vset1(rstd);
  for (int i = 0; i < E; i += kLanes) {
    const int r = static_cast<int>(tail_of(E, i));
    const V g = vmul(vload_n(dy + i, r), vload_n(w + i, r));
    const V xc = vsub(vload_n(x + i, r), mv);  // x - mean
    const V t = vfnma(xc, cv, vsub(g, av));
    vstore_n(dx + i, vfma(rv, t, vload_n(dx + i, r)), r);
  }
}

void norm_bwd_cols(const float* dy, const float* x, const float* mean, const float* rstd, int n,
                   int E, int i0, int i1, float* dw, float* db) {
  constexpr int kMaxVec = (64 + kLanes - 1) / kLanes;
  const int width = i1 - i0;
  const int nvec = (width + kLanes - 1) / kLanes;
  V aw[kMaxVec], ab[kMaxVec];
  for (int v = 0; v < nvec; ++v) aw[v] = ab[v] = vzero();
  for (int t = 0; t < n; ++t) {
    const float* g = dy + int64_t{t} * E + i0;
    const float* xr = x + int64_t{t} * E + i0;
    const V mv = vset1(mean ? mean[t] : 0.0f), rv = vset1(rstd[t]);
    for (int v = 0; v < nvec; ++v) {
      const int r = static_cast<int>(tail_of(width, v * kLanes));
      const V gv = vload_n(g + v * kLanes, r);
      aw[v] = vfma(gv, vmul(vsub(vload_n(xr + v * kLanes, r), mv), rv), aw[v]);
      ab[v] = vadd(ab[v], gv);
    }
  }
  for (int v = 0; v < nvec; ++v) {
    const int r = static_cast<int>(tail_of(width, v * kLanes));
    vstore_n(dw + i0 + v * kLanes, vadd(vload_n(dw + i0 + v * kLanes, r), aw[v]), r);
    if (db) vstore_n(db + i0 + v * kLanes, vadd(vload_n(db + i0 + v * kLanes, r), ab[v]), r);
  }
}

void colsum(const float* dy, int n, int N, int i0, int i1, float* db) {
  constexpr int kMaxVec = (64 + kLanes - 1) / kLanes;
  const int width = i1 - i0;
  const int nvec = (width + kLanes - 1) / kLanes;
  V acc[kMaxVec];
  for (int v = 0; v < nvec; ++v) acc[v] = vzero();
  for (int t = 0; t < n; ++t) {
    const float* row = dy + int64_t{t} * N + i0;
    for (int v = 0; v < nvec; ++v) {
      acc[v] = vadd(acc[v], vload_n(row + v * kLanes, static_cast<int>(tail_of(width, v * kLanes))));
    }
  }
  for (int v = 0; v < nvec; ++v) {
    const int r = static_cast<int>(tail_of(width, v * kLanes));
    vstore_n(db + i0 + v * kLanes, vadd(vload_n(db + i0 + v * kLanes, r), acc[v]), r);
  }
}

void rope_row(float* x, int n_heads, int head_dim, const float* c, const float* s, int half,
              float sign) {
  const V sg = vset1(sign);
  for (int i = 0; i < half; i += kLanes) {
    const int r = static_cast<int>(tail_of(half, i));
    const V cv = vload_n(c + i, r), sv = vmul(sg, vload_n(s + i, r));
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + int64_t{h} * head_dim;
      const V a = vload_n(v + i, r), b = vload_n(v + i + half, r);
      vstore_n(v + i, vfnma(b, sv, vmul(a, cv)), r);       // a c - b s
      vstore_n(v + i + half, vfma(a, sv, vmul(b, cv)), r);  // b c + a s
    }
  }
}

// m = b1 m + (1 - b1) g s, v = b2 v + (1 - b2) (g s)^2,
// p -= lr (m bc1 / (sqrt(v bc2) + eps) + wd p)   (s: grad_scale; bc: bias corrections)
void adamw(float* p, float* g, float* m, float* v, int64_t n, const AdamWStep& h, bool zero_grad) {
  const V b1 = vset1(h.beta1), b2 = vset1(h.beta2), c1 = vset1(1.0f - h.beta1),
          c2 = vset1(1.0f - h.beta2), bc1 = vset1(h.bias_corr1), bc2 = vset1(h.bias_corr2),
          eps = vset1(h.eps), lr = vset1(h.lr), gs = vset1(h.grad_scale),
          wd = vset1(h.weight_decay);
  for (int64_t i = 0; i < n; i += kLanes) {
    const int r = static_cast<int>(tail_of(n, i));
    const V gj = vmul(vload_n(g + i, r), gs);
    const V mj = vadd(vmul(b1, vload_n(m + i, r)), vmul(c1, gj));
    const V vj = vadd(vmul(b2, vload_n(v + i, r)), vmul(vmul(c2, gj), gj));
    const V denom = vadd(vsqrt(vmul(vj, bc2)), eps);
    const V pj = vload_n(p + i, r);
    const V upd = vadd(vdiv(vmul(mj, bc1), denom), vmul(wd, pj));
    vstore_n(m + i, mj, r);
    vstore_n(v + i, vj, r);
    vstore_n(p + i, vsub(pj, vmul(lr, upd)), r);
    if (zero_grad) vstore_n(g + i, vzero(), r);
  }
}
