// AdamW, schedule, clipping helpers (optimizer.h).
#include "train/optimizer.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"

namespace mlkv::train {

namespace {
constexpr double kPi = 3.14159265358979323846;
constexpr int64_t kChunk = int64_t{1} << 16;  // elements per work item (update, norm)
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

AdamW::AdamW(const ModelConfig& cfg, AdamWConfig c) : cfg_(cfg), c_(c) {
  allocate_weights(cfg, &m_);
  allocate_weights(cfg, &v_);
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
  for (size_t i = 0; i < p.size(); ++i) {
    float* pp = p[i].tensor->data();
    float* gg = g[i].tensor->data();
    float* mm = m[i].tensor->data();
    float* vv = v[i].tensor->data();
    const float wd = p[i].decay ? static_cast<float>(c_.weight_decay) : 0.0f;
    const int64_t n = p[i].tensor->numel();
#pragma omp parallel for schedule(static) if (n > kChunk)
    for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
      const int64_t c1 = std::min(n, c0 + kChunk);
      // Memory-bound (28-32 bytes per parameter): one pass, 8 lanes, gradients optionally zeroed in
      // the same pass for the next step.
      const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), v1b1 = _mm256_set1_ps(1.0f - b1),
                   v1b2 = _mm256_set1_ps(1.0f - b2), vbc1 = _mm256_set1_ps(bc1), vbc2 = _mm256_set1_ps(bc2),
                   veps = _mm256_set1_ps(eps), vlr = _mm256_set1_ps(lrf), vgs = _mm256_set1_ps(gs),
                   vwd = _mm256_set1_ps(wd);
      int64_t j = c0;
      for (; j + 8 <= c1; j += 8) {
        const __m256 gj = _mm256_mul_ps(_mm256_loadu_ps(gg + j), vgs);
        const __m256 mj = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(mm + j)), _mm256_mul_ps(v1b1, gj));
        const __m256 vj = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(vv + j)),
                                        _mm256_mul_ps(_mm256_mul_ps(v1b2, gj), gj));
        const __m256 denom = _mm256_add_ps(_mm256_sqrt_ps(_mm256_mul_ps(vj, vbc2)), veps);
        const __m256 pj = _mm256_loadu_ps(pp + j);
        const __m256 upd = _mm256_add_ps(_mm256_div_ps(_mm256_mul_ps(mj, vbc1), denom), _mm256_mul_ps(vwd, pj));
        _mm256_storeu_ps(mm + j, mj);
        _mm256_storeu_ps(vv + j, vj);
        _mm256_storeu_ps(pp + j, _mm256_sub_ps(pj, _mm256_mul_ps(vlr, upd)));
        if (zero_grads_after) _mm256_storeu_ps(gg + j, _mm256_setzero_ps());
      }
      for (; j < c1; ++j) {
        const float gj = gg[j] * gs;
        mm[j] = b1 * mm[j] + (1.0f - b1) * gj;
        vv[j] = b2 * vv[j] + (1.0f - b2) * gj * gj;
        const float denom = std::sqrt(vv[j] * bc2) + eps;
        pp[j] = pp[j] - lrf * (mm[j] * bc1 / denom + wd * pp[j]);
        if (zero_grads_after) gg[j] = 0.0f;
      }
    }
  }
}

double global_grad_norm(const ModelConfig& cfg, ModelWeights& grads) {
  double total = 0;
  std::vector<double> part;
  for (auto& r : list_params(cfg, grads)) {
    const float* g = r.tensor->data();
    const int64_t n = r.tensor->numel();
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    part.assign(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t c0 = c * kChunk, c1 = std::min(n, c0 + kChunk);
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = c0; j < c1; ++j) s += static_cast<double>(g[j]) * g[j];
      part[static_cast<size_t>(c)] = s;
    }
    for (double s : part) total += s;
  }
  return std::sqrt(total);
}

void zero_grads(const ModelConfig& cfg, ModelWeights& grads) {
  for (auto& r : list_params(cfg, grads)) r.tensor->zero();
}

}  // namespace mlkv::train
