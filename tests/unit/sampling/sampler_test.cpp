// Token sampling (sampling/sampler.h): greedy is the argmax (first index on ties), a seed gives a
// reproducible sequence, top-k and top-p never pick outside their sets, and the empirical
// frequencies follow softmax(logits / T).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
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

namespace mlkv {
namespace {

// Any finite temperature > 0 is stable: a tiny one (where logit / T overflows a float) picks the
// greedy token, never a NaN-driven arbitrary one; a huge one is near uniform.
TEST(Sampler, TinyAndHugeTemperatures) {
  std::vector<float> x(512);
  for (int i = 0; i < 512; ++i) x[static_cast<size_t>(i)] = std::cos(0.37f * static_cast<float>(i)) * 5;
  const int32_t best = argmax(x.data(), 512);
  for (float t : {1e-38f, 1e-40f, 1e-45f, 1e-30f, 1e-6f}) {
    Sampler s({t, 0, 1.0f, 9});
    for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(x.data(), 512), best) << t;
  }
  for (float t : {1e-38f, 1e-6f}) {  // with top-k and top-p too
    Sampler s({t, 40, 0.9f, 9});
    EXPECT_EQ(s.sample(x.data(), 512), best) << t;
  }
  Sampler hot({1e30f, 0, 1.0f, 1});
  std::vector<int> seen(512, 0);
  for (int i = 0; i < 5000; ++i) ++seen[static_cast<size_t>(hot.sample(x.data(), 512))];
  int distinct = 0;
  for (int c : seen) distinct += c > 0;
  EXPECT_GT(distinct, 400);
  EXPECT_THROW(Sampler({std::numeric_limits<float>::infinity(), 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({std::nanf(""), 0, 1.0f, 0}), Error);
}

TEST(Sampler, NonFiniteLogitsAreAClearError) {
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = {0.5f, 1.0f, bad, 0.2f};
    for (float t : {0.0f, 1.0f}) {
      Sampler s({t, 0, 1.0f, 0});
      try {
        s.sample(x.data(), 4);
        FAIL() << "sampled from logits holding " << bad;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("non-finite logit"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("token id 2"), std::string::npos) << e.what();
      }
    }
  }
}

}  // namespace
}  // namespace mlkv
