#include "model/transformer.h"

#include "core/check.h"
#include "core/timer.h"

namespace mlkv {

const char* op_name(Op op) {
  switch (op) {
    case Op::kEmbed: return "embedding";
    case Op::kNorm: return "norms";
    case Op::kQkv: return "q/k/v projections";
    case Op::kRope: return "rotary";
    case Op::kAttention: return "attention (softmax, QK^T, PV)";
    case Op::kAttnOut: return "attention output projection";
    case Op::kMlpMatmul: return "MLP projections";
    case Op::kActivation: return "MLP activation";
    case Op::kHead: return "output layer (+ loss in training)";
    case Op::kResidual: return "residual adds / copies";
    case Op::kCount: break;
  }
  return "?";
}

template <typename T>
Transformer<T>::Transformer(const ModelConfig& cfg, Backend<T>& be)
    : cfg_(cfg), be_(be), specs_(layer_specs(cfg)) {}

template <typename T>
void Transformer<T>::lap_start() {
  if (profile) lap_t_ = now_seconds();
}

template <typename T>
void Transformer<T>::lap(Op op, bool bwd) {
  if (!profile) return;
  const double t = now_seconds();
  (bwd ? profile->bwd : profile->fwd)[static_cast<int>(op)] += t - lap_t_;
  lap_t_ = t;
}

template <typename T>
void Transformer<T>::embed(const ModelWeights& w, const int32_t* tok, int n, T* x) {
  be_.embedding_forward(tok, w.tok_embd, x, n, cfg_.n_embd);
  lap(Op::kEmbed, false);
}

template <typename T>
void Transformer<T>::layer_forward(int il, const LayerWeights& w, const LayerActs<T>& a, int n,
                                   const int32_t* pos, const ops::RopeTable<T>& rt,
                                   AttentionContext<T>& attn) {
  const ModelConfig& c = cfg_;
  const LayerSpec& s = specs_[static_cast<size_t>(il)];
  const int E = c.n_embd, Q = c.n_embd_q();
  const int64_t nE = int64_t{n} * E;

  norm_forward(be_, c, w.attn_norm, w.attn_norm_b, a.x_in, a.xn1, a.mean1, a.rstd1, n);
  lap(Op::kNorm, false);
  attention_in_forward(be_, c, s, w, a, n, pos, rt);
  lap(Op::kQkv, false);
  attn.attend(s, a);
  lap(Op::kAttention, false);

  if (c.parallel_residual) {
    // x + attn(norm1 x) + mlp(norm2 x): both branches read the layer's input.
    be_.copy(a.x_out, a.x_in, nE);
    lap(Op::kResidual, false);
    norm_forward(be_, c, w.ffn_norm, w.ffn_norm_b, a.x_in, a.xn2, a.mean2, a.rstd2, n);
    lap(Op::kNorm, false);
    be_.linear_forward(a.o, w.wo, w.bo, a.x_out, n, Q, E, /*accumulate=*/true);
    lap(Op::kAttnOut, false);
  } else {
    be_.copy(a.x_mid, a.x_in, nE);
    be_.linear_forward(a.o, w.wo, w.bo, a.x_mid, n, Q, E, /*accumulate=*/true);
    lap(Op::kAttnOut, false);
    norm_forward(be_, c, w.ffn_norm, w.ffn_norm_b, a.x_mid, a.xn2, a.mean2, a.rstd2, n);
    lap(Op::kNorm, false);
    be_.copy(a.x_out, a.x_mid, nE);
    lap(Op::kResidual, false);
  }
  mlp_forward(be_, c, w, a, n, a.x_out);
  lap(Op::kMlpMatmul, false);
}

template <typename T>
void Transformer<T>::layer_backward(int il, const LayerWeights& w, LayerWeights& g,
                                    const LayerActs<T>& a, int n, const int32_t* pos,
                                    const ops::RopeTable<T>& rt, T* dx, const BackwardScratch& s,
                                    const AttendBackward& attend_bwd, const KvGrads& owner_grads) {
  const ModelConfig& c = cfg_;
  const LayerSpec& spec = specs_[static_cast<size_t>(il)];
  const int E = c.n_embd, Q = c.n_embd_q();
  auto out_proj_backward = [&] {
    be_.linear_backward(dx, a.o, w.wo, s.d_o, &g.wo, &g.bo, n, Q, E, /*accumulate_dx=*/false);
    lap(Op::kAttnOut, true);
  };
  if (c.parallel_residual) {
    // out = x + attn(norm1 x) + mlp(norm2 x): both branches see dx before any norm adds to it.
    out_proj_backward();
    mlp_backward(be_, c, w, g, a, n, dx, s.dxn, s.d_act, s.d_up, s.act);
    lap(Op::kMlpMatmul, true);
    norm_backward(be_, c, w.ffn_norm, s.dxn, a.x_in, a.mean2, a.rstd2, dx, g.ffn_norm,
                  g.ffn_norm_b, n);
    lap(Op::kNorm, true);
  } else {
    // out = x_mid + mlp(norm2 x_mid), x_mid = x + attn(norm1 x).
    mlp_backward(be_, c, w, g, a, n, dx, s.dxn, s.d_act, s.d_up, s.act);
    lap(Op::kMlpMatmul, true);
    norm_backward(be_, c, w.ffn_norm, s.dxn, a.x_mid, a.mean2, a.rstd2, dx, g.ffn_norm,
                  g.ffn_norm_b, n);
    lap(Op::kNorm, true);
    out_proj_backward();
  }
  attend_bwd(spec, a, s.d_o, s.dq);
  lap(Op::kAttention, true);
  attention_in_backward(be_, c, spec, w, g, a, n, pos, rt, s.dq, owner_grads.dk_rot,
                        owner_grads.dk_raw, owner_grads.dv, s.dk, s.dxn);
  lap(Op::kQkv, true);
  norm_backward(be_, c, w.attn_norm, s.dxn, a.x_in, a.mean1, a.rstd1, dx, g.attn_norm,
                g.attn_norm_b, n);
  lap(Op::kNorm, true);
}

template class Transformer<float>;
template class Transformer<double>;

}  // namespace mlkv
