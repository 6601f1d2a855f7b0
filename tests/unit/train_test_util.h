// Helpers for the training tests: random arrays, central finite differences in double, error
// metrics, and double copies of model weights (the reference path of TrainGraph<double>).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "train/train_model.h"

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

// Central differences of loss() w.r.t. x[i] for the given indices (h = 1e-5 scaled to |x|).
inline FdResult fd_check(std::vector<double>& x, const std::vector<double>& analytic,
                         const std::function<double()>& loss, const std::vector<size_t>& idx) {
  FdResult r;
  double amax = 1e-12;
  for (double g : analytic) amax = std::max(amax, std::fabs(g));
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

// A double copy of every parameter tensor of a ModelWeights, addressable through a
// WeightsView<double>. `layout` supplies the tensor structure (its values are not used after
// construction).
class DoubleWeights {
 public:
  DoubleWeights(const ModelConfig& cfg, ModelWeights& layout, bool copy_values) : cfg_(cfg) {
    for (auto& p : list_params(cfg, layout)) {
      auto& v = store_[p.tensor];
      v.assign(static_cast<size_t>(p.tensor->numel()), 0.0);
      if (copy_values) {
        for (int64_t i = 0; i < p.tensor->numel(); ++i) v[static_cast<size_t>(i)] = (*p.tensor)[i];
      }
      names_.push_back(p.name);
      order_.push_back(p.tensor);
    }
    view_ =
        train::make_view<double>(cfg, layout, [this](Tensor& t) { return store_.at(&t).data(); });
  }
  train::WeightsView<double>& view() { return view_; }
  size_t n_tensors() const { return order_.size(); }
  const std::string& name(size_t i) const { return names_[i]; }
  std::vector<double>& values(size_t i) { return store_.at(order_[i]); }
  void zero() {
    for (auto& [k, v] : store_) std::fill(v.begin(), v.end(), 0.0);
  }

 private:
  ModelConfig cfg_;
  std::map<const Tensor*, std::vector<double>> store_;
  std::vector<const Tensor*> order_;
  std::vector<std::string> names_;
  train::WeightsView<double> view_;
};

}  // namespace mlkv::testing
