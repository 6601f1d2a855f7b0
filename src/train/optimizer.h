// AdamW with decoupled weight decay, the learning-rate schedule, global-norm gradient clipping and
// gradient helpers, on ModelWeights (parameters, gradients and both moments share one layout, so
// list_params() walks them in step). The update is exactly torch.optim.AdamW's (and
// tests/reference/mlkv_ref.py's):
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,  m^ = m / (1 - b1^t),  v^ = v / (1 - b2^t),
//   p <- p - lr (m^ / (sqrt(v^) + eps) + wd p),  wd = weight_decay for matrices and embeddings,
//   0 for norm weights and biases (ParamRef::decay).
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/weights.h"

namespace mlkv::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.01;
};

// lr(s) for step s in [0, total): linear warmup lr (s + 1) / W for s < W, then
//   cosine:   lr_min + (lr - lr_min) (1 + cos(pi (s - W) / max(1, total - W))) / 2
//   linear:   lr_min + (lr - lr_min) (1 - (s - W) / max(1, total - W))
//   constant: lr
// with lr_min = min_ratio * lr. The cosine form is mlkv_ref.py's lr_at, term for term.
struct LrSchedule {
  enum class Kind { kCosine, kLinear, kConstant };
  Kind kind = Kind::kCosine;
  double lr = 6e-4;
  int64_t warmup = 0;
  int64_t total = 1;
  double min_ratio = 0.1;

  double at(int64_t step) const;
  static Kind parse(const std::string& name);  // "cosine" | "linear" | "constant"
  static const char* name(Kind k);
};

class AdamW {
 public:
  // Allocates zero moments shaped like the parameters of cfg, on the parameters' device.
  AdamW(const ModelConfig& cfg, AdamWConfig c, Device device = Device::kCpu);

  // One update at step t = steps() + 1 with learning rate lr; the gradients are multiplied by
  // grad_scale first (clipping). Parameters and moments change in place; with zero_grads_after the
  // gradients are zeroed in the same pass (ready for the next step's accumulation).
  void step(ModelWeights& params, ModelWeights& grads, double lr, double grad_scale,
            bool zero_grads_after = false);

  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  ModelWeights& m() { return m_; }
  ModelWeights& v() { return v_; }
  const AdamWConfig& config() const { return c_; }

 private:
  ModelConfig cfg_;
  AdamWConfig c_;
  ModelWeights m_, v_;
  int64_t t_ = 0;
};

// sqrt(sum of squares of every gradient entry), accumulated in double in a fixed order. A
// non-finite entry makes it non-finite (a square of a finite float always fits a double); then
// *first_nonfinite (when given) names the first tensor, in list_params() order, holding one.
double global_grad_norm(const ModelConfig& cfg, ModelWeights& grads,
                        std::string* first_nonfinite = nullptr);
// Sets every gradient to zero.
void zero_grads(const ModelConfig& cfg, ModelWeights& grads);

}  // namespace mlkv::train
