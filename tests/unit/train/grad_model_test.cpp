// Whole-model gradient checks of the training graph (train/train_model.h):
//  1. TrainGraph<double> against central finite differences of the mean cross-entropy, on entries
//     of every parameter tensor, for tiny models of both families under MHA, GQA, MQA, MLKV with
//     m = L/2 and m = 1 and an irregular map, each with pre and post sharing; plus sequential
//     residual, tanh GELU and tied embeddings.
//  2. The float graph (the one that trains) against the double graph: every gradient tensor.
//  3. The training forward's loss against the inference engine's log-probs (model/forward.cpp),
//     so training and inference share one semantics.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>

#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"
#include "train/train_model.h"
#include "train_test_util.h"

namespace mlkv::train {
namespace {

using mlkv::testing::DoubleWeights;
using mlkv::testing::fd_check;
using mlkv::testing::sample_indices;

struct Case {
  std::string name;
  Family fam;
  int G;
  std::vector<int> kv_source;
  KvShareRope share;
  int variant;  // 0 plain; 1 neox sequential residual / llama tied; 2 neox tanh GELU
};

std::vector<Case> cases() {
  struct Scheme {
    const char* name;
    int G;
    std::vector<int> src;
  };
  const std::vector<Scheme> schemes = {{"mha", 4, {}},
                                       {"gqa", 2, {}},
                                       {"mqa", 1, {}},
                                       {"mlkv_half", 2, {0, 0, 2, 2}},
                                       {"mlkv_one", 1, {0, 0, 0, 0}},
                                       {"irregular", 2, {0, 1, 1, 3}}};
  std::vector<Case> out;
  int k = 0;
  for (Family fam : {Family::kGptNeoX, Family::kLlama}) {
    for (const auto& s : schemes) {
      for (KvShareRope share : {KvShareRope::kPre, KvShareRope::kPost}) {
        const int variant = (k++) % 3;
        std::string name =
            std::string(family_name(fam)) + "_" + s.name + "_" + share_rope_name(share);
        if (variant == 1) name += fam == Family::kGptNeoX ? "_sequential" : "_tied";
        if (variant == 2 && fam == Family::kGptNeoX) name += "_gelu_tanh";
        out.push_back({name, fam, s.G, s.src, share, variant});
      }
    }
  }
  // Llama with attention_bias and mlp_bias (q/k/v/o and gate/up/down biases).
  out.push_back({"llama_mlkv_half_pre_biases", Family::kLlama, 2, {0, 0, 2, 2}, KvShareRope::kPre, 3});
  return out;
}

ModelConfig config_of(const Case& c) {
  ModelConfig cfg = mlkv::testing::tiny_config(c.fam, 4, 16, 4, c.G, c.kv_source, c.share, 23);
  if (c.variant == 1 && c.fam == Family::kGptNeoX) cfg.parallel_residual = false;
  if (c.variant == 1 && c.fam == Family::kLlama) cfg.tied_embeddings = true;
  if (c.variant == 2 && c.fam == Family::kGptNeoX) cfg.gelu_tanh = true;
  if (c.variant == 3) cfg.attn_bias = cfg.mlp_bias = true;
  cfg.validate();
  return cfg;
}

std::vector<int32_t> random_rows(int batch, int ctx, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> rows(static_cast<size_t>(batch) * (ctx + 1));
  for (auto& t : rows) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return rows;
}

class GradModel : public ::testing::TestWithParam<int> {};

TEST_P(GradModel, FiniteDifferencesAndFloatPath) {
  const Case tc = cases()[static_cast<size_t>(GetParam())];
  const ModelConfig cfg = config_of(tc);
  const int B = 2, S = 6;
  const double N = B * S;
  ModelWeights wf = mlkv::testing::random_weights(cfg, 100 + GetParam());
  const auto rows = random_rows(B, S, cfg.n_vocab, 7 + GetParam());

  // 1. double: analytic vs finite differences
  DoubleWeights params(cfg, wf, /*copy_values=*/true);
  DoubleWeights grads(cfg, wf, /*copy_values=*/false);
  TrainGraph<double> g(cfg, B, S);
  const double loss = g.forward_backward(params.weights(), rows.data(), &grads.weights(), 1.0 / N) / N;
  std::function<double()> loss_fn = [&] {
    return g.forward_backward(params.weights(), rows.data(), nullptr, 1.0) / N;
  };
  EXPECT_NEAR(loss_fn(), loss, 1e-14);
  double worst = 0;
  std::string worst_name;
  int checked = 0;
  for (size_t i = 0; i < params.n_tensors(); ++i) {
    const auto r = fd_check(params.values(i), grads.values(i), params.size(i), loss_fn,
                            sample_indices(params.size(i), 6, 31 + uint32_t(i)));
    checked += r.checked;
    if (r.max_norm_err > worst) {
      worst = r.max_norm_err;
      worst_name = params.name(i);
    }
    EXPECT_LT(r.max_norm_err, 1e-6) << tc.name << " " << params.name(i);
  }

  // 2. float graph vs double graph
  ModelWeights gf;
  allocate_weights(cfg, &gf);
  TrainGraph<float> f(cfg, B, S);
  const double loss_f = f.forward_backward(wf, rows.data(), &gf, static_cast<float>(1.0 / N)) / N;
  EXPECT_NEAR(loss_f, loss, 1e-5 * loss) << tc.name;
  double worst_f = 0;
  const auto fparams = list_params(cfg, gf);
  for (size_t i = 0; i < fparams.size(); ++i) {
    const Tensor& t = *fparams[i].tensor;
    const double* ref = grads.values(i);
    double amax = 1e-30, e = 0;
    for (size_t j = 0; j < grads.size(i); ++j) amax = std::max(amax, std::fabs(ref[j]));
    for (size_t j = 0; j < grads.size(i); ++j)
      e = std::max(e, std::fabs(double(t[int64_t(j)]) - ref[j]));
    worst_f = std::max(worst_f, e / amax);
    // Float rounding over a few hundred summed terms; seen up to 3e-5 (the bar against
    // PyTorch is 1e-4 relative).
    EXPECT_LT(e / amax, 1e-4) << tc.name << " " << fparams[i].name;
  }
  std::printf("  %-36s loss %.6f  fd err %.2e (%s, %d entries)  f32 vs f64 %.2e\n", tc.name.c_str(),
              loss, worst, worst_name.c_str(), checked, worst_f);
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, GradModel,
                         ::testing::Range(0, static_cast<int>(cases().size())),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return cases()[static_cast<size_t>(p.param)].name;
                         });

// The training forward gives the same next-token log-probs as the inference engine.
TEST(TrainForward, MatchesInferenceEngine) {
  for (const Case& tc : cases()) {
    const ModelConfig cfg = config_of(tc);
    const int B = 2, S = 40;  // > 16 rows: the engine's GEMM attention path
    LoadedModel lm;
    lm.config = cfg;
    lm.weights = mlkv::testing::random_weights(cfg, 5);
    ModelWeights w = lm.weights;
    Model model(std::move(lm));
    const auto rows = random_rows(B, S, cfg.n_vocab, 9);
    double engine_sum = 0;
    for (int b = 0; b < B; ++b) {
      std::vector<int32_t> seq(rows.begin() + b * (S + 1), rows.begin() + (b + 1) * (S + 1));
      for (float lp : score_tokens(model, seq, false)) engine_sum -= lp;
    }
    TrainGraph<float> g(cfg, B, S);
    const double train_sum = g.forward_backward(w, rows.data(), nullptr, 1.0f);
    EXPECT_NEAR(train_sum / (B * S), engine_sum / (B * S), 2e-5) << tc.name;
  }
}

// The arena size formula matches what the constructor allocates (docs/TRAINING.md quotes it).
TEST(TrainForward, ArenaBytesFormula) {
  for (const Case& tc : cases()) {
    const ModelConfig cfg = config_of(tc);
    TrainGraph<float> g(cfg, 3, 10);
    ModelWeights w = mlkv::testing::random_weights(cfg, 1), gw;
    allocate_weights(cfg, &gw);
    const auto rows = random_rows(3, 10, cfg.n_vocab, 2);
    g.forward_backward(w, rows.data(), &gw, 1.0f);
    EXPECT_EQ(g.allocated_bytes(), TrainGraph<float>::arena_bytes(cfg, 3, 10, 4)) << tc.name;
  }
}

}  // namespace
}  // namespace mlkv::train
