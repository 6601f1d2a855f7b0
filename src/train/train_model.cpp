// TrainGraph: the training forward (keeping activations) and backward pass. See train_model.h for
// the semantics; the order of operations in the backward pass is the reverse of layer_forward, with
// one twist for the parallel residual: both branches read the same upstream gradient, so both
// branches' output projections are differentiated before either norm adds into it.
#include "train/train_model.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/timer.h"

namespace mlkv::train {
using namespace mlkv::ops;
}  // namespace mlkv::train

namespace mlkv::train {

const char* op_name(Op op) {
  switch (op) {
    case Op::kEmbed:
      return "embedding";
    case Op::kNorm:
      return "norms";
    case Op::kQkv:
      return "q/k/v projections";
    case Op::kRope:
      return "rotary";
    case Op::kAttention:
      return "attention (softmax, QK^T, PV)";
    case Op::kAttnOut:
      return "attention output projection";
    case Op::kMlpMatmul:
      return "MLP projections";
    case Op::kActivation:
      return "MLP activation";
    case Op::kHead:
      return "output layer + cross-entropy";
    case Op::kResidual:
      return "residual adds / copies";
    case Op::kCount:
      break;
  }
  return "?";
}

template <typename T>
WeightsView<T> make_view(const ModelConfig& cfg, ModelWeights& w,
                         const std::function<T*(Tensor&)>& ptr) {
  auto p = [&](Tensor& t) -> T* { return t.empty() ? nullptr : ptr(t); };
  MLKV_CHECK(w.layers.size() == static_cast<size_t>(cfg.n_layer));
  WeightsView<T> v;
  v.tok_embd = p(w.tok_embd);
  for (auto& l : w.layers) {
    LayerView<T> L;
    L.attn_norm = p(l.attn_norm);
    L.attn_norm_b = p(l.attn_norm_b);
    L.wq = p(l.wq);
    L.bq = p(l.bq);
    L.wk = p(l.wk);
    L.bk = p(l.bk);
    L.wv = p(l.wv);
    L.bv = p(l.bv);
    L.wo = p(l.wo);
    L.bo = p(l.bo);
    L.ffn_norm = p(l.ffn_norm);
    L.ffn_norm_b = p(l.ffn_norm_b);
    L.w_gate = p(l.w_gate);
    L.w_up = p(l.w_up);
    L.b_up = p(l.b_up);
    L.w_down = p(l.w_down);
    L.b_down = p(l.b_down);
    v.layers.push_back(L);
  }
  v.out_norm = p(w.out_norm);
  v.out_norm_b = p(w.out_norm_b);
  v.output = cfg.tied_embeddings ? v.tok_embd : p(w.output);
  return v;
}

WeightsView<float> view_of(const ModelConfig& cfg, ModelWeights& w) {
  return make_view<float>(cfg, w, [](Tensor& t) { return t.data(); });
}

namespace {

constexpr int64_t kHeadLogitsBudget = int64_t{1} << 24;  // floats of logits per chunk (64 MiB f32)

template <typename T>
void resize(std::vector<T>& v, int64_t n) {
  v.assign(static_cast<size_t>(n), T(0));
}

}  // namespace

template <typename T>
TrainGraph<T>::TrainGraph(const ModelConfig& cfg, int batch, int ctx)
    : cfg_(cfg), batch_(batch), ctx_(ctx), n_(int64_t{batch} * ctx) {
  cfg_.validate();
  MLKV_REQUIRE(batch > 0 && ctx > 0, "training batch and context must be positive");
  MLKV_REQUIRE(ctx <= cfg.n_ctx, "training context ", ctx, " exceeds the model's context (",
               cfg.n_ctx, " positions)");
  dims_ = AttnDims{batch, ctx, cfg.n_head, cfg.n_head_kv, cfg.n_embd_head};
  rope_.build(cfg.n_rot, ctx, cfg.rope_inv_freq());
  pos_.resize(static_cast<size_t>(n_));
  for (int64_t t = 0; t < n_; ++t) pos_[static_cast<size_t>(t)] = static_cast<int32_t>(t % ctx);
  const int64_t n = n_, E = cfg.n_embd, Q = cfg.n_embd_q(), KV = cfg.n_embd_kv(), F = cfg.n_ff;
  const bool swiglu = cfg.mlp == MlpType::kSwiGlu, pre = cfg.share_rope == KvShareRope::kPre;
  head_chunk_ = static_cast<int>(std::clamp<int64_t>(kHeadLogitsBudget / cfg.n_vocab, 1, n));

  resize(inputs_, n);
  resize(targets_, n);
  acts_.resize(static_cast<size_t>(cfg.n_layer));
  dk_acc_.resize(static_cast<size_t>(cfg.n_layer));
  dv_acc_.resize(static_cast<size_t>(cfg.n_layer));
  for (int il = 0; il < cfg.n_layer; ++il) {
    LayerActs& A = acts_[static_cast<size_t>(il)];
    resize(A.x_in, n * E);
    resize(A.xn1, n * E);
    resize(A.mean1, n);
    resize(A.rstd1, n);
    resize(A.q, n * Q);
    if (cfg.owns_kv(il)) {
      resize(A.k_rot, n * KV);
      resize(A.v, n * KV);
      bool has_consumer = false;
      for (int j = il + 1; j < cfg.n_layer; ++j)
        has_consumer |= cfg.kv_source[static_cast<size_t>(j)] == il;
      if (pre && has_consumer) resize(A.k_raw, n * KV);
      resize(dk_acc_[static_cast<size_t>(il)], n * KV);
      resize(dv_acc_[static_cast<size_t>(il)], n * KV);
    }
    resize(A.o, n * Q);
    resize(A.lse, int64_t{batch} * cfg.n_head * ctx);
    if (!cfg.parallel_residual) resize(A.x_mid, n * E);
    resize(A.xn2, n * E);
    resize(A.mean2, n);
    resize(A.rstd2, n);
    resize(A.u, n * F);
    if (swiglu) resize(A.gate, n * F);
  }
  resize(x_final_, n * E);
  resize(xf_, n * E);
  resize(meanf_, n);
  resize(rstdf_, n);
  resize(dx_, n * E);
  resize(dxn_, n * E);
  resize(d_o_, n * Q);
  resize(dq_, n * Q);
  if (pre) resize(dk_tmp_, n * KV);
  resize(act_, n * F);
  resize(d_act_, n * F);
  if (swiglu) resize(d_up_, n * F);
  resize(logits_, int64_t{head_chunk_} * cfg.n_vocab);
  resize(row_loss_, head_chunk_);
}

template <typename T>
int64_t TrainGraph<T>::arena_bytes(const ModelConfig& cfg, int batch, int ctx, size_t elem) {
  const int64_t n = int64_t{batch} * ctx, E = cfg.n_embd, Q = cfg.n_embd_q(), KV = cfg.n_embd_kv();
  const int64_t F = cfg.n_ff, H = cfg.n_head, V = cfg.n_vocab;
  const bool swiglu = cfg.mlp == MlpType::kSwiGlu, pre = cfg.share_rope == KvShareRope::kPre;
  int64_t floats = 0;
  for (int il = 0; il < cfg.n_layer; ++il) {
    floats += n * (2 * E + 2 * Q + 2) + n * H;         // x_in, xn1, q, o, mean1/rstd1, lse
    floats += n * (E + 2) + n * F * (swiglu ? 2 : 1);  // xn2, stats, u (+gate)
    if (!cfg.parallel_residual) floats += n * E;
    if (cfg.owns_kv(il)) {
      floats += 4 * n * KV;  // k_rot, v, and their gradient accumulators
      bool has_consumer = false;
      for (int j = il + 1; j < cfg.n_layer; ++j)
        has_consumer |= cfg.kv_source[static_cast<size_t>(j)] == il;
      if (pre && has_consumer) floats += n * KV;
    }
  }
  const int64_t chunk = std::clamp<int64_t>(kHeadLogitsBudget / V, 1, n);
  floats += n * E * 4 + n * 2;                         // x_final, xf, dx, dxn, final-norm stats
  floats += 2 * n * Q + (pre ? n * KV : 0);            // d_o, dq, dk_tmp
  floats += n * F * (swiglu ? 3 : 2);                  // act, d_act (+d_up)
  floats += chunk * V + chunk;                         // logits chunk, row losses
  if (H != cfg.n_head_kv) floats += 2 * n * Q;         // per-query-head dK/dV (attention scratch)
  return floats * static_cast<int64_t>(elem) + n * 8;  // + inputs/targets
}

template <typename T>
int64_t TrainGraph<T>::allocated_bytes() const {
  int64_t elems = 0;
  auto add = [&](const std::vector<T>& v) { elems += static_cast<int64_t>(v.size()); };
  for (const LayerActs& A : acts_) {
    for (const auto* v : {&A.x_in, &A.xn1, &A.mean1, &A.rstd1, &A.q, &A.k_rot, &A.k_raw, &A.v, &A.o,
                          &A.lse, &A.x_mid, &A.xn2, &A.mean2, &A.rstd2, &A.u, &A.gate}) {
      add(*v);
    }
  }
  for (const auto* v :
       {&x_final_, &xf_, &meanf_, &rstdf_, &dx_, &dxn_, &d_o_, &dq_, &dk_tmp_, &act_, &d_act_,
        &d_up_, &logits_, &row_loss_, &attn_scratch_.dk_heads, &attn_scratch_.dv_heads}) {
    add(*v);
  }
  for (const auto& v : dk_acc_) add(v);
  for (const auto& v : dv_acc_) add(v);
  return elems * static_cast<int64_t>(sizeof(T)) +
         static_cast<int64_t>(inputs_.size() + targets_.size()) * 4;
}

template <typename T>
void TrainGraph<T>::lap(Op op, bool bwd) {
  if (!profile) return;
  const double t = now_seconds();
  (bwd ? profile->bwd : profile->fwd)[static_cast<int>(op)] += t - lap_t_;
  lap_t_ = t;
}

template <typename T>
void TrainGraph<T>::norm_fwd(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd) {
  const int n = static_cast<int>(n_);
  if (cfg_.norm == NormType::kLayerNorm) {
    layernorm_forward(x, w, b, y, mean, rstd, n, cfg_.n_embd, static_cast<T>(cfg_.norm_eps));
  } else {
    rmsnorm_forward(x, w, y, rstd, n, cfg_.n_embd, static_cast<T>(cfg_.norm_eps));
  }
}

template <typename T>
void TrainGraph<T>::norm_bwd(const T* dy, const T* x, const T* w, const T* mean, const T* rstd,
                             T* dx, T* dw, T* db) {
  const int n = static_cast<int>(n_);
  if (cfg_.norm == NormType::kLayerNorm) {
    layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, n, cfg_.n_embd);
  } else {
    rmsnorm_backward(dy, x, w, rstd, dx, dw, n, cfg_.n_embd);
  }
}

template <typename T>
void TrainGraph<T>::layer_forward(int il, const LayerView<T>& L, T* out) {
  const ModelConfig& c = cfg_;
  LayerActs& A = acts_[static_cast<size_t>(il)];
  const int n = static_cast<int>(n_), E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv(),
            F = c.n_ff;
  const int H = c.n_head, G = c.n_head_kv, d = c.n_embd_head;

  norm_fwd(A.x_in.data(), L.attn_norm, L.attn_norm_b, A.xn1.data(), A.mean1.data(), A.rstd1.data());
  lap(Op::kNorm, false);
  linear_forward(A.xn1.data(), L.wq, L.bq, A.q.data(), n, E, Q);
  if (c.owns_kv(il)) {
    linear_forward(A.xn1.data(), L.wk, L.bk, A.k_rot.data(), n, E, KV);
    linear_forward(A.xn1.data(), L.wv, L.bv, A.v.data(), n, E, KV);
  }
  lap(Op::kQkv, false);
  rope_forward(A.q.data(), n, H, d, pos_.data(), rope_);
  if (c.owns_kv(il)) {
    if (!A.k_raw.empty()) std::copy_n(A.k_rot.begin(), n_ * KV, A.k_raw.begin());
    rope_forward(A.k_rot.data(), n, G, d, pos_.data(), rope_);
  }
  lap(Op::kRope, false);

  const int src = c.kv_source[static_cast<size_t>(il)];
  const LayerActs& S = acts_[static_cast<size_t>(src)];
  const bool rotated = src == il || c.share_rope == KvShareRope::kPost;
  attention_forward(A.q.data(), rotated ? S.k_rot.data() : S.k_raw.data(), S.v.data(), A.o.data(),
                    A.lse.data(), dims_, attn_scratch_);
  lap(Op::kAttention, false);

  const T* x_norm2;
  if (c.parallel_residual) {
    std::copy_n(A.x_in.begin(), n_ * E, out);
    lap(Op::kResidual, false);
    linear_forward(A.o.data(), L.wo, L.bo, out, n, Q, E, /*accumulate=*/true);
    lap(Op::kAttnOut, false);
    x_norm2 = A.x_in.data();
  } else {
    linear_forward(A.o.data(), L.wo, L.bo, A.x_mid.data(), n, Q, E);
    lap(Op::kAttnOut, false);
    add_inplace(A.x_mid.data(), A.x_in.data(), n_ * E);
    std::copy_n(A.x_mid.begin(), n_ * E, out);
    lap(Op::kResidual, false);
    x_norm2 = A.x_mid.data();
  }
  norm_fwd(x_norm2, L.ffn_norm, L.ffn_norm_b, A.xn2.data(), A.mean2.data(), A.rstd2.data());
  lap(Op::kNorm, false);

  if (c.mlp == MlpType::kSwiGlu) {
    linear_forward<T>(A.xn2.data(), L.w_gate, nullptr, A.gate.data(), n, E, F);
    linear_forward<T>(A.xn2.data(), L.w_up, nullptr, A.u.data(), n, E, F);
    lap(Op::kMlpMatmul, false);
    swiglu_forward(A.gate.data(), A.u.data(), act_.data(), n_ * F);
  } else {
    linear_forward(A.xn2.data(), L.w_up, L.b_up, A.u.data(), n, E, F);
    lap(Op::kMlpMatmul, false);
    gelu_forward(A.u.data(), act_.data(), n_ * F, c.gelu_tanh);
  }
  lap(Op::kActivation, false);
  linear_forward(act_.data(), L.w_down, L.b_down, out, n, F, E, /*accumulate=*/true);
  lap(Op::kMlpMatmul, false);
}

template <typename T>
double TrainGraph<T>::head(const WeightsView<T>& w, const WeightsView<T>* grads, T grad_scale) {
  const int E = cfg_.n_embd, V = cfg_.n_vocab;
  norm_fwd(x_final_.data(), w.out_norm, w.out_norm_b, xf_.data(), meanf_.data(), rstdf_.data());
  lap(Op::kNorm, false);
  double loss = 0;
  for (int64_t c0 = 0; c0 < n_; c0 += head_chunk_) {
    const int rows = static_cast<int>(std::min<int64_t>(head_chunk_, n_ - c0));
    const T* xf = xf_.data() + c0 * E;
    linear_forward(xf, w.output, static_cast<const T*>(nullptr), logits_.data(), rows, E, V);
    loss += cross_entropy_forward_backward(logits_.data(), targets_.data() + c0, rows, V,
                                           grad_scale, grads != nullptr, row_loss_.data());
    if (grads != nullptr) {
      linear_backward(logits_.data(), xf, w.output, dxn_.data() + c0 * E, grads->output,
                      static_cast<T*>(nullptr), rows, E, V, /*accumulate_dx=*/false);
    }
  }
  lap(Op::kHead, grads != nullptr);
  if (grads != nullptr) {
    zero(dx_.data(), n_ * E);
    norm_bwd(dxn_.data(), x_final_.data(), w.out_norm, meanf_.data(), rstdf_.data(), dx_.data(),
             grads->out_norm, grads->out_norm_b);
    lap(Op::kNorm, true);
  }
  return loss;
}

template <typename T>
void TrainGraph<T>::mlp_backward(int il, const LayerView<T>& L, const LayerView<T>& dL,
                                 const T* dy) {
  const ModelConfig& c = cfg_;
  LayerActs& A = acts_[static_cast<size_t>(il)];
  const int n = static_cast<int>(n_), E = c.n_embd, F = c.n_ff;
  // d(activation) = dy W_down
  linear_backward(dy, static_cast<const T*>(nullptr), L.w_down, d_act_.data(),
                  static_cast<T*>(nullptr), static_cast<T*>(nullptr), n, F, E,
                  /*accumulate_dx=*/false);
  lap(Op::kMlpMatmul, true);
  if (c.mlp == MlpType::kSwiGlu) {
    swiglu_backward(A.gate.data(), A.u.data(), d_act_.data(), d_act_.data(), d_up_.data(),
                    act_.data(), n_ * F);
  } else {
    gelu_backward(A.u.data(), d_act_.data(), d_act_.data(), act_.data(), n_ * F, c.gelu_tanh);
  }
  lap(Op::kActivation, true);
  linear_backward(dy, act_.data(), L.w_down, static_cast<T*>(nullptr), dL.w_down, dL.b_down, n, F,
                  E);
  if (c.mlp == MlpType::kSwiGlu) {
    linear_backward(d_act_.data(), A.xn2.data(), L.w_gate, dxn_.data(), dL.w_gate,
                    static_cast<T*>(nullptr), n, E, F, /*accumulate_dx=*/false);
    linear_backward(d_up_.data(), A.xn2.data(), L.w_up, dxn_.data(), dL.w_up,
                    static_cast<T*>(nullptr), n, E, F, /*accumulate_dx=*/true);
  } else {
    linear_backward(d_act_.data(), A.xn2.data(), L.w_up, dxn_.data(), dL.w_up, dL.b_up, n, E, F,
                    /*accumulate_dx=*/false);
  }
  lap(Op::kMlpMatmul, true);
}

template <typename T>
void TrainGraph<T>::attn_core_backward(int il, const LayerView<T>& L, const LayerView<T>& dL) {
  const ModelConfig& c = cfg_;
  LayerActs& A = acts_[static_cast<size_t>(il)];
  const int n = static_cast<int>(n_), E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv();
  const int H = c.n_head, G = c.n_head_kv, d = c.n_embd_head;
  const int src = c.kv_source[static_cast<size_t>(il)];
  const bool own = src == il, post = c.share_rope == KvShareRope::kPost;
  const LayerActs& S = acts_[static_cast<size_t>(src)];

  // Keys this layer attended with: rotated (owner, or post sharing) or raw (pre-sharing consumer).
  // Gradients w.r.t. rotated keys go to the owner's accumulator in post mode (un-rotated once, at
  // the owner); in pre mode the owner's own rotated-key gradient is un-rotated separately.
  T* dk_target = dk_acc_[static_cast<size_t>(src)].data();
  if (own && !post) {
    zero(dk_tmp_.data(), n_ * KV);
    dk_target = dk_tmp_.data();
  }
  attention_backward(A.q.data(), (own || post) ? S.k_rot.data() : S.k_raw.data(), S.v.data(),
                     A.o.data(), A.lse.data(), d_o_.data(), dq_.data(), dk_target,
                     dv_acc_[static_cast<size_t>(src)].data(), dims_, attn_scratch_);
  lap(Op::kAttention, true);
  rope_backward(dq_.data(), n, H, d, pos_.data(), rope_);
  if (own) {
    if (post) {
      rope_backward(dk_acc_[static_cast<size_t>(il)].data(), n, G, d, pos_.data(), rope_);
    } else {
      rope_backward(dk_tmp_.data(), n, G, d, pos_.data(), rope_);
      add_inplace(dk_acc_[static_cast<size_t>(il)].data(), dk_tmp_.data(), n_ * KV);
    }
  }
  lap(Op::kRope, true);
  linear_backward(dq_.data(), A.xn1.data(), L.wq, dxn_.data(), dL.wq, dL.bq, n, E, Q,
                  /*accumulate_dx=*/false);
  if (own) {
    linear_backward(dk_acc_[static_cast<size_t>(il)].data(), A.xn1.data(), L.wk, dxn_.data(), dL.wk,
                    dL.bk, n, E, KV);
    linear_backward(dv_acc_[static_cast<size_t>(il)].data(), A.xn1.data(), L.wv, dxn_.data(), dL.wv,
                    dL.bv, n, E, KV);
  }
  lap(Op::kQkv, true);
}

template <typename T>
void TrainGraph<T>::layer_backward(int il, const LayerView<T>& L, const LayerView<T>& dL, T* dx) {
  const ModelConfig& c = cfg_;
  LayerActs& A = acts_[static_cast<size_t>(il)];
  const int n = static_cast<int>(n_), E = c.n_embd, Q = c.n_embd_q();
  auto out_proj_backward = [&] {
    linear_backward(dx, A.o.data(), L.wo, d_o_.data(), dL.wo, dL.bo, n, Q, E,
                    /*accumulate_dx=*/false);
    lap(Op::kAttnOut, true);
  };
  if (c.parallel_residual) {
    // out = x + attn(norm1 x) + mlp(norm2 x): both branches see dx before any norm adds to it.
    out_proj_backward();
    mlp_backward(il, L, dL, dx);
    norm_bwd(dxn_.data(), A.x_in.data(), L.ffn_norm, A.mean2.data(), A.rstd2.data(), dx,
             dL.ffn_norm, dL.ffn_norm_b);
    lap(Op::kNorm, true);
  } else {
    // out = x_mid + mlp(norm2 x_mid), x_mid = x + attn(norm1 x).
    mlp_backward(il, L, dL, dx);
    norm_bwd(dxn_.data(), A.x_mid.data(), L.ffn_norm, A.mean2.data(), A.rstd2.data(), dx,
             dL.ffn_norm, dL.ffn_norm_b);
    lap(Op::kNorm, true);
    out_proj_backward();
  }
  attn_core_backward(il, L, dL);
  norm_bwd(dxn_.data(), A.x_in.data(), L.attn_norm, A.mean1.data(), A.rstd1.data(), dx,
           dL.attn_norm, dL.attn_norm_b);
  lap(Op::kNorm, true);
}

template <typename T>
double TrainGraph<T>::forward_backward(const WeightsView<T>& w, const int32_t* rows,
                                       const WeightsView<T>* grads, T grad_scale, int n_rows) {
  const ModelConfig& c = cfg_;
  if (n_rows < 0) n_rows = batch_;
  MLKV_CHECK(n_rows >= 1 && n_rows <= batch_);
  n_ = int64_t{n_rows} * ctx_;
  dims_.batch = n_rows;
  const int n = static_cast<int>(n_), E = c.n_embd;
  for (int b = 0; b < n_rows; ++b) {
    const int32_t* r = rows + int64_t{b} * (ctx_ + 1);
    for (int s = 0; s <= ctx_; ++s) {
      MLKV_REQUIRE(r[s] >= 0 && r[s] < c.n_vocab, "token id ", r[s], " is outside the vocabulary (",
                   c.n_vocab, " ids)");
    }
    std::copy(r, r + ctx_, inputs_.begin() + int64_t{b} * ctx_);
    std::copy(r + 1, r + ctx_ + 1, targets_.begin() + int64_t{b} * ctx_);
  }
  lap_t_ = profile ? now_seconds() : 0.0;
  embedding_forward(inputs_.data(), w.tok_embd, acts_[0].x_in.data(), n, E);
  lap(Op::kEmbed, false);
  for (int il = 0; il < c.n_layer; ++il) {
    T* out = il + 1 < c.n_layer ? acts_[static_cast<size_t>(il + 1)].x_in.data() : x_final_.data();
    layer_forward(il, w.layers[static_cast<size_t>(il)], out);
  }
  const double loss = head(w, grads, grad_scale);
  if (grads == nullptr) return loss;

  for (int il = 0; il < c.n_layer; ++il) {
    if (!c.owns_kv(il)) continue;
    zero(dk_acc_[static_cast<size_t>(il)].data(), n_ * c.n_embd_kv());
    zero(dv_acc_[static_cast<size_t>(il)].data(), n_ * c.n_embd_kv());
  }
  lap(Op::kResidual, true);
  for (int il = c.n_layer - 1; il >= 0; --il) {
    layer_backward(il, w.layers[static_cast<size_t>(il)], grads->layers[static_cast<size_t>(il)],
                   dx_.data());
  }
  embedding_backward(inputs_.data(), dx_.data(), grads->tok_embd, n, E);
  lap(Op::kEmbed, true);
  return loss;
}

template class TrainGraph<float>;
template class TrainGraph<double>;
template WeightsView<float> make_view<float>(const ModelConfig&, ModelWeights&,
                                             const std::function<float*(Tensor&)>&);
template WeightsView<double> make_view<double>(const ModelConfig&, ModelWeights&,
                                               const std::function<double*(Tensor&)>&);

}  // namespace mlkv::train
