// Token sampling (sampling/sampler.h): greedy is the argmax (first index on ties), a seed gives a
// reproducible sequence, top-k and top-p never pick outside their sets, and the empirical
// frequencies follow softmax(logits / T).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "sampling/sampler.h"

namespace mlkv {
namespace {

TEST(Sampler, GreedyIsArgmaxFirstOnTies) {
  const std::vector<float> x = {0.5f, 2.0f, -1.0f, 2.0f};
  Sampler s(SamplerParams{});
  EXPECT_EQ(s.sample(x.data(), 4), 1);
  EXPECT_EQ(argmax(x.data(), 4), 1);
}

TEST(Sampler, SeedReproducesAndCutsHold) {
  std::vector<float> x(50);
  for (int i = 0; i < 50; ++i) x[static_cast<size_t>(i)] = std::sin(0.7f * static_cast<float>(i)) * 3;
  auto draw = [&](SamplerParams p) {
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.sample(x.data(), 50));
    return out;
  };
  EXPECT_EQ(draw({1.0f, 0, 1.0f, 7}), draw({1.0f, 0, 1.0f, 7}));
  EXPECT_NE(draw({1.0f, 0, 1.0f, 7}), draw({1.0f, 0, 1.0f, 8}));
  // top-k 3: only the three largest logits.
  std::vector<int32_t> order(50);
  for (int i = 0; i < 50; ++i) order[static_cast<size_t>(i)] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return x[static_cast<size_t>(a)] > x[static_cast<size_t>(b)]; });
  for (int32_t t : draw({1.5f, 3, 1.0f, 1})) {
    EXPECT_TRUE(t == order[0] || t == order[1] || t == order[2]) << t;
  }
  // A tiny top-p keeps the single most likely token.
  for (int32_t t : draw({1.0f, 0, 1e-6f, 2})) EXPECT_EQ(t, order[0]);
}

TEST(Sampler, FrequenciesFollowSoftmax) {
  const std::vector<float> x = {1.0f, 0.0f, -1.0f, 0.5f};
  const float T = 0.8f;
  Sampler s({T, 0, 1.0f, 3});
  std::vector<int> count(4, 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++count[static_cast<size_t>(s.sample(x.data(), 4))];
  double z = 0;
  for (float v : x) z += std::exp(v / T);
  for (int i = 0; i < 4; ++i) {
    const double p = std::exp(x[static_cast<size_t>(i)] / T) / z;
    // 5 standard deviations of a binomial proportion.
    EXPECT_NEAR(count[static_cast<size_t>(i)] / double(n), p, 5 * std::sqrt(p * (1 - p) / n)) << i;
  }
}

TEST(Sampler, BadParametersAreErrors) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 1.5f, 0}), Error);
}

}  // namespace
}  // namespace mlkv
