// AdamW, schedule, clipping helpers (optimizer.h).
#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/backend.h"

namespace mlkv::train {

namespace {
constexpr double kPi = 3.14159265358979323846;
}  // namespace

double LrSchedule::at(int64_t step) const {
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (kind == Kind::kConstant) return lr;
  const double lr_min = min_ratio * lr;
  const double progress = static_cast<double>(step - warmup) /
                          static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (kind == Kind::kLinear) return lr_min + (lr - lr_min) * (1.0 - progress);
  return lr_min + (lr - lr_min) * 0.5 * (1.0 + std::cos(kPi * progress));
}

LrSchedule::Kind LrSchedule::parse(const std::string& name) {
  if (name == "cosine") return Kind::kCosine;
  if (name == "linear") return Kind::kLinear;
  if (name == "constant") return Kind::kConstant;
  fail("unknown learning-rate schedule '", name, "' (known: cosine, linear, constant)");
}

const char* LrSchedule::name(Kind k) {
  switch (k) {
    case Kind::kCosine:
      return "cosine";
    case Kind::kLinear:
      return "linear";
    case Kind::kConstant:
      return "constant";
  }
  return "?";
}

AdamW::AdamW(const ModelConfig& cfg, AdamWConfig c, Device device) : cfg_(cfg), c_(c) {
  allocate_weights(cfg, &m_, DType::kF32, device);
  allocate_weights(cfg, &v_, DType::kF32, device);
}

void AdamW::step(ModelWeights& params, ModelWeights& grads, double lr, double grad_scale,
                 bool zero_grads_after) {
  ++t_;
  const float b1 = static_cast<float>(c_.beta1), b2 = static_cast<float>(c_.beta2);
  const float bc1 = static_cast<float>(1.0 / (1.0 - std::pow(c_.beta1, static_cast<double>(t_))));
  const float bc2 = static_cast<float>(1.0 / (1.0 - std::pow(c_.beta2, static_cast<double>(t_))));
  const float eps = static_cast<float>(c_.eps), lrf = static_cast<float>(lr),
              gs = static_cast<float>(grad_scale);
  auto p = list_params(cfg_, params);
  auto g = list_params(cfg_, grads);
  auto m = list_params(cfg_, m_);
  auto v = list_params(cfg_, v_);
  MLKV_CHECK(p.size() == g.size() && p.size() == m.size() && p.size() == v.size());
  ops::AdamWStep h{};
  h.beta1 = b1;
  h.beta2 = b2;
  h.eps = eps;
  h.lr = lrf;
  h.bias_corr1 = bc1;
  h.bias_corr2 = bc2;
  h.grad_scale = gs;
  Backend<float>& be = backend<float>(params.tok_embd.device());
  for (size_t i = 0; i < p.size(); ++i) {
    h.weight_decay = p[i].decay ? static_cast<float>(c_.weight_decay) : 0.0f;
    be.adamw_update(*p[i].tensor, *g[i].tensor, *m[i].tensor, *v[i].tensor, h, zero_grads_after);
  }
}

double global_grad_norm(const ModelConfig& cfg, ModelWeights& grads, std::string* first_nonfinite) {
  Backend<float>& be = backend<float>(grads.tok_embd.device());
  double total = 0;
  for (auto& r : list_params(cfg, grads)) {
    const double ss = be.sum_squares(*r.tensor);
    if (first_nonfinite && first_nonfinite->empty() && !std::isfinite(ss))
      *first_nonfinite = r.name;
    total += ss;
  }
  return std::sqrt(total);
}

void zero_grads(const ModelConfig& cfg, ModelWeights& grads) {
  for (auto& r : list_params(cfg, grads)) r.tensor->zero();
}

}  // namespace mlkv::train
