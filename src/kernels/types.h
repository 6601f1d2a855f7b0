// Plain data shared by the op signatures (kernels/ops.h), the scalar reference (kernels/ref/) and
// the CPU kernels: rotary tables, attention dimensions, one AdamW step's hyper-parameters.
#pragma once

#include <cstdint>
#include <vector>

namespace mlkv::ops {

// theta^(-2i / n_rot) for i < n_rot / 2, in double (rotary inverse frequencies before scaling).
std::vector<double> rope_inv_freq(int n_rot, double theta);

// cos and sin of pos * inv_freq[i] for pos in [0, n_pos), i in [0, n_rot / 2): [n_pos, n_rot / 2].
// Computed in double and rounded once, so long positions keep full accuracy.
template <typename T>
struct RopeTable {
  int n_rot = 0, n_pos = 0;
  std::vector<T> cos, sin;
  // inv_freq: the n_rot / 2 inverse frequencies (ModelConfig::rope_inv_freq, scaling applied).
  void build(int n_rot, int n_pos, const std::vector<double>& inv_freq);
};

// Causal attention over whole sequences (training): q [batch * ctx, n_head, head_dim], k and v
// [batch * ctx, n_head_kv, head_dim]; row b * ctx + s is position s of sequence b and sees keys
// 0..s of its sequence; query head h reads KV head h / (n_head / n_head_kv); scale 1 / sqrt(d).
struct AttnDims {
  int batch = 0, ctx = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int64_t n_rows() const { return int64_t{batch} * ctx; }
};

// One AdamW update (torch.optim.AdamW's formula; train/optimizer.h):
//   g' = g grad_scale, m = b1 m + (1 - b1) g', v = b2 v + (1 - b2) g'^2,
//   p -= lr (m bias_corr1 / (sqrt(v bias_corr2) + eps) + weight_decay p).
struct AdamWStep {
  float beta1, beta2, eps;
  float lr;            // learning rate of this step
  float weight_decay;  // 0 for parameters that are not decayed
  float bias_corr1;    // 1 / (1 - beta1^t)
  float bias_corr2;    // 1 / (1 - beta2^t)
  float grad_scale;    // gradients are multiplied by this first (clipping)
};

}  // namespace mlkv::ops
