// The blocks of a decoder layer, forward and backward side by side, on a Backend<T>: norm,
// attention projections (q/k/v + rotary; the attention itself is the AttentionContext's, see
// model/transformer.h), MLP, embedding and output head. Each block reads the config's flags
// (LayerNorm or RMSNorm, GELU or SwiGLU, biases) and the layer's LayerSpec (owner or consumer,
// raw keys kept), never a model family. Backward functions accumulate parameter gradients (+=) and
// write or accumulate input gradients as stated.
#pragma once

#include <cstdint>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/layer_spec.h"
#include "model/weights.h"

namespace mlkv {

// Pointers to one layer's activations on the backend's device (shapes for n rows; E = n_embd,
// Q = n_head * d_head, KV = n_head_kv * d_head, F = n_ff). Inference points every layer at one
// scratch set with x_out == x_mid == x_in (the residual stream updated in place), act == u and no
// statistics; training gives every layer its own saved buffers. Null where not needed.
template <typename T>
struct LayerActs {
  T* x_in = nullptr;   // [n, E] layer input (residual stream)
  T* x_out = nullptr;  // [n, E] layer output
  T* xn1 = nullptr;    // [n, E] attention norm output
  T* mean1 = nullptr;  // [n] LayerNorm mean (training)
  T* rstd1 = nullptr;  // [n] 1 / std (training)
  T* q = nullptr;      // [n, Q] queries, rotated
  T* k = nullptr;      // [n, KV] owners: keys, rotated
  T* k_raw = nullptr;  // [n, KV] owners whose consumers read raw keys: keys before rotary
  T* v = nullptr;      // [n, KV] owners: values
  T* o = nullptr;      // [n, Q] attention output (before the output projection)
  T* lse = nullptr;    // [batch, n_head, ctx] training: softmax log-normaliser
  T* x_mid = nullptr;  // [n, E] sequential residual: x_in + attention
  T* xn2 = nullptr;    // [n, E] MLP norm output
  T* mean2 = nullptr;  // [n]
  T* rstd2 = nullptr;  // [n]
  T* u = nullptr;      // [n, F] up projection, before the activation
  T* gate = nullptr;   // [n, F] SwiGLU gate projection
  T* act = nullptr;    // [n, F] activation output (may equal u)
};

// y = norm(x) with the config's norm type, per row of x [n, E]; mean/rstd saved when not null.
template <typename T>
void norm_forward(Backend<T>& be, const ModelConfig& c, const Tensor& w, const Tensor& b, const T* x,
                  T* y, T* mean, T* rstd, int n);
// dx += d norm / dx . dy; dw, db += parameter gradients.
template <typename T>
void norm_backward(Backend<T>& be, const ModelConfig& c, const Tensor& w, const T* dy, const T* x,
                   const T* mean, const T* rstd, T* dx, Tensor& dw, Tensor& db, int n);

// Attention input: q = xn1 Wq^T (+ bq) rotated; owners also k, v (keys kept raw in k_raw when the
// spec shares raw keys, then rotated in k). pos [n] are the rows' positions.
template <typename T>
void attention_in_forward(Backend<T>& be, const ModelConfig& c, const LayerSpec& s,
                          const LayerWeights& w, const LayerActs<T>& a, int n, const int32_t* pos,
                          const ops::RopeTable<T>& rt);
// Backward of the projections: dq [n, Q] (gradient w.r.t. the rotated queries; un-rotated in
// place), and for owners dk_rot (w.r.t. rotated keys; un-rotated in place, may be null), dk_raw
// (w.r.t. raw keys, may be null) and dv; writes dxn [n, E] and accumulates the weight gradients.
template <typename T>
void attention_in_backward(Backend<T>& be, const ModelConfig& c, const LayerSpec& s,
                           const LayerWeights& w, LayerWeights& g, const LayerActs<T>& a, int n,
                           const int32_t* pos, const ops::RopeTable<T>& rt, T* dq, T* dk_rot,
                           const T* dk_raw, const T* dv, T* dk_tmp, T* dxn);

// MLP: act = f(xn2 ...) into a.act (and a.u, a.gate), then out += act W_down^T (+ b_down).
// SwiGLU: act = silu(xn2 W_gate^T + b_gate) * (xn2 W_up^T + b_up); GELU: act = gelu(xn2 W_up^T +
// b_up); biases where the config has mlp_bias (always for GPT-NeoX).
template <typename T>
void mlp_forward(Backend<T>& be, const ModelConfig& c, const LayerWeights& w, const LayerActs<T>& a,
                 int n, T* out);
// Given dy = d loss / d out: accumulates the MLP's weight gradients and writes dxn = d loss / d xn2.
// scratch: d_act, d_up [n, F], act [n, F] (the activation is recomputed, not stored).
template <typename T>
void mlp_backward(Backend<T>& be, const ModelConfig& c, const LayerWeights& w, LayerWeights& g,
                  const LayerActs<T>& a, int n, const T* dy, T* dxn, T* d_act, T* d_up, T* act);

}  // namespace mlkv
