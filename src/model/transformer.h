// The one layer loop of mlkv, for both model families and every sharing scheme, run by inference
// (model/model.h: activations in one scratch set, K/V in the KV cache) and by training
// (train/train_model.h: activations saved per layer for the backward pass, K/V in the owners'
// saved buffers) alike. What differs between the two is data: which buffers a layer writes
// (LayerActs) and where keys and values live (AttentionContext). The per-layer sharing semantics
// come from LayerSpec (model/layer_spec.h); the computation from the blocks (model/blocks.h) on a
// Backend<T>.
//
// One layer, forward (rows x_in [n, E]):
//   xn1 = norm1(x_in); q (+ owners: k, v) = projections, rotary   (attention_in_forward)
//   o = attention over the layer's K/V source                      (AttentionContext::attend)
//   parallel residual:   x_out = x_in + o Wo^T + mlp(norm2(x_in))
//   sequential residual: x_mid = x_in + o Wo^T; x_out = x_mid + mlp(norm2(x_mid))
// and backward the reverse, with one twist for the parallel residual: both branches read the same
// upstream gradient, so both output projections are differentiated before either norm adds to it.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/blocks.h"

namespace mlkv {

// Where a layer's keys and values live and how it attends: the KV cache (inference) or the owner
// layers' saved activations (training).
template <typename T>
class AttentionContext {
 public:
  virtual ~AttentionContext() = default;
  // Called once per layer after the projections and rotary: owners make their K/V available
  // (inference: store into the cache), then a.o (and, training, a.lse) is computed from a.q
  // against the K/V of spec.kv_source, rotated or raw as spec.reads_rotated_keys says.
  virtual void attend(const LayerSpec& spec, const LayerActs<T>& a) = 0;
};

// Wall time per op kind, forward and backward, summed over calls (the training benchmark's
// per-op breakdown; `mlkv train --profile`).
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
class Transformer {
 public:
  // cfg must be valid; the backend computes (its device holds the activations and weights).
  Transformer(const ModelConfig& cfg, Backend<T>& be);

  const ModelConfig& config() const { return cfg_; }
  const std::vector<LayerSpec>& specs() const { return specs_; }
  Backend<T>& backend() { return be_; }

  // x [n, E] = embedding rows of tok [n].
  void embed(const ModelWeights& w, const int32_t* tok, int n, T* x);
  // Runs layer il forward over n rows at positions pos [n] (see the file comment).
  void layer_forward(int il, const LayerWeights& w, const LayerActs<T>& a, int n,
                     const int32_t* pos, const ops::RopeTable<T>& rt, AttentionContext<T>& attn);

  // Scratch of a layer's backward pass (training), all [n, *] on the backend's device.
  struct BackwardScratch {
    T *dxn, *d_o, *dq, *dk, *d_act, *d_up, *act;
  };
  // The attention core's backward, given d_o: writes dq and accumulates the owner's key and value
  // gradients (the training context knows where they live).
  using AttendBackward = std::function<void(const LayerSpec&, const LayerActs<T>&, const T* d_o,
                                            T* dq)>;
  // Owner il's accumulated gradients w.r.t. its rotated keys, raw keys and values (null when no
  // reader of that kind exists); valid once every layer reading from il has run backward.
  struct KvGrads {
    T *dk_rot, *dk_raw, *dv;
  };
  // Layer il backward: dx [n, E] holds d loss / d x_out on entry and d loss / d x_in on return.
  void layer_backward(int il, const LayerWeights& w, LayerWeights& g, const LayerActs<T>& a, int n,
                      const int32_t* pos, const ops::RopeTable<T>& rt, T* dx,
                      const BackwardScratch& s, const AttendBackward& attend_bwd,
                      const KvGrads& owner_grads);

  // When set, every op's wall time is added here.
  OpProfile* profile = nullptr;
  void lap_start();
  void lap(Op op, bool bwd);

 private:
  ModelConfig cfg_;
  Backend<T>& be_;
  std::vector<LayerSpec> specs_;
  double lap_t_ = 0;
};

}  // namespace mlkv
