// Model weights as tensors, and the ONE place that knows checkpoint tensor names.
// ModelWeights is used for parameters, gradients and optimizer moments alike (same shapes), in
// f32 (training, loading), f64 (the gradient-check path) or with f16 matrices (inference), so
// list_params() is the single enumeration that loading, saving, optimizing, gradient averaging,
// converting and comparing all walk.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace mlkv {

struct LayerWeights {
  Tensor attn_norm;    // [n_embd]
  Tensor attn_norm_b;  // [n_embd]        LayerNorm only
  Tensor wq;           // [n_head*d, n_embd]
  Tensor bq;           // [n_head*d]      attn_bias only
  Tensor wk, wv;       // [n_head_kv*d, n_embd]  owner layers only
  Tensor bk, bv;       // [n_head_kv*d]   owner layers, attn_bias only
  Tensor wo;           // [n_embd, n_head*d]
  Tensor bo;           // [n_embd]        attn_bias only
  Tensor ffn_norm;     // [n_embd]
  Tensor ffn_norm_b;   // [n_embd]        LayerNorm only
  Tensor w_gate;       // [n_ff, n_embd]  SwiGLU only
  Tensor b_gate;       // [n_ff]          SwiGLU with mlp_bias only
  Tensor w_up;         // [n_ff, n_embd]
  Tensor b_up;         // [n_ff]          mlp_bias only
  Tensor w_down;       // [n_embd, n_ff]
  Tensor b_down;       // [n_embd]        mlp_bias only
};

struct ModelWeights {
  Tensor tok_embd;     // [n_vocab, n_embd]
  std::vector<LayerWeights> layers;
  Tensor out_norm;     // [n_embd]
  Tensor out_norm_b;   // [n_embd]        LayerNorm only
  Tensor output;       // [n_vocab, n_embd]; empty when the embedding is tied

  const Tensor& output_matrix() const { return output.empty() ? tok_embd : output; }
  Tensor& output_matrix() { return output.empty() ? tok_embd : output; }
};

// A model as loaded: its config and f32 weights.
struct LoadedModel {
  ModelConfig config;
  ModelWeights weights;
};

// One parameter: its canonical (HF, split-layout) name, the tensor, and whether AdamW decays it
// (matrices and embeddings yes; norms and biases no).
struct ParamRef {
  std::string name;
  Tensor* tensor;
  bool decay;
};

// Every parameter that exists for this config, in a fixed order.
std::vector<ParamRef> list_params(const ModelConfig& cfg, ModelWeights& w);
// Same, for read-only use.
std::vector<std::pair<std::string, const Tensor*>> list_params(const ModelConfig& cfg,
                                                               const ModelWeights& w);

// Allocates every tensor the config calls for, zero-filled, of the given element type, on the
// given device.
void allocate_weights(const ModelConfig& cfg, ModelWeights* w, DType dtype = DType::kF32,
                      Device device = Device::kCpu);

// A copy of every parameter converted to dtype (F32, F16, BF16 or F64); with matrices_only, only
// 2-d tensors are converted and norms and biases keep their type (f16 inference weights).
// Moves every tensor of w to `device` (a no-op for tensors already there).
void move_weights(const ModelConfig& cfg, ModelWeights* w, Device device);
// A copy of w with every tensor on `device`, each copied there directly (one transfer, no
// intermediate copy on w's device).
ModelWeights copy_weights(const ModelConfig& cfg, const ModelWeights& w, Device device);

ModelWeights convert_weights(const ModelConfig& cfg, const ModelWeights& w, DType dtype,
                             bool matrices_only = false);

// Deterministic random initialisation (GPT-2 style: normal(0, 0.02), output projections scaled
// by 1/sqrt(2 * n_layer), norms 1, biases 0).
void init_weights_random(const ModelConfig& cfg, ModelWeights* w, uint64_t seed, float std = 0.02f);

}  // namespace mlkv
