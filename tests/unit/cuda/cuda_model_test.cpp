// The inference model (model/model.h) on the CUDA backend against the CPU backend, for both
// families and every sharing scheme (cuda_model_cases.h), and cached decoding against a full
// prefill on the GPU:
//  - log-softmax of the logits of one batch (two sequences, prefill runs of 37 and 29 rows, then
//    a decode step of one row each), errors relative to the largest |logit|: f32 weights within
//    1e-4; f16 weights within 5e-2 and bf16 weights within 0.35 (the GPU rounds activations to
//    f16/bf16 for its tensor-core products, the CPU keeps them f32, and the high-gain test
//    weights amplify that through every layer);
//  - KV caches in f16 / bf16 with blocks smaller than the context within 1e-2 (both devices store
//    the same rounding of slightly different f32 values); q8_0 / q4_0 either match within 2e-2 or
//    are refused with mlkv::Error;
//  - on the GPU, a sequence scored in one prefill equals token-by-token decoding and a prefill
//    chunk followed by decoding: logits within 1e-4 of the largest logit.
// Skipped (not passed) without a CUDA build or a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda_model_cases.h"
#include "cuda_test_util.h"
#include "model/model.h"

namespace mlkv::cuda_test {
namespace {

constexpr int kHeadDim = 64, kVocab = 97;

// Log-softmax of each row of logits [rows, V].
std::vector<float> log_softmax(const std::vector<float>& logits, int V) {
  std::vector<float> out(logits.size());
  for (size_t r = 0; r < logits.size() / size_t(V); ++r) {
    const float* x = logits.data() + r * size_t(V);
    double m = -INFINITY, s = 0;
    for (int i = 0; i < V; ++i) m = std::max(m, double(x[i]));
    for (int i = 0; i < V; ++i) s += std::exp(double(x[i]) - m);
    const double lse = m + std::log(s);
    for (int i = 0; i < V; ++i) out[r * size_t(V) + size_t(i)] = float(double(x[i]) - lse);
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!std::isfinite(d)) return INFINITY;
    e = std::max(e, d);
  }
  return e;
}

Model make(const ModelConfig& cfg, const ModelWeights& w, Device d, WeightType wt) {
  LoadedModel lm;
  lm.config = cfg;
  lm.weights = w;
  ModelOptions opt;
  opt.device = d;
  opt.weights = wt;
  return Model(std::move(lm), opt);
}

// Runs the batch and returns its logits (every row flagged) on the host.
std::vector<float> run(Model& m, const Batch& b, KVCache& cache) {
  std::vector<float> logits(size_t(b.n_outputs()) * size_t(m.config().n_vocab));
  m.forward(b, cache, logits.data());
  return logits;
}

// Two sequences: a prefill batch of 37 + 29 rows, then one decode row each.
struct TwoSteps {
  Batch prefill, decode;
};
TwoSteps two_steps(int vocab) {
  TwoSteps t;
  const auto a = mlkv::testing::random_tokens(38, vocab, 1), b = mlkv::testing::random_tokens(30, vocab, 2);
  for (int i = 0; i < 37; ++i) t.prefill.add(a[size_t(i)], 0, i, true);
  for (int i = 0; i < 29; ++i) t.prefill.add(b[size_t(i)], 1, i, true);
  t.decode.add(a[37], 0, 37, true);
  t.decode.add(b[29], 1, 29, true);
  return t;
}

// CPU and GPU log-probs of both steps; the worst absolute difference over the largest |logit| of
// the CPU (at least 1). The test weights (std 0.35) give logits of tens: f32 sums in another
// order move a log-prob by ~1e-5 of that scale, so the bound is relative to it. cpu_w: the CPU's
// weights when they differ (the GPU's bf16 matrices rounded, the CPU having no bf16 products).
double compare_models(const ModelConfig& cfg, const ModelWeights& w, WeightType wt,
                      KvCacheType cache_type, int block_size, const ModelWeights* cpu_w = nullptr,
                      WeightType cpu_wt = WeightType::kF32) {
  if (cpu_w == nullptr) cpu_wt = wt;
  Model mc = make(cfg, cpu_w ? *cpu_w : w, Device::kCpu, cpu_wt),
        mg = make(cfg, w, gpu_device(), wt);
  EXPECT_EQ(mg.device(), gpu_device());
  KVCache cc = mc.new_cache(2, 64, cache_type, block_size);
  KVCache gc = mg.new_cache(2, 64, cache_type, block_size);
  EXPECT_EQ(gc.device(), gpu_device());
  const TwoSteps t = two_steps(cfg.n_vocab);
  double worst = 0, scale = 1;
  for (const Batch* b : {&t.prefill, &t.decode}) {
    const auto xc = run(mc, *b, cc);
    for (float x : xc) scale = std::max(scale, std::fabs(double(x)));
    const auto lc = log_softmax(xc, cfg.n_vocab);
    const auto lg = log_softmax(run(mg, *b, gc), cfg.n_vocab);
    worst = std::max(worst, max_abs_diff(lg, lc));
  }
  EXPECT_EQ(gc.seq_len(0), 38);
  EXPECT_EQ(gc.seq_len(1), 30);
  return worst / scale;
}

class CudaModel : public CudaParamTest<int> {
 protected:
  ModelCase tc() const { return model_cases()[size_t(GetParam())]; }
};

TEST_P(CudaModel, LogProbsMatchCpuF32Weights) {
  const ModelConfig cfg = model_config(tc(), kHeadDim, kVocab);
  const ModelWeights w = mlkv::testing::random_weights(cfg, 11 + uint64_t(GetParam()));
  const double e = compare_models(cfg, w, WeightType::kF32, DType::kF32, 0);
  EXPECT_LE(e, 1e-4) << tc().name << " (" << sharing_scheme_name(cfg) << ")";
  std::printf("  %-28s %-24s f32 weights: max |dlogp| / max |logit| %.2e (bound 1e-4)\n", tc().name.c_str(),
              sharing_scheme_name(cfg).c_str(), e);
}

TEST_P(CudaModel, LogProbsMatchCpuF16Weights) {
  const ModelConfig cfg = model_config(tc(), kHeadDim, kVocab);
  const ModelWeights w = mlkv::testing::random_weights(cfg, 11 + uint64_t(GetParam()));
  const double e = compare_models(cfg, w, WeightType::kF16, DType::kF32, 0);
  // Measured on an H200: up to 2.2e-2 (the test weights amplify a rounding through every layer).
  EXPECT_LE(e, 5e-2) << tc().name;
  std::printf("  %-28s f16 weights: max |dlogp| / max |logit| %.2e (bound 5e-2)\n", tc().name.c_str(), e);
}

// bf16 matrices on the GPU against the CPU on the same matrices rounded to bf16 and kept f32: what
// differs is the GPU rounding the activations to bf16 for its products.
TEST_P(CudaModel, LogProbsMatchCpuBf16Weights) {
  if (gpu_device() == Device::kCpu) GTEST_SKIP() << "bf16 weights run on the GPU only";
  const ModelConfig cfg = model_config(tc(), kHeadDim, kVocab);
  const ModelWeights w = mlkv::testing::random_weights(cfg, 11 + uint64_t(GetParam()));
  ModelWeights wr = w;
  for (auto& p : list_params(cfg, wr)) {
    if (p.tensor->ndim() == 2 && p.tensor != &wr.tok_embd) {  // lookups stay f32
      *p.tensor = p.tensor->to(DType::kBF16).to(DType::kF32);
    }
  }
  const double e = compare_models(cfg, w, WeightType::kBF16, DType::kF32, 0, &wr);
  // bf16 keeps 3 fewer mantissa bits than f16: about 8x the f16 test's error on these high-gain
  // weights (measured on an H200: 0.07 to 0.21, against f16's 0.008 to 0.022). A wrong layout or
  // scale gives errors of order 1; the real-model check (scripts/gpu_check.sh) bounds bf16 on
  // realistic weights.
  EXPECT_LE(e, 0.35) << tc().name;
  std::printf("  %-28s bf16 weights: max |dlogp| / max |logit| %.2e (bound 0.35)\n", tc().name.c_str(), e);
}

// Cached decoding equals a full prefill on the GPU: one prefill of 40 tokens, 40 decode steps,
// and a prefill of 17 then 23 decode steps; contiguous and paged (blocks of 16) caches.
TEST_P(CudaModel, CachedEqualsFullOnGpu) {
  const ModelConfig cfg = model_config(tc(), kHeadDim, kVocab);
  const ModelWeights w = mlkv::testing::random_weights(cfg, 21 + uint64_t(GetParam()));
  Model m = make(cfg, w, gpu_device(), WeightType::kF32);
  const int n = 40, V = cfg.n_vocab;
  const auto tok = mlkv::testing::random_tokens(n, V, 5);
  for (int block : {0, 16}) {
    KVCache full_cache = m.new_cache(1, 64, {}, block);
    Batch full;
    for (int i = 0; i < n; ++i) full.add(tok[size_t(i)], 0, i, true);
    const auto want = run(m, full, full_cache);
    double scale = 1e-30;
    for (float x : want) scale = std::max(scale, std::fabs(double(x)));
    for (int chunk : {1, 17}) {
      KVCache cache = m.new_cache(1, 64, {}, block);
      std::vector<float> got;
      Batch b;
      for (int i = 0; i < chunk; ++i) b.add(tok[size_t(i)], 0, i, true);
      auto l = run(m, b, cache);
      got.insert(got.end(), l.begin(), l.end());
      for (int i = chunk; i < n; ++i) {
        b.clear();
        b.add(tok[size_t(i)], 0, i, true);
        l = run(m, b, cache);
        got.insert(got.end(), l.begin(), l.end());
      }
      const double e = max_abs_diff(got, want) / scale;
      const std::string what = tc().name + (chunk == 1 ? " decode" : " prefill 17 + decode") +
                               (block ? " paged" : "");
      EXPECT_LE(e, 1e-4) << what;
      std::printf("  %-58s cached vs full %.2e (bound 1e-4)\n", what.c_str(), e);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Schemes, CudaModel,
                         ::testing::Range(0, static_cast<int>(model_cases().size())),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return model_cases()[size_t(p.param)].name;
                         });

// Cache formats and paged caches at the model level: f16 / bf16 keys and values match the CPU
// as f32 does; q8_0 / q4_0 match within 2e-2 or are refused with a clear mlkv::Error.
TEST_F(CudaTest, ModelCacheFormats) {
  for (const ModelCase& mc : model_cases()) {
    if (mc.name.find("mlkv_half") == std::string::npos) continue;  // post and pre, both families
    const ModelConfig cfg = model_config(mc, kHeadDim, kVocab);
    const ModelWeights w = mlkv::testing::random_weights(cfg, 31);
    for (DType f : {DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
      const std::string what = mc.name + " cache " + dtype_name(f) + " blocks of 16";
      const bool quant = f == DType::kQ8_0 || f == DType::kQ4_0;
      try {
        const double e = compare_models(cfg, w, WeightType::kF32, f, 16);
        // Both devices round to the same f16/bf16 values, of f32 inputs that differ in the last
        // bits: a stored key that rounds the other way moves the peaky test attention.
        // Measured on an H200: up to 3.2e-3.
        EXPECT_LE(e, quant ? 2e-2 : 1e-2) << what;
        std::printf("  %-58s max |dlogp| / max |logit| %.2e\n", what.c_str(), e);
      } catch (const Error& err) {
        EXPECT_TRUE(quant) << what << ": the CUDA model threw: " << err.what();
        EXPECT_STRNE(err.what(), "") << what;
        std::printf("  %-58s refused: %s\n", what.c_str(), err.what());
      }
    }
  }
}

}  // namespace
}  // namespace mlkv::cuda_test
