// TrainGraph: the training forward (keeping activations) and backward pass on the shared layer
// loop. See train_model.h.
#include "train/train_model.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace mlkv::train {

namespace {

constexpr int64_t kHeadLogitsBudget = int64_t{1} << 24;  // logits per chunk (64 MiB f32)

}  // namespace

// Every buffer of the graph, on the backend's device.
template <typename T>
struct TrainGraph<T>::Arena {
  struct Layer {
    Tensor x_in, xn1, mean1, rstd1, q, k, k_raw, v, o, lse, x_mid, xn2, mean2, rstd2, u, gate;
    Tensor dk_rot, dk_raw, dv;  // owners: gradient accumulators of every reader
  };
  std::vector<Layer> layers;
  Tensor x_final, xf, meanf, rstdf;                           // final norm input/output, stats
  Tensor dx, dxn, d_o, dq, dk, act, d_act, d_up, logits, row_loss;  // backward scratch
  // Forward-only: the one activation set of every layer (layers[] then hold only the owners' K/V).
  bool forward_only = false;
  Layer shared;

  static T* p(Tensor& t) { return t.empty() ? nullptr : t.data_as<T>(); }

  LayerActs<T> acts(int il, int n_layer, bool swiglu) {
    Layer& L = layers[static_cast<size_t>(il)];
    LayerActs<T> a;
    if (forward_only) {
      // Inference's layout: x_out == x_mid == x_in (the residual stream in place), act == u, no
      // statistics; keys and values stay per owner for the layers that read them later.
      a.x_in = a.x_out = a.x_mid = p(shared.x_in);
      a.xn1 = p(shared.xn1);
      a.q = p(shared.q);
      a.k = p(L.k);
      a.k_raw = p(L.k_raw);
      a.v = p(L.v);
      a.o = p(shared.o);
      a.lse = p(shared.lse);
      a.xn2 = p(shared.xn2);
      a.u = a.act = p(shared.u);
      a.gate = swiglu ? p(shared.gate) : nullptr;
      return a;
    }
    a.x_in = p(L.x_in);
    a.x_out = il + 1 < n_layer ? p(layers[static_cast<size_t>(il + 1)].x_in) : p(x_final);
    a.xn1 = p(L.xn1);
    a.mean1 = p(L.mean1);
    a.rstd1 = p(L.rstd1);
    a.q = p(L.q);
    a.k = p(L.k);
    a.k_raw = p(L.k_raw);
    a.v = p(L.v);
    a.o = p(L.o);
    a.lse = p(L.lse);
    a.x_mid = p(L.x_mid);
    a.xn2 = p(L.xn2);
    a.mean2 = p(L.mean2);
    a.rstd2 = p(L.rstd2);
    a.u = p(L.u);
    a.gate = swiglu ? p(L.gate) : nullptr;
    a.act = p(act);  // forward only: recomputed by the backward pass
    return a;
  }
};

// Keys and values come from the owner layers' saved buffers of the same micro-batch.
template <typename T>
class TrainGraph<T>::Attention final : public AttentionContext<T> {
 public:
  Attention(Backend<T>& be, Arena& arena, const ops::AttnDims& dims)
      : be_(be), arena_(arena), dims_(dims), ws_(be.new_workspace()) {}

  void attend(const LayerSpec& s, const LayerActs<T>& a) override {
    auto& src = arena_.layers[static_cast<size_t>(s.kv_source)];
    be_.attention_forward(a.q, keys(s), Arena::p(src.v), a.o, a.lse, dims_, *ws_);
  }

  // Writes dq; adds the gradients w.r.t. the keys and values read into the owner's accumulators.
  void backward(const LayerSpec& s, const LayerActs<T>& a, const T* d_o, T* dq) {
    auto& src = arena_.layers[static_cast<size_t>(s.kv_source)];
    T* dk = s.reads_rotated_keys ? Arena::p(src.dk_rot) : Arena::p(src.dk_raw);
    be_.attention_backward(a.q, keys(s), Arena::p(src.v), a.o, a.lse, d_o, dq, dk, Arena::p(src.dv),
                           dims_, *ws_);
  }

  ops::AttnDims& dims() { return dims_; }
  const Workspace& workspace() const { return *ws_; }

 private:
  const T* keys(const LayerSpec& s) {
    auto& src = arena_.layers[static_cast<size_t>(s.kv_source)];
    return s.reads_rotated_keys ? Arena::p(src.k) : Arena::p(src.k_raw);
  }

  Backend<T>& be_;
  Arena& arena_;
  ops::AttnDims dims_;
  std::unique_ptr<Workspace> ws_;
};

template <typename T>
TrainGraph<T>::TrainGraph(const ModelConfig& cfg, int batch, int ctx, Backend<T>& be, Mode mode,
                          int head_rows)
    : cfg_((cfg.validate(), cfg)), mode_(mode), batch_(batch), ctx_(ctx), n_(int64_t{batch} * ctx),
      net_(cfg_, be), be_(be) {
  MLKV_REQUIRE(batch > 0 && ctx > 0, "training batch and context must be positive");
  MLKV_REQUIRE(ctx <= cfg.n_ctx, "training context ", ctx, " exceeds the model's context (",
               cfg.n_ctx, " positions)");
  rope_.build(cfg.n_rot, ctx, cfg.rope_inv_freq());
  pos_.resize(static_cast<size_t>(n_));
  for (int64_t t = 0; t < n_; ++t) pos_[static_cast<size_t>(t)] = static_cast<int32_t>(t % ctx);
  const int64_t n = n_, E = cfg.n_embd, Q = cfg.n_embd_q(), KV = cfg.n_embd_kv(), F = cfg.n_ff;
  const bool swiglu = cfg.mlp == MlpType::kSwiGlu;
  head_chunk_ = static_cast<int>(
      std::clamp<int64_t>(head_rows > 0 ? head_rows : kHeadLogitsBudget / cfg.n_vocab, 1, n));
  inputs_.resize(static_cast<size_t>(n));
  targets_.resize(static_cast<size_t>(n));

  arena_ = std::make_unique<Arena>();
  Arena& A = *arena_;
  A.layers.resize(static_cast<size_t>(cfg.n_layer));
  const auto attn_dims = ops::AttnDims{batch, ctx, cfg.n_head, cfg.n_head_kv, cfg.n_embd_head};
  if (mode == Mode::kForwardOnly) {
    A.forward_only = true;
    typename Arena::Layer& S = A.shared;
    S.x_in = be.buffer({n, E});
    S.xn1 = be.buffer({n, E});
    S.q = be.buffer({n, Q});
    S.o = be.buffer({n, Q});
    S.lse = be.buffer({int64_t{batch} * cfg.n_head * ctx});
    S.xn2 = be.buffer({n, E});
    S.u = be.buffer({n, F});
    if (swiglu) S.gate = be.buffer({n, F});
    for (const LayerSpec& s : net_.specs()) {
      if (!s.owns_kv) continue;
      auto& L = A.layers[static_cast<size_t>(s.layer)];
      L.k = be.buffer({n, KV});
      L.v = be.buffer({n, KV});
      if (s.shares_raw_keys) L.k_raw = be.buffer({n, KV});
    }
    A.xf = be.buffer({n, E});
    A.logits = be.buffer({int64_t{head_chunk_}, cfg.n_vocab});
    attn_ = std::make_unique<Attention>(be, A, attn_dims);
    return;
  }
  for (const LayerSpec& s : net_.specs()) {
    auto& L = A.layers[static_cast<size_t>(s.layer)];
    L.x_in = be.buffer({n, E});
    L.xn1 = be.buffer({n, E});
    L.mean1 = be.buffer({n});
    L.rstd1 = be.buffer({n});
    L.q = be.buffer({n, Q});
    if (s.owns_kv) {
      L.k = be.buffer({n, KV});
      L.v = be.buffer({n, KV});
      L.dk_rot = be.buffer({n, KV});
      L.dv = be.buffer({n, KV});
      if (s.shares_raw_keys) {
        L.k_raw = be.buffer({n, KV});
        L.dk_raw = be.buffer({n, KV});
      }
    }
    L.o = be.buffer({n, Q});
    L.lse = be.buffer({int64_t{batch} * cfg.n_head * ctx});
    if (!cfg.parallel_residual) L.x_mid = be.buffer({n, E});
    L.xn2 = be.buffer({n, E});
    L.mean2 = be.buffer({n});
    L.rstd2 = be.buffer({n});
    L.u = be.buffer({n, F});
    if (swiglu) L.gate = be.buffer({n, F});
  }
  A.x_final = be.buffer({n, E});
  A.xf = be.buffer({n, E});
  A.meanf = be.buffer({n});
  A.rstdf = be.buffer({n});
  A.dx = be.buffer({n, E});
  A.dxn = be.buffer({n, E});
  A.d_o = be.buffer({n, Q});
  A.dq = be.buffer({n, Q});
  A.dk = be.buffer({n, KV});
  A.act = be.buffer({n, F});
  A.d_act = be.buffer({n, F});
  if (swiglu) A.d_up = be.buffer({n, F});
  A.logits = be.buffer({int64_t{head_chunk_}, cfg.n_vocab});
  A.row_loss = be.buffer({int64_t{head_chunk_}});
  attn_ = std::make_unique<Attention>(be, A, attn_dims);
}

template <typename T>
TrainGraph<T>::~TrainGraph() = default;

template <typename T>
int64_t TrainGraph<T>::arena_bytes(const ModelConfig& cfg, int batch, int ctx, size_t elem,
                                   Mode mode) {
  const int64_t n = int64_t{batch} * ctx, E = cfg.n_embd, Q = cfg.n_embd_q(), KV = cfg.n_embd_kv();
  const int64_t F = cfg.n_ff, H = cfg.n_head, V = cfg.n_vocab;
  const bool swiglu = cfg.mlp == MlpType::kSwiGlu;
  const int64_t chunk = std::clamp<int64_t>(kHeadLogitsBudget / V, 1, n);
  int64_t floats = 0;
  if (mode == Mode::kForwardOnly) {
    floats += n * (4 * E + 2 * Q + H) + n * F * (swiglu ? 2 : 1);  // x, xn1, xn2, xf, q, o, lse, u
    for (const LayerSpec& s : layer_specs(cfg)) {
      if (s.owns_kv) floats += n * KV * (s.shares_raw_keys ? 3 : 2);  // k, v (+ raw k)
    }
    floats += chunk * V;  // logits of one chunk
    return floats * static_cast<int64_t>(elem) + n * 8;
  }
  for (const LayerSpec& s : layer_specs(cfg)) {
    floats += n * (2 * E + 2 * Q + 2) + n * H;         // x_in, xn1, q, o, mean1/rstd1, lse
    floats += n * (E + 2) + n * F * (swiglu ? 2 : 1);  // xn2, stats, u (+gate)
    if (!cfg.parallel_residual) floats += n * E;
    if (s.owns_kv) floats += 4 * n * KV;          // k, v, and their gradient accumulators
    if (s.shares_raw_keys) floats += 2 * n * KV;  // raw keys and their gradient accumulator
  }
  floats += n * E * 4 + n * 2;                         // x_final, xf, dx, dxn, final-norm stats
  floats += 2 * n * Q + n * KV;                        // d_o, dq, dk
  floats += n * F * (swiglu ? 3 : 2);                  // act, d_act (+d_up)
  floats += chunk * V + chunk;                         // logits chunk, row losses
  if (H != cfg.n_head_kv) floats += 2 * n * Q;         // per-query-head dK/dV (attention scratch)
  return floats * static_cast<int64_t>(elem) + n * 8;  // + inputs/targets
}

template <typename T>
int64_t TrainGraph<T>::allocated_bytes() const {
  int64_t bytes = 0;
  auto add = [&](const Tensor& t) { bytes += static_cast<int64_t>(t.nbytes()); };
  std::vector<const typename Arena::Layer*> sets{&arena_->shared};
  for (const auto& L : arena_->layers) sets.push_back(&L);
  for (const auto* set : sets) {
    const auto& L = *set;
    for (const Tensor* t : {&L.x_in, &L.xn1, &L.mean1, &L.rstd1, &L.q, &L.k, &L.k_raw, &L.v, &L.o,
                            &L.lse, &L.x_mid, &L.xn2, &L.mean2, &L.rstd2, &L.u, &L.gate, &L.dk_rot,
                            &L.dk_raw, &L.dv}) {
      add(*t);
    }
  }
  const Arena& A = *arena_;
  for (const Tensor* t : {&A.x_final, &A.xf, &A.meanf, &A.rstdf, &A.dx, &A.dxn, &A.d_o, &A.dq,
                          &A.dk, &A.act, &A.d_act, &A.d_up, &A.logits, &A.row_loss}) {
    add(*t);
  }
  return bytes + attn_->workspace().bytes() +
         static_cast<int64_t>(inputs_.size() + targets_.size()) * 4;
}

template <typename T>
LossSums TrainGraph<T>::head(const ModelWeights& w, ModelWeights* grads, T grad_scale,
                             const Distillation<T>* distill) {
  const ModelConfig& c = cfg_;
  Arena& A = *arena_;
  const int E = c.n_embd, V = c.n_vocab;
  const int n = static_cast<int>(n_);
  norm_forward(be_, c, w.out_norm, w.out_norm_b, Arena::p(A.x_final), Arena::p(A.xf),
               Arena::p(A.meanf), Arena::p(A.rstdf), n);
  net_.lap(Op::kNorm, false);
  LossSums loss;
  const bool grad = grads != nullptr;
  // Distilling: alpha CE + (1 - alpha) temp^2 KL per position. The scales are products of
  // doubles rounded once, so alpha = 1 gives the plain scale bit for bit (and a KL scale of 0).
  const T ce_scale =
      distill ? static_cast<T>(distill->alpha * static_cast<double>(grad_scale)) : grad_scale;
  const T kl_scale = distill ? static_cast<T>((1 - distill->alpha) * distill->temp * distill->temp *
                                              static_cast<double>(grad_scale))
                             : T(0);
  T* logits = Arena::p(A.logits);
  for (int64_t c0 = 0; c0 < n_; c0 += head_chunk_) {
    const int rows = static_cast<int>(std::min<int64_t>(head_chunk_, n_ - c0));
    const T* xf = Arena::p(A.xf) + c0 * E;
    be_.linear_forward(xf, w.output_matrix(), Tensor(), logits, rows, E, V, false);
    T* teacher = nullptr;
    if (distill) {
      // The teacher's logits of the same rows (its chunk buffer), read against the student's
      // before the cross-entropy consumes them; they become the KL term's gradient.
      teacher = distill->teacher->chunk_logits(*distill->teacher_weights, c0, rows);
      loss.kl += be_.distill_kl(logits, teacher, rows, V, static_cast<T>(distill->temp), kl_scale,
                                grad, Arena::p(A.row_loss));
    }
    loss.ce += be_.cross_entropy(logits, targets_.data() + c0, rows, V, ce_scale, grad,
                                 Arena::p(A.row_loss));
    if (grad) {
      if (teacher != nullptr) be_.add(logits, teacher, int64_t{rows} * V);
      be_.linear_backward(logits, xf, w.output_matrix(), Arena::p(A.dxn) + c0 * E,
                          &grads->output_matrix(), nullptr, rows, E, V, /*accumulate_dx=*/false);
    }
  }
  net_.lap(Op::kHead, grad);
  if (grad) {
    be_.zero(Arena::p(A.dx), n_ * E);
    norm_backward(be_, c, w.out_norm, Arena::p(A.dxn), Arena::p(A.x_final),
                  Arena::p(A.meanf), Arena::p(A.rstdf), Arena::p(A.dx), grads->out_norm,
                  grads->out_norm_b, n);
    net_.lap(Op::kNorm, true);
  }
  return loss;
}

template <typename T>
void TrainGraph<T>::check_rows(const int32_t* rows, int n_rows) {
  const ModelConfig& c = cfg_;
  MLKV_CHECK(n_rows >= 1 && n_rows <= batch_);
  n_ = int64_t{n_rows} * ctx_;
  attn_->dims().batch = n_rows;
  for (int b = 0; b < n_rows; ++b) {
    const int32_t* r = rows + int64_t{b} * (ctx_ + 1);
    for (int s = 0; s <= ctx_; ++s) {
      MLKV_REQUIRE(r[s] >= 0 && r[s] < c.n_vocab, "token id ", r[s], " is outside the vocabulary (",
                   c.n_vocab, " ids)");
    }
    std::copy(r, r + ctx_, inputs_.begin() + int64_t{b} * ctx_);
    std::copy(r + 1, r + ctx_ + 1, targets_.begin() + int64_t{b} * ctx_);
  }
}

template <typename T>
void TrainGraph<T>::forward_hidden(const ModelWeights& w, const int32_t* rows, int n_rows) {
  MLKV_CHECK(mode_ == Mode::kForwardOnly);
  const ModelConfig& c = cfg_;
  check_rows(rows, n_rows < 0 ? batch_ : n_rows);
  const int n = static_cast<int>(n_);
  const bool swiglu = c.mlp == MlpType::kSwiGlu;
  Arena& A = *arena_;
  net_.profile = profile;
  net_.lap_start();
  net_.embed(w, inputs_.data(), n, Arena::p(A.shared.x_in));
  for (int il = 0; il < c.n_layer; ++il) {
    net_.layer_forward(il, w.layers[static_cast<size_t>(il)], A.acts(il, c.n_layer, swiglu), n,
                       pos_.data(), rope_, *attn_);
  }
  norm_forward<T>(be_, c, w.out_norm, w.out_norm_b, Arena::p(A.shared.x_in), Arena::p(A.xf),
                  nullptr, nullptr, n);
  net_.lap(Op::kNorm, false);
}

template <typename T>
T* TrainGraph<T>::chunk_logits(const ModelWeights& w, int64_t row0, int n) {
  MLKV_CHECK(mode_ == Mode::kForwardOnly && n >= 1 && n <= head_chunk_ && row0 >= 0 &&
             row0 + n <= n_);
  Arena& A = *arena_;
  T* logits = Arena::p(A.logits);
  be_.linear_forward(Arena::p(A.xf) + row0 * cfg_.n_embd, w.output_matrix(), Tensor(), logits, n,
                     cfg_.n_embd, cfg_.n_vocab, false);
  return logits;
}

template <typename T>
double TrainGraph<T>::forward_backward(const ModelWeights& w, const int32_t* rows,
                                       ModelWeights* grads, T grad_scale, int n_rows) {
  return run(w, rows, grads, grad_scale, n_rows, nullptr).ce;
}

template <typename T>
LossSums TrainGraph<T>::forward_backward(const ModelWeights& w, const int32_t* rows,
                                         ModelWeights* grads, T grad_scale, int n_rows,
                                         const Distillation<T>& distill) {
  MLKV_CHECK(distill.teacher != nullptr && distill.teacher_weights != nullptr);
  MLKV_REQUIRE(distill.teacher->cfg_.n_vocab == cfg_.n_vocab,
               "distillation: the teacher's vocabulary (", distill.teacher->cfg_.n_vocab,
               " ids) is not the student's (", cfg_.n_vocab, ")");
  MLKV_REQUIRE(distill.alpha >= 0 && distill.alpha <= 1, "distillation: alpha ", distill.alpha,
               " is outside [0, 1]");
  MLKV_REQUIRE(distill.temp > 0 && std::isfinite(distill.temp), "distillation: temperature ",
               distill.temp, " is not positive");
  if (n_rows < 0) n_rows = batch_;
  MLKV_CHECK(distill.teacher->n_ == int64_t{n_rows} * ctx_ &&
             distill.teacher->head_chunk_ == head_chunk_);
  return run(w, rows, grads, grad_scale, n_rows, &distill);
}

template <typename T>
LossSums TrainGraph<T>::run(const ModelWeights& w, const int32_t* rows, ModelWeights* grads,
                            T grad_scale, int n_rows, const Distillation<T>* distill) {
  MLKV_CHECK(mode_ == Mode::kTrain);
  const ModelConfig& c = cfg_;
  check_rows(rows, n_rows < 0 ? batch_ : n_rows);
  const int n = static_cast<int>(n_), E = c.n_embd, KV = c.n_embd_kv();
  const bool swiglu = c.mlp == MlpType::kSwiGlu;
  net_.profile = profile;
  net_.lap_start();
  Arena& A = *arena_;
  net_.embed(w, inputs_.data(), n, Arena::p(A.layers[0].x_in));
  for (int il = 0; il < c.n_layer; ++il) {
    net_.layer_forward(il, w.layers[static_cast<size_t>(il)], A.acts(il, c.n_layer, swiglu), n,
                       pos_.data(), rope_, *attn_);
  }
  const LossSums loss = head(w, grads, grad_scale, distill);
  if (grads == nullptr) return loss;

  for (const LayerSpec& s : net_.specs()) {
    if (!s.owns_kv) continue;
    auto& L = A.layers[static_cast<size_t>(s.layer)];
    for (Tensor* t : {&L.dk_rot, &L.dk_raw, &L.dv}) {
      if (!t->empty()) be_.zero(Arena::p(*t), n_ * KV);
    }
  }
  net_.lap(Op::kResidual, true);
  const typename Transformer<T>::BackwardScratch scratch{
      Arena::p(A.dxn),   Arena::p(A.d_o), Arena::p(A.dq), Arena::p(A.dk),
      Arena::p(A.d_act), Arena::p(A.d_up),   Arena::p(A.act)};
  auto attend_bwd = [this](const LayerSpec& s, const LayerActs<T>& a, const T* d_o, T* dq) {
    attn_->backward(s, a, d_o, dq);
  };
  for (int il = c.n_layer - 1; il >= 0; --il) {
    auto& L = A.layers[static_cast<size_t>(il)];
    const typename Transformer<T>::KvGrads kv{Arena::p(L.dk_rot), Arena::p(L.dk_raw),
                                              Arena::p(L.dv)};
    net_.layer_backward(il, w.layers[static_cast<size_t>(il)], grads->layers[static_cast<size_t>(il)],
                        A.acts(il, c.n_layer, swiglu), n, pos_.data(), rope_, Arena::p(A.dx),
                        scratch, attend_bwd, kv);
  }
  be_.embedding_backward(inputs_.data(), Arena::p(A.dx), grads->tok_embd, n, E);
  net_.lap(Op::kEmbed, true);
  return loss;
}

template class TrainGraph<float>;
template class TrainGraph<double>;

}  // namespace mlkv::train
