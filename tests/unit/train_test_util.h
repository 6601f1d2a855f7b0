// Helpers for the training tests: random arrays, central finite differences in double, error
// metrics, and double copies of model weights (the f64 path of TrainGraph<double>).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace mlkv::testing {

inline std::vector<double> rand_vec(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

template <typename To, typename From>
std::vector<To> cast_vec(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// Result of comparing a gradient with finite differences over a set of entries: the largest
// |fd - analytic| divided by max(largest |analytic| of the array, 1e-12) ("normalised error"), and
// the largest plain relative error over entries whose |fd| is at least 1e-3 of that maximum.
struct FdResult {
  double max_norm_err = 0, max_rel_err = 0;
  int checked = 0;
};

// Central differences of loss() w.r.t. x[i] for the given indices (h = 1e-5 scaled to |x|);
// x and analytic hold n values.
inline FdResult fd_check(double* x, const double* analytic, size_t n,
                         const std::function<double()>& loss, const std::vector<size_t>& idx) {
  FdResult r;
  double amax = 1e-12;
  for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(analytic[i]));
  for (size_t i : idx) {
    const double x0 = x[i];
    const double h = 1e-5 * std::max(1.0, std::fabs(x0));
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    const double fd = (lp - lm) / (2 * h);
    const double err = std::fabs(fd - analytic[i]);
    r.max_norm_err = std::max(r.max_norm_err, err / amax);
    if (std::fabs(fd) >= 1e-3 * amax) r.max_rel_err = std::max(r.max_rel_err, err / std::fabs(fd));
    ++r.checked;
  }
  return r;
}

inline FdResult fd_check(std::vector<double>& x, const std::vector<double>& analytic,
                         const std::function<double()>& loss, const std::vector<size_t>& idx) {
  return fd_check(x.data(), analytic.data(), x.size(), loss, idx);
}

// Up to k distinct indices of [0, n), always including 0 and n-1.
inline std::vector<size_t> sample_indices(size_t n, size_t k, uint32_t seed) {
  std::vector<size_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = i;
  if (n <= k) return all;
  std::mt19937 rng(seed);
  std::shuffle(all.begin() + 1, all.end() - 1, rng);
  std::vector<size_t> out(all.begin(), all.begin() + static_cast<long>(k - 1));
  out.push_back(n - 1);
  return out;
}

// max |a - b| / max(max |b|, tiny)
template <typename A, typename B>
double norm_err(const std::vector<A>& a, const std::vector<B>& b) {
  double amax = 1e-30, e = 0;
  for (size_t i = 0; i < b.size(); ++i) amax = std::max(amax, std::fabs(double(b[i])));
  for (size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(double(a[i]) - double(b[i])));
  return e / amax;
}

// Every parameter of a model as f64 tensors (what TrainGraph<double> reads and writes), with
// access to each tensor's values by index in list_params() order.
class DoubleWeights {
 public:
  // copy_values: the values of src rounded to double; else zeros of the same shapes.
  DoubleWeights(const ModelConfig& cfg, const ModelWeights& src, bool copy_values) : cfg_(cfg) {
    if (copy_values) {
      w_ = convert_weights(cfg, src, DType::kF64);
    } else {
      allocate_weights(cfg, &w_, DType::kF64);
    }
    params_ = list_params(cfg_, w_);
  }
  ModelWeights& weights() { return w_; }
  size_t n_tensors() const { return params_.size(); }
  const std::string& name(size_t i) const { return params_[i].name; }
  double* values(size_t i) { return params_[i].tensor->data_as<double>(); }
  size_t size(size_t i) const { return static_cast<size_t>(params_[i].tensor->numel()); }
  void zero() {
    for (auto& p : params_) p.tensor->zero();
  }

 private:
  ModelConfig cfg_;
  ModelWeights w_;
  std::vector<ParamRef> params_;
};

}  // namespace mlkv::testing
