// The training forward and backward pass of the whole decoder, for both families and every KV
// sharing scheme, templated on the float type (float trains; double is the gradient-check path).
//
// Semantics are those of the inference forward (model/forward.cpp + attention.cpp): norm ->
// q (+bias) rotated; owner layers compute k, v from their own normed input; "post" sharing gives
// consumers the owner's rotated keys, "pre" its unrotated keys (the owner itself always attends
// with rotated keys); causal attention, query head h on KV head h / (H / G); parallel or sequential
// residual; GELU (erf or tanh) or SwiGLU MLP; final norm; logits against the output matrix (the
// embedding when tied). The gradients of every consumer layer flow into its owner's K/V
// projections: consumers are visited first in the backward pass and add into the owner's dK/dV.
//
// Memory: activations are kept once per layer in an arena allocated at construction (no allocation
// per step); attention scores are recomputed in the backward pass, and the logits exist only for a
// chunk of rows at a time (the output layer and cross-entropy are fused, forward and backward).
// activation_bytes() gives the exact arena size; docs/TRAINING.md has the formula.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "kernels/ops.h"

namespace mlkv::train {

// Raw pointers to one layer's parameters (or to their gradients); null where absent.
template <typename T>
struct LayerView {
  T *attn_norm = nullptr, *attn_norm_b = nullptr;  // [E]
  T *wq = nullptr, *bq = nullptr;                  // [Q, E], [Q]
  T *wk = nullptr, *bk = nullptr;                  // [KV, E], [KV]   owner layers only
  T *wv = nullptr, *bv = nullptr;
  T *wo = nullptr, *bo = nullptr;                // [E, Q], [E]
  T *ffn_norm = nullptr, *ffn_norm_b = nullptr;  // [E]
  T* w_gate = nullptr;                           // [F, E]          SwiGLU only
  T *w_up = nullptr, *b_up = nullptr;            // [F, E], [F]
  T *w_down = nullptr, *b_down = nullptr;        // [E, F], [E]
};

template <typename T>
struct WeightsView {
  T* tok_embd = nullptr;  // [V, E]
  std::vector<LayerView<T>> layers;
  T *out_norm = nullptr, *out_norm_b = nullptr;  // [E]
  T* output = nullptr;                           // [V, E]; == tok_embd when the embedding is tied
};

// A view whose pointers come from ptr(tensor) for each tensor of w (null for empty tensors). Used
// with the parameters, the gradients (same ModelWeights layout), or a double copy of either.
template <typename T>
WeightsView<T> make_view(const ModelConfig& cfg, ModelWeights& w,
                         const std::function<T*(Tensor&)>& ptr);
// The f32 view of a ModelWeights.
WeightsView<float> view_of(const ModelConfig& cfg, ModelWeights& w);

// Wall time per op kind, forward and backward, summed over calls (for the benchmark breakdown).
enum class Op {
  kEmbed,
  kNorm,
  kQkv,
  kRope,
  kAttention,
  kAttnOut,
  kMlpMatmul,
  kActivation,
  kHead,
  kResidual,
  kCount
};
const char* op_name(Op op);
struct OpProfile {
  double fwd[static_cast<int>(Op::kCount)] = {};
  double bwd[static_cast<int>(Op::kCount)] = {};
  void clear() { *this = OpProfile{}; }
};

template <typename T>
class TrainGraph {
 public:
  // Buffers for micro-batches of `batch` rows of `ctx` positions.
  TrainGraph(const ModelConfig& cfg, int batch, int ctx);

  int batch() const { return batch_; }
  int ctx() const { return ctx_; }

  // rows: [batch, ctx + 1] token ids; row b predicts rows[b][1..ctx] from rows[b][0..ctx-1].
  // Returns the SUM of the batch * ctx next-token cross-entropies (nats). When grads is not null,
  // adds grad_scale * d(sum)/d(parameter) into *grads (a view of the same layout as w).
  // n_rows (1..batch, default batch) runs a smaller batch in the same buffers.
  // Throws mlkv::Error for a token id outside the vocabulary.
  double forward_backward(const WeightsView<T>& w, const int32_t* rows, const WeightsView<T>* grads,
                          T grad_scale, int n_rows = -1);

  // Bytes of the activation arena and scratch for this geometry (elem = sizeof(T)), not counting
  // the per-thread attention blocks (2 * 64 * ctx + ctx elements per thread).
  static int64_t arena_bytes(const ModelConfig& cfg, int batch, int ctx, size_t elem);
  // What this graph holds now (equals arena_bytes after the first backward pass).
  int64_t allocated_bytes() const;

  // When set, forward_backward adds its per-op wall times here.
  OpProfile* profile = nullptr;

 private:
  struct LayerActs {
    std::vector<T> x_in;               // [n, E] layer input (residual stream)
    std::vector<T> xn1, mean1, rstd1;  // [n, E], [n], [n]
    std::vector<T> q;                  // [n, Q] rotated queries
    std::vector<T> k_rot, k_raw, v;    // [n, KV] owners only; k_raw only for pre sharing
    std::vector<T> o, lse;             // [n, Q] attention output, [B, H, ctx]
    std::vector<T> x_mid;              // [n, E] x + attn (sequential residual only)
    std::vector<T> xn2, mean2, rstd2;  // [n, E], [n], [n]
    std::vector<T> u, gate;            // [n, F] up (pre-activation), gate (SwiGLU)
  };

  // Adds the wall time since the previous lap to op's bucket (no-op without a profile).
  void lap(Op op, bool bwd);
  void norm_fwd(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd);
  void norm_bwd(const T* dy, const T* x, const T* w, const T* mean, const T* rstd, T* dx, T* dw,
                T* db);
  void layer_forward(int il, const LayerView<T>& L, T* out);
  void layer_backward(int il, const LayerView<T>& L, const LayerView<T>& dL, T* dx);
  void mlp_backward(int il, const LayerView<T>& L, const LayerView<T>& dL, const T* dy);
  void attn_core_backward(int il, const LayerView<T>& L, const LayerView<T>& dL);
  double head(const WeightsView<T>& w, const WeightsView<T>* grads, T grad_scale);

  ModelConfig cfg_;
  int batch_, ctx_;
  int64_t n_;  // batch * ctx rows
  ops::AttnDims dims_;
  ops::RopeTable<T> rope_;
  std::vector<int32_t> pos_;  // [batch * ctx] position of each row: t % ctx
  ops::AttnScratch<T> attn_scratch_;
  int head_chunk_;  // rows of logits materialised at once
  double lap_t_ = 0;

  std::vector<int32_t> inputs_, targets_;  // [n]
  std::vector<LayerActs> acts_;
  std::vector<T> x_final_, xf_, meanf_, rstdf_;  // final norm input/output and stats
  // Backward scratch.
  std::vector<T> dx_, dxn_, d_o_, dq_, dk_tmp_, act_, d_act_, d_up_, logits_, row_loss_;
  std::vector<std::vector<T>> dk_acc_, dv_acc_;  // per owner layer: grads w.r.t. its K/V
};

}  // namespace mlkv::train
