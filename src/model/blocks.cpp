#include "model/blocks.h"

#include "core/check.h"

namespace mlkv {

template <typename T>
void norm_forward(Backend<T>& be, const ModelConfig& c, const Tensor& w, const Tensor& b, const T* x,
                  T* y, T* mean, T* rstd, int n) {
  if (c.norm == NormType::kLayerNorm) {
    be.layernorm_forward(x, w, b, y, mean, rstd, n, c.n_embd, c.norm_eps);
  } else {
    be.rmsnorm_forward(x, w, y, rstd, n, c.n_embd, c.norm_eps);
  }
}

template <typename T>
void norm_backward(Backend<T>& be, const ModelConfig& c, const Tensor& w, const T* dy, const T* x,
                   const T* mean, const T* rstd, T* dx, Tensor& dw, Tensor& db, int n) {
  if (c.norm == NormType::kLayerNorm) {
    be.layernorm_backward(dy, x, w, mean, rstd, dx, dw, &db, n, c.n_embd);
  } else {
    be.rmsnorm_backward(dy, x, w, rstd, dx, dw, n, c.n_embd);
  }
}

template <typename T>
void attention_in_forward(Backend<T>& be, const ModelConfig& c, const LayerSpec& s,
                          const LayerWeights& w, const LayerActs<T>& a, int n, const int32_t* pos,
                          const ops::RopeTable<T>& rt) {
  const int E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv(), d = c.n_embd_head;
  be.linear_forward(a.xn1, w.wq, w.bq, a.q, n, E, Q, false);
  be.rope(a.q, n, c.n_head, d, pos, rt, false);
  if (!s.owns_kv) return;
  be.linear_forward(a.xn1, w.wk, w.bk, a.k, n, E, KV, false);
  be.linear_forward(a.xn1, w.wv, w.bv, a.v, n, E, KV, false);
  if (s.shares_raw_keys) be.copy(a.k_raw, a.k, int64_t{n} * KV);
  be.rope(a.k, n, c.n_head_kv, d, pos, rt, false);
}

template <typename T>
void attention_in_backward(Backend<T>& be, const ModelConfig& c, const LayerSpec& s,
                           const LayerWeights& w, LayerWeights& g, const LayerActs<T>& a, int n,
                           const int32_t* pos, const ops::RopeTable<T>& rt, T* dq, T* dk_rot,
                           const T* dk_raw, const T* dv, T* dk_tmp, T* dxn) {
  const int E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv(), d = c.n_embd_head;
  be.rope(dq, n, c.n_head, d, pos, rt, /*inverse=*/true);  // a rotation's transpose
  be.linear_backward(dq, a.xn1, w.wq, dxn, &g.wq, &g.bq, n, E, Q, /*accumulate_dx=*/false);
  if (!s.owns_kv) return;
  // d loss / d keys (before rotary) = unrotated gradient w.r.t. the rotated keys (the owner and
  // every post-sharing reader) + the gradient w.r.t. the raw keys (pre-sharing consumers).
  T* dk = dk_tmp;
  if (dk_rot) {
    be.rope(dk_rot, n, c.n_head_kv, d, pos, rt, /*inverse=*/true);
    be.copy(dk, dk_rot, int64_t{n} * KV);
  } else {
    be.zero(dk, int64_t{n} * KV);
  }
  if (dk_raw) be.add(dk, dk_raw, int64_t{n} * KV);
  be.linear_backward(dk, a.xn1, w.wk, dxn, &g.wk, &g.bk, n, E, KV, true);
  be.linear_backward(dv, a.xn1, w.wv, dxn, &g.wv, &g.bv, n, E, KV, true);
}

template <typename T>
void mlp_forward(Backend<T>& be, const ModelConfig& c, const LayerWeights& w, const LayerActs<T>& a,
                 int n, T* out) {
  const int E = c.n_embd, F = c.n_ff;
  if (c.mlp == MlpType::kSwiGlu) {
    be.linear_forward(a.xn2, w.w_gate, w.b_gate, a.gate, n, E, F, false);
    be.linear_forward(a.xn2, w.w_up, w.b_up, a.u, n, E, F, false);
    be.swiglu_forward(a.gate, a.u, a.act, int64_t{n} * F);
  } else {
    be.linear_forward(a.xn2, w.w_up, w.b_up, a.u, n, E, F, false);
    be.gelu_forward(a.u, a.act, int64_t{n} * F, c.gelu_tanh);
  }
  be.linear_forward(a.act, w.w_down, w.b_down, out, n, F, E, /*accumulate=*/true);
}

template <typename T>
void mlp_backward(Backend<T>& be, const ModelConfig& c, const LayerWeights& w, LayerWeights& g,
                  const LayerActs<T>& a, int n, const T* dy, T* dxn, T* d_act, T* d_up, T* act) {
  const int E = c.n_embd, F = c.n_ff;
  // d(activation) = dy W_down
  be.linear_backward(dy, nullptr, w.w_down, d_act, nullptr, nullptr, n, F, E, false);
  if (c.mlp == MlpType::kSwiGlu) {
    be.swiglu_backward(a.gate, a.u, d_act, d_act, d_up, act, int64_t{n} * F);
  } else {
    be.gelu_backward(a.u, d_act, d_act, act, int64_t{n} * F, c.gelu_tanh);
  }
  be.linear_backward(dy, act, w.w_down, nullptr, &g.w_down, &g.b_down, n, F, E, false);
  if (c.mlp == MlpType::kSwiGlu) {
    be.linear_backward(d_act, a.xn2, w.w_gate, dxn, &g.w_gate, &g.b_gate, n, E, F, false);
    be.linear_backward(d_up, a.xn2, w.w_up, dxn, &g.w_up, &g.b_up, n, E, F, true);
  } else {
    be.linear_backward(d_act, a.xn2, w.w_up, dxn, &g.w_up, &g.b_up, n, E, F, false);
  }
}

#define MLKV_INSTANTIATE(T)                                                                        \
  template void norm_forward<T>(Backend<T>&, const ModelConfig&, const Tensor&, const Tensor&,      \
                                const T*, T*, T*, T*, int);                                        \
  template void norm_backward<T>(Backend<T>&, const ModelConfig&, const Tensor&, const T*,          \
                                 const T*, const T*, const T*, T*, Tensor&, Tensor&, int);         \
  template void attention_in_forward<T>(Backend<T>&, const ModelConfig&, const LayerSpec&,          \
                                        const LayerWeights&, const LayerActs<T>&, int,             \
                                        const int32_t*, const ops::RopeTable<T>&);                 \
  template void attention_in_backward<T>(Backend<T>&, const ModelConfig&, const LayerSpec&,         \
                                         const LayerWeights&, LayerWeights&, const LayerActs<T>&,  \
                                         int, const int32_t*, const ops::RopeTable<T>&, T*, T*,     \
                                         const T*, const T*, T*, T*);                              \
  template void mlp_forward<T>(Backend<T>&, const ModelConfig&, const LayerWeights&,                \
                               const LayerActs<T>&, int, T*);                                      \
  template void mlp_backward<T>(Backend<T>&, const ModelConfig&, const LayerWeights&,               \
                                LayerWeights&, const LayerActs<T>&, int, const T*, T*, T*, T*, T*);
MLKV_INSTANTIATE(float)
MLKV_INSTANTIATE(double)
#undef MLKV_INSTANTIATE

}  // namespace mlkv
