// Row and element-wise kernels (kernels.h: max_n, exp_sub_sum, scale_n, add_n, dot_n, GELU and
// SwiGLU forward/backward), written once over the vector type V. Loop tails go through the same
// vector formulas on a partial vector (vload_partial), so a row never mixes two approximations.
//
// GELU, exact form: x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, with erf from Abramowitz &
// Stegun 7.1.26 (absolute error <= 1.5e-7), which shares exp(-x^2 / 2) with the derivative
// Phi(x) + x phi(x). tanh form ("gelu_new"): x (1 + tanh u) / 2, u = sqrt(2/pi) (x + 0.044715
// x^3), tanh u = 1 - 2 / (1 + e^{2u}). SiLU: x sigmoid(x), sigmoid(x) = 1 / (1 + e^-x).

inline int64_t tail_of(int64_t n, int64_t i) { return n - i < kLanes ? n - i : kLanes; }

// max of x[0, n); NaN when any x is NaN (so a NaN logit gives a NaN loss on every path).
float max_n(const float* x, int64_t n) {
  float m = -__builtin_inff();
  int64_t i = 0;
  if (n >= kLanes) {
    V a = vload(x), b = a;
    for (i = kLanes; i + 2 * kLanes <= n; i += 2 * kLanes) {
      a = vmax_nan(a, vload(x + i));
      b = vmax_nan(b, vload(x + i + kLanes));
    }
    for (; i + kLanes <= n; i += kLanes) a = vmax_nan(a, vload(x + i));
    a = vmax_nan(a, b);
    if (vany_nan(a)) return __builtin_nanf("");
    m = vmaxall(a);
  }
  for (; i < n; ++i) {
    if (x[i] != x[i]) return x[i];
    m = x[i] > m ? x[i] : m;
  }
  return m;
}

float exp_sub_sum(float* x, int64_t n, float shift) {
  const V sh = vset1(shift);
  V acc = vzero();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const V e = vexp(vsub(vload(x + i), sh));
    vstore(x + i, e);
    acc = vadd(acc, e);
  }
  float sum = vsum(acc);
  if (i < n) {
    const int r = static_cast<int>(n - i);
    vstore_partial(x + i, vexp(vsub(vload_partial(x + i, r), sh)), r);
    for (; i < n; ++i) sum += x[i];
  }
  return sum;
}

void scale_n(float* x, int64_t n, float a) {
  const V av = vset1(a);
  for (int64_t i = 0; i < n; i += kLanes) {
    const int r = static_cast<int>(tail_of(n, i));
    if (r == kLanes) {
      vstore(x + i, vmul(av, vload(x + i)));
    } else {
      vstore_partial(x + i, vmul(av, vload_partial(x + i, r)), r);
    }
  }
}

void add_n(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vstore(y + i, vadd(vload(y + i), vload(x + i)));
  for (; i < n; ++i) y[i] += x[i];
}

float dot_n(const float* a, const float* b, int64_t n) {
  V s0 = vzero(), s1 = vzero();
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    s0 = vfma(vload(a + i), vload(b + i), s0);
    s1 = vfma(vload(a + i + kLanes), vload(b + i + kLanes), s1);
  }
  for (; i + kLanes <= n; i += kLanes) s0 = vfma(vload(a + i), vload(b + i), s0);
  float s = vsum(vadd(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// gelu(x), and gelu'(x) through *deriv when not null.
inline V gelu_v(V x, V* deriv) {
  const V one = vset1(1.0f), half = vset1(0.5f);
  const V z = vmul(x, vset1(0.70710678118654752f));  // x / sqrt 2
  const V t = vdiv(one, vfma(vset1(0.3275911f), vabs(z), one));
  V p = vset1(1.061405429f);
  p = vfma(p, t, vset1(-1.453152027f));
  p = vfma(p, t, vset1(1.421413741f));
  p = vfma(p, t, vset1(-0.284496736f));
  p = vfma(p, t, vset1(0.254829592f));
  p = vmul(p, t);
  const V e = vexp(vmul(vmul(z, z), vset1(-1.0f)));  // exp(-x^2 / 2)
  const V erf = vcopysign(vfnma(p, e, one), z);
  const V cdf = vmul(half, vadd(one, erf));
  if (deriv) *deriv = vfma(vmul(x, e), vset1(0.3989422804014327f), cdf);
  return vmul(x, cdf);
}

inline V gelu_tanh_v(V x, V* deriv) {
  const V one = vset1(1.0f), half = vset1(0.5f);
  const V k = vset1(0.7978845608028654f), c = vset1(0.044715f);
  const V x2 = vmul(x, x);
  const V u = vmul(k, vfma(vmul(c, x2), x, x));
  const V th = vsub(one, vdiv(vset1(2.0f), vadd(one, vexp(vadd(u, u)))));
  const V a = vmul(half, vadd(one, th));
  if (deriv) {
    const V sech2 = vfnma(th, th, one);
    const V du = vmul(k, vfma(vset1(3.0f), vmul(c, x2), one));
    *deriv = vfma(vmul(half, x), vmul(sech2, du), a);
  }
  return vmul(x, a);
}

inline V sigmoid_v(V x) {
  const V one = vset1(1.0f);
  return vdiv(one, vadd(one, vexp(vsub(vzero(), x))));
}

void gelu_fwd(const float* x, float* y, int64_t n, bool tanh_form) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int r = static_cast<int>(tail_of(n, i));
    const V xv = r == kLanes ? vload(x + i) : vload_partial(x + i, r);
    const V g = tanh_form ? gelu_tanh_v(xv, nullptr) : gelu_v(xv, nullptr);
    if (r == kLanes) {
      vstore(y + i, g);
    } else {
      vstore_partial(y + i, g, r);
    }
  }
}

void gelu_bwd(const float* x, const float* dy, float* dx, float* y, int64_t n, bool tanh_form) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int r = static_cast<int>(tail_of(n, i));
    const bool full = r == kLanes;
    const V xv = full ? vload(x + i) : vload_partial(x + i, r);
    const V d = full ? vload(dy + i) : vload_partial(dy + i, r);
    V deriv;
    const V g = tanh_form ? gelu_tanh_v(xv, &deriv) : gelu_v(xv, &deriv);
    if (full) {
      if (y) vstore(y + i, g);
      vstore(dx + i, vmul(d, deriv));
    } else {
      if (y) vstore_partial(y + i, g, r);
      vstore_partial(dx + i, vmul(d, deriv), r);
    }
  }
}

void swiglu_fwd(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int r = static_cast<int>(tail_of(n, i));
    const bool full = r == kLanes;
    const V g = full ? vload(gate + i) : vload_partial(gate + i, r);
    const V u = full ? vload(up + i) : vload_partial(up + i, r);
    const V out = vmul(vmul(g, sigmoid_v(g)), u);
    if (full) {
      vstore(y + i, out);
    } else {
      vstore_partial(y + i, out, r);
    }
  }
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
void swiglu_bwd(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                float* y, int64_t n) {
  const V one = vset1(1.0f);
  for (int64_t i = 0; i < n; i += kLanes) {
    const int r = static_cast<int>(tail_of(n, i));
    const bool full = r == kLanes;
    const V g = full ? vload(gate + i) : vload_partial(gate + i, r);
    const V u = full ? vload(up + i) : vload_partial(up + i, r);
    const V d = full ? vload(dy + i) : vload_partial(dy + i, r);
    const V s = sigmoid_v(g);
    const V silu = vmul(g, s);
    const V dsilu = vmul(s, vfma(g, vsub(one, s), one));
    const V out_dup = vmul(d, silu), out_dgate = vmul(vmul(d, u), dsilu);
    if (full) {
      if (y) vstore(y + i, vmul(silu, u));
      vstore(dup + i, out_dup);
      vstore(dgate + i, out_dgate);
    } else {
      if (y) vstore_partial(y + i, vmul(silu, u), r);
      vstore_partial(dup + i, out_dup, r);
      vstore_partial(dgate + i, out_dgate, r);
    }
  }
}
