// TrainGraph: the training forward (keeping activations) and backward pass on the shared layer
// loop. See train_model.h.
#include "train/train_model.h"

#include <algorithm>

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

  static T* p(Tensor& t) { return t.empty() ? nullptr : t.data_as<T>(); }

  LayerActs<T> acts(int il, int n_layer, bool swiglu) {
    Layer& L = layers[static_cast<size_t>(il)];
    LayerActs<T> a;
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
TrainGraph<T>::TrainGraph(const ModelConfig& cfg, int batch, int ctx, Backend<T>& be)
    : cfg_((cfg.validate(), cfg)), batch_(batch), ctx_(ctx), n_(int64_t{batch} * ctx), net_(cfg_, be),
      be_(be) {
  MLKV_REQUIRE(batch > 0 && ctx > 0, "training batch and context must be positive");
  MLKV_REQUIRE(ctx <= cfg.n_ctx, "training context ", ctx, " exceeds the model's context (",
               cfg.n_ctx, " positions)");
  rope_.build(cfg.n_rot, ctx, cfg.rope_inv_freq());
  pos_.resize(static_cast<size_t>(n_));
  for (int64_t t = 0; t < n_; ++t) pos_[static_cast<size_t>(t)] = static_cast<int32_t>(t % ctx);
  const int64_t n = n_, E = cfg.n_embd, Q = cfg.n_embd_q(), KV = cfg.n_embd_kv(), F = cfg.n_ff;
  const bool swiglu = cfg.mlp == MlpType::kSwiGlu;
  head_chunk_ = static_cast<int>(std::clamp<int64_t>(kHeadLogitsBudget / cfg.n_vocab, 1, n));
  inputs_.resize(static_cast<size_t>(n));
  targets_.resize(static_cast<size_t>(n));

  arena_ = std::make_unique<Arena>();
  Arena& A = *arena_;
  A.layers.resize(static_cast<size_t>(cfg.n_layer));
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
  attn_ = std::make_unique<Attention>(be, A, ops::AttnDims{batch, ctx, cfg.n_head, cfg.n_head_kv,
                                                           cfg.n_embd_head});
}

template <typename T>
TrainGraph<T>::~TrainGraph() = default;

template <typename T>
int64_t TrainGraph<T>::arena_bytes(const ModelConfig& cfg, int batch, int ctx, size_t elem) {
  const int64_t n = int64_t{batch} * ctx, E = cfg.n_embd, Q = cfg.n_embd_q(), KV = cfg.n_embd_kv();
  const int64_t F = cfg.n_ff, H = cfg.n_head, V = cfg.n_vocab;
  const bool swiglu = cfg.mlp == MlpType::kSwiGlu;
  int64_t floats = 0;
  for (const LayerSpec& s : layer_specs(cfg)) {
    floats += n * (2 * E + 2 * Q + 2) + n * H;         // x_in, xn1, q, o, mean1/rstd1, lse
    floats += n * (E + 2) + n * F * (swiglu ? 2 : 1);  // xn2, stats, u (+gate)
    if (!cfg.parallel_residual) floats += n * E;
    if (s.owns_kv) floats += 4 * n * KV;          // k, v, and their gradient accumulators
    if (s.shares_raw_keys) floats += 2 * n * KV;  // raw keys and their gradient accumulator
  }
  const int64_t chunk = std::clamp<int64_t>(kHeadLogitsBudget / V, 1, n);
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
  for (const auto& L : arena_->layers) {
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
double TrainGraph<T>::head(const ModelWeights& w, ModelWeights* grads, T grad_scale) {
  const ModelConfig& c = cfg_;
  Arena& A = *arena_;
  const int E = c.n_embd, V = c.n_vocab;
  const int n = static_cast<int>(n_);
  norm_forward(be_, c, w.out_norm, w.out_norm_b, Arena::p(A.x_final), Arena::p(A.xf),
               Arena::p(A.meanf), Arena::p(A.rstdf), n);
  net_.lap(Op::kNorm, false);
  double loss = 0;
  T* logits = Arena::p(A.logits);
  for (int64_t c0 = 0; c0 < n_; c0 += head_chunk_) {
    const int rows = static_cast<int>(std::min<int64_t>(head_chunk_, n_ - c0));
    const T* xf = Arena::p(A.xf) + c0 * E;
    be_.linear_forward(xf, w.output_matrix(), Tensor(), logits, rows, E, V, false);
    loss += be_.cross_entropy(logits, targets_.data() + c0, rows, V, grad_scale, grads != nullptr,
                              Arena::p(A.row_loss));
    if (grads != nullptr) {
      be_.linear_backward(logits, xf, w.output_matrix(), Arena::p(A.dxn) + c0 * E,
                          &grads->output_matrix(), nullptr, rows, E, V, /*accumulate_dx=*/false);
    }
  }
  net_.lap(Op::kHead, grads != nullptr);
  if (grads != nullptr) {
    be_.zero(Arena::p(A.dx), n_ * E);
    norm_backward(be_, c, w.out_norm, Arena::p(A.dxn), Arena::p(A.x_final),
                  Arena::p(A.meanf), Arena::p(A.rstdf), Arena::p(A.dx), grads->out_norm,
                  grads->out_norm_b, n);
    net_.lap(Op::kNorm, true);
  }
  return loss;
}

template <typename T>
double TrainGraph<T>::forward_backward(const ModelWeights& w, const int32_t* rows,
                                       ModelWeights* grads, T grad_scale, int n_rows) {
  const ModelConfig& c = cfg_;
  if (n_rows < 0) n_rows = batch_;
  MLKV_CHECK(n_rows >= 1 && n_rows <= batch_);
  n_ = int64_t{n_rows} * ctx_;
  attn_->dims().batch = n_rows;
  const int n = static_cast<int>(n_), E = c.n_embd, KV = c.n_embd_kv();
  const bool swiglu = c.mlp == MlpType::kSwiGlu;
  for (int b = 0; b < n_rows; ++b) {
    const int32_t* r = rows + int64_t{b} * (ctx_ + 1);
    for (int s = 0; s <= ctx_; ++s) {
      MLKV_REQUIRE(r[s] >= 0 && r[s] < c.n_vocab, "token id ", r[s], " is outside the vocabulary (",
                   c.n_vocab, " ids)");
    }
    std::copy(r, r + ctx_, inputs_.begin() + int64_t{b} * ctx_);
    std::copy(r + 1, r + ctx_ + 1, targets_.begin() + int64_t{b} * ctx_);
  }
  net_.profile = profile;
  net_.lap_start();
  Arena& A = *arena_;
  net_.embed(w, inputs_.data(), n, Arena::p(A.layers[0].x_in));
  for (int il = 0; il < c.n_layer; ++il) {
    net_.layer_forward(il, w.layers[static_cast<size_t>(il)], A.acts(il, c.n_layer, swiglu), n,
                       pos_.data(), rope_, *attn_);
  }
  const double loss = head(w, grads, grad_scale);
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
