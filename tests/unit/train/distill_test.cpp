// Knowledge distillation in the training graph (train/train_model.h: Distillation; distill.h):
//  1. The KL op (ops::distill_kl_forward_backward): its value against the definition, its
//     gradient w.r.t. the student's logits against central finite differences (double), the f32
//     kernels against the double reference, at several temperatures.
//  2. A whole tiny student distilled from a teacher of another geometry (same vocabulary): the
//     gradient of alpha CE + (1 - alpha) T^2 KL w.r.t. entries of every parameter tensor against
//     finite differences (TrainGraph<double>), with the output layer in several chunks; the f32
//     graph against the double graph.
//  3. The teacher's forward-only graph is the training forward: a student distilled from itself
//     has KL 0 and no KL gradient, for every sharing scheme; alpha = 1 is plain training bit for
//     bit; the forward-only arena size formula.
#include "train/distill.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>

#include "kernels/cpu/isa.h"
#include "kernels/ops.h"
#include "test_util.h"
#include "train/train_model.h"
#include "train/trainer.h"
#include "train_test_util.h"

namespace mlkv::train {
namespace {

using mlkv::testing::cast_vec;
using mlkv::testing::DoubleWeights;
using mlkv::testing::fd_check;
using mlkv::testing::norm_err;
using mlkv::testing::rand_vec;
using mlkv::testing::sample_indices;

// KL(softmax(t / T) || softmax(s / T)) of one row, straight from the definition.
double kl_by_definition(const double* s, const double* t, int V, double T) {
  double zs = 0, zt = 0;
  for (int i = 0; i < V; ++i) {
    zs += std::exp(s[i] / T);
    zt += std::exp(t[i] / T);
  }
  double kl = 0;
  for (int i = 0; i < V; ++i) {
    const double p = std::exp(t[i] / T) / zt, q = std::exp(s[i] / T) / zs;
    kl += p * std::log(p / q);
  }
  return kl;
}

TEST(DistillOps, KlValueGradientAndFloatPath) {
  const int n = 5, V = 37;
  for (const double T : {1.0, 2.5, 0.5}) {
    auto student = rand_vec(n * V, 11, 3.0), teacher = rand_vec(n * V, 12, 3.0);
    std::vector<double> row(n);
    auto kl = [&] {
      std::vector<double> t = teacher;
      return ops::distill_kl_forward_backward(student.data(), t.data(), n, V, T, 1.0, false,
                                              row.data());
    };
    // Value: the definition, row by row.
    const double total = kl();
    double by_def = 0;
    for (int r = 0; r < n; ++r) {
      const double d = kl_by_definition(&student[r * V], &teacher[r * V], V, T);
      EXPECT_NEAR(row[static_cast<size_t>(r)], d, 1e-13) << "T " << T << " row " << r;
      EXPECT_GT(d, 0);
      by_def += d;
    }
    EXPECT_NEAR(total, by_def, 1e-12);
    // Gradient w.r.t. the student's logits, scaled: finite differences of scale * KL.
    const double scale = 0.7;
    std::vector<double> g = teacher;
    ops::distill_kl_forward_backward(student.data(), g.data(), n, V, T, scale, true, row.data());
    std::function<double()> scaled = [&] { return scale * kl(); };
    const auto r = fd_check(student, g, scaled, sample_indices(student.size(), 120, 3));
    EXPECT_LT(r.max_norm_err, 1e-8) << "T " << T;
    // The student's logits were only read.
    EXPECT_EQ(student, rand_vec(n * V, 11, 3.0));
    // f32 kernels vs the double reference, on every instruction-set path this CPU has: the row
    // terms and the gradient. (Measured: KL up to 5e-8, gradient 2.4e-7 relative.)
    for (const ops::cpu::Isa isa :
         {ops::cpu::Isa::kScalar, ops::cpu::Isa::kAvx2, ops::cpu::Isa::kAvx512}) {
      if (!ops::cpu::cpu_supports(isa)) continue;
      ops::cpu::set_isa(isa);
      auto sf = cast_vec<float>(student), tf = cast_vec<float>(teacher);
      std::vector<float> rowf(n);
      const double total_f =
          ops::distill_kl_forward_backward<float>(sf.data(), tf.data(), n, V, static_cast<float>(T),
                                                  static_cast<float>(scale), true, rowf.data());
      ops::cpu::set_isa(ops::cpu::best_isa());
      EXPECT_NEAR(total_f, total, 1e-6 * std::fabs(total)) << "T " << T << " " << isa_name(isa);
      EXPECT_LT(norm_err(tf, g), 2e-6) << "T " << T << " " << isa_name(isa);
      std::printf("  T %.1f %-6s: KL %.6f, fd err %.2e, f32 vs f64: KL %.2e, grad %.2e\n", T,
                  isa_name(isa), total, r.max_norm_err, std::fabs(total_f - total) / total,
                  norm_err(tf, g));
    }
  }
}

TEST(DistillOps, KlOfEqualDistributionsIsZero) {
  // Equal logits, and logits that differ by a constant per row (the same softmax).
  const int n = 3, V = 50;
  auto s = rand_vec(n * V, 21, 4.0);
  std::vector<double> t = s, row(n);
  for (int r = 0; r < n; ++r)
    for (int i = 0; i < V; ++i) t[static_cast<size_t>(r * V + i)] += 1.5 * r;
  const double kl =
      ops::distill_kl_forward_backward(s.data(), t.data(), n, V, 2.0, 1.0, true, row.data());
  EXPECT_NEAR(kl, 0, 1e-14);
  double gmax = 0;
  for (double v : t) gmax = std::max(gmax, std::fabs(v));
  EXPECT_LT(gmax, 1e-15);
}

// A student close to its teacher (the uptraining case): a small KL is computed as the difference
// of quantities of the size of the log-normalisers, so in f32 its error is absolute, a few ulps of
// those (docs/TRAINING.md); the gradient (q - p) has no such cancellation.
TEST(DistillOps, FloatAccuracyOfASmallKl) {
  const int n = 4, V = 1000;
  auto s = rand_vec(n * V, 31, 2.0), noise = rand_vec(n * V, 32, 0.05);
  std::vector<double> t(s.size()), row(n);
  for (size_t i = 0; i < s.size(); ++i) t[i] = s[i] + noise[i];
  std::vector<double> g = t;
  const double kl =
      ops::distill_kl_forward_backward(s.data(), g.data(), n, V, 1.0, 1.0, true, row.data());
  auto sf = cast_vec<float>(s), tf = cast_vec<float>(t);
  std::vector<float> rowf(n);
  const double kl_f = ops::distill_kl_forward_backward<float>(sf.data(), tf.data(), n, V, 1.0f,
                                                              1.0f, true, rowf.data());
  // Per row: KL ~ 1e-3 nats, log-normalisers ~ 8 (an ulp ~ 1e-6). Measured: 2.4e-7 absolute in
  // the sum, gradient 2.7e-6 normalised.
  EXPECT_NEAR(kl_f, kl, 2e-6);
  EXPECT_LT(norm_err(tf, g), 2e-5);
  std::printf("  KL %.3e (4 rows of 1000): f32 error %.2e absolute; gradient %.2e\n", kl,
              std::fabs(kl_f - kl), norm_err(tf, g));
}

// A student (Llama, MLKV with two KV layers, GQA) and a teacher of another family and geometry
// (GPT-NeoX, MHA, wider) over one vocabulary.
ModelConfig student_config() {
  ModelConfig c =
      mlkv::testing::tiny_config(Family::kLlama, 4, 16, 4, 2, {0, 0, 2, 2}, KvShareRope::kPre, 23);
  c.validate();
  return c;
}
ModelConfig teacher_config() {
  ModelConfig c =
      mlkv::testing::tiny_config(Family::kGptNeoX, 3, 32, 4, 4, {}, KvShareRope::kPost, 23);
  c.validate();
  return c;
}

std::vector<int32_t> random_rows(int batch, int ctx, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> rows(static_cast<size_t>(batch) * (ctx + 1));
  for (auto& t : rows) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return rows;
}

TEST(DistillModel, FiniteDifferencesAndFloatPath) {
  const ModelConfig cs = student_config(), ct = teacher_config();
  const int B = 2, S = 6, kChunk = 5;  // 12 rows: chunks of 5, 5, 2
  const double N = B * S, alpha = 0.3, T = 2.0;
  ModelWeights ws = mlkv::testing::random_weights(cs, 41),
               wt = mlkv::testing::random_weights(ct, 42);
  const auto rows = random_rows(B, S, cs.n_vocab, 43);

  // 1. double: the objective's analytic gradient vs finite differences
  DoubleWeights params(cs, ws, true), grads(cs, ws, false), tparams(ct, wt, true);
  TrainGraph<double> student(cs, B, S, backend<double>(), TrainGraph<double>::Mode::kTrain, kChunk);
  TrainGraph<double> teacher(ct, B, S, backend<double>(), TrainGraph<double>::Mode::kForwardOnly,
                             kChunk);
  teacher.forward_hidden(tparams.weights(), rows.data());
  Distillation<double> d{&teacher, &tparams.weights(), alpha, T};
  auto objective = [&](const LossSums& l) {
    return (alpha * l.ce + (1 - alpha) * T * T * l.kl) / N;
  };
  const LossSums l =
      student.forward_backward(params.weights(), rows.data(), &grads.weights(), 1.0 / N, -1, d);
  EXPECT_GT(l.kl, 0.05 * N);  // the two models disagree: the KL term matters
  std::function<double()> loss_fn = [&] {
    return objective(student.forward_backward(params.weights(), rows.data(), nullptr, 1.0, -1, d));
  };
  EXPECT_NEAR(loss_fn(), objective(l), 1e-14);
  // The CE part is the plain loss.
  EXPECT_NEAR(student.forward_backward(params.weights(), rows.data(), nullptr, 1.0), l.ce, 1e-12);
  double worst = 0;
  for (size_t i = 0; i < params.n_tensors(); ++i) {
    const auto r = fd_check(params.values(i), grads.values(i), params.size(i), loss_fn,
                            sample_indices(params.size(i), 6, 77 + uint32_t(i)));
    worst = std::max(worst, r.max_norm_err);
    EXPECT_LT(r.max_norm_err, 1e-6) << params.name(i);
  }
  // The teacher gets no gradient: its weights are untouched by all of this.
  DoubleWeights tfresh(ct, wt, true);
  for (size_t i = 0; i < tparams.n_tensors(); ++i)
    for (size_t j = 0; j < tparams.size(i); ++j)
      ASSERT_EQ(tparams.values(i)[j], tfresh.values(i)[j]) << tparams.name(i);

  // 2. float graph vs double graph (same chunking)
  ModelWeights gf;
  allocate_weights(cs, &gf);
  TrainGraph<float> fs(cs, B, S, backend<float>(), TrainGraph<float>::Mode::kTrain, kChunk);
  TrainGraph<float> ft(ct, B, S, backend<float>(), TrainGraph<float>::Mode::kForwardOnly, kChunk);
  ft.forward_hidden(wt, rows.data());
  const LossSums lf = fs.forward_backward(ws, rows.data(), &gf, static_cast<float>(1.0 / N), -1,
                                          Distillation<float>{&ft, &wt, alpha, T});
  EXPECT_NEAR(lf.ce, l.ce, 1e-5 * l.ce);
  EXPECT_NEAR(lf.kl, l.kl, 1e-5 * l.kl);
  double worst_f = 0;
  const auto fp = list_params(cs, gf);
  for (size_t i = 0; i < fp.size(); ++i) {
    const Tensor& t = *fp[i].tensor;
    const double* ref = grads.values(i);
    double amax = 1e-30, e = 0;
    for (size_t j = 0; j < grads.size(i); ++j) amax = std::max(amax, std::fabs(ref[j]));
    for (size_t j = 0; j < grads.size(i); ++j)
      e = std::max(e, std::fabs(double(t[int64_t(j)]) - ref[j]));
    worst_f = std::max(worst_f, e / amax);
    EXPECT_LT(e / amax, 1e-4) << fp[i].name;
  }
  std::printf("  objective %.6f (ce %.6f, kl %.6f per position): fd err %.2e, f32 vs f64 %.2e\n",
              objective(l), l.ce / N, l.kl / N, worst, worst_f);
}

// The teacher's forward-only graph computes what the training forward computes: a student
// distilled from itself has a KL of 0 and the gradient of plain training scaled by alpha, for every
// sharing scheme and both residual layouts.
TEST(DistillModel, ForwardOnlyGraphIsTheTrainingForward) {
  struct Geometry {
    Family fam;
    int G;
    std::vector<int> src;
    KvShareRope share;
    bool sequential;
  };
  const std::vector<Geometry> geos = {
      {Family::kGptNeoX, 4, {}, KvShareRope::kPost, false},
      {Family::kGptNeoX, 2, {0, 0, 2, 2}, KvShareRope::kPre, true},
      {Family::kLlama, 1, {0, 0, 0, 0}, KvShareRope::kPre, false},
      {Family::kLlama, 2, {0, 1, 1, 3}, KvShareRope::kPost, false},
  };
  const int B = 2, S = 7;
  for (const Geometry& g : geos) {
    ModelConfig c = mlkv::testing::tiny_config(g.fam, 4, 16, 4, g.G, g.src, g.share, 29);
    if (g.sequential) c.parallel_residual = false;
    c.validate();
    const ModelWeights w = mlkv::testing::random_weights(c, 8);
    const auto rows = random_rows(B, S, c.n_vocab, 9);
    DoubleWeights p(c, w, true), gd(c, w, false), gp(c, w, false);
    TrainGraph<double> student(c, B, S, backend<double>(), TrainGraph<double>::Mode::kTrain, 4);
    TrainGraph<double> self(c, B, S, backend<double>(), TrainGraph<double>::Mode::kForwardOnly, 4);
    self.forward_hidden(p.weights(), rows.data());
    const LossSums l =
        student.forward_backward(p.weights(), rows.data(), &gd.weights(), 1.0, -1,
                                 Distillation<double>{&self, &p.weights(), 0.25, 3.0});
    const double ce = student.forward_backward(p.weights(), rows.data(), &gp.weights(), 0.25);
    EXPECT_NEAR(l.kl, 0, 1e-13) << c.summary();
    EXPECT_NEAR(l.ce, ce, 1e-12) << c.summary();
    double e = 0;
    for (size_t i = 0; i < p.n_tensors(); ++i)
      for (size_t j = 0; j < p.size(i); ++j)
        e = std::max(e, std::fabs(gd.values(i)[j] - gp.values(i)[j]));
    EXPECT_LT(e, 1e-13) << c.summary();
  }
}

// alpha = 1: the cross-entropy and every gradient bit for bit those of plain training (the KL term
// is computed, weighted 0, and added).
TEST(DistillModel, AlphaOneIsPlainTrainingBitForBit) {
  const ModelConfig cs = student_config(), ct = teacher_config();
  const int B = 3, S = 9;
  const ModelWeights ws = mlkv::testing::random_weights(cs, 51),
                     wt = mlkv::testing::random_weights(ct, 52);
  const auto rows = random_rows(B, S, cs.n_vocab, 53);
  ModelWeights g_plain, g_dist;
  allocate_weights(cs, &g_plain);
  allocate_weights(cs, &g_dist);
  TrainGraph<float> student(cs, B, S, backend<float>(), TrainGraph<float>::Mode::kTrain, 10);
  TrainGraph<float> teacher(ct, B, S, backend<float>(), TrainGraph<float>::Mode::kForwardOnly, 10);
  const float scale = 1.0f / (B * S);
  const double ce = student.forward_backward(ws, rows.data(), &g_plain, scale);
  teacher.forward_hidden(wt, rows.data());
  const LossSums l = student.forward_backward(ws, rows.data(), &g_dist, scale, -1,
                                              Distillation<float>{&teacher, &wt, 1.0, 2.0});
  EXPECT_EQ(l.ce, ce);
  EXPECT_GT(l.kl, 0);
  const auto a = list_params(cs, g_plain), b = list_params(cs, g_dist);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(std::memcmp(a[i].tensor->data(), b[i].tensor->data(), a[i].tensor->nbytes()), 0)
        << a[i].name;
  }
}

TEST(DistillModel, ForwardOnlyArenaBytesFormula) {
  for (const ModelConfig& c : {student_config(), teacher_config()}) {
    TrainGraph<float> g(c, 3, 10, backend<float>(), TrainGraph<float>::Mode::kForwardOnly);
    const ModelWeights w = mlkv::testing::random_weights(c, 1);
    const auto rows = random_rows(3, 10, c.n_vocab, 2);
    g.forward_hidden(w, rows.data());
    g.chunk_logits(w, 0, g.head_chunk());
    EXPECT_EQ(g.allocated_bytes(),
              TrainGraph<float>::arena_bytes(c, 3, 10, 4, TrainGraph<float>::Mode::kForwardOnly))
        << c.summary();
    // Far less than the training arena: nothing is kept for a backward pass.
    EXPECT_LT(g.allocated_bytes(), TrainGraph<float>::arena_bytes(c, 3, 10, 4) / 2) << c.summary();
  }
}

TEST(DistillOptionsCheck, RangesAndVocabulary) {
  EXPECT_NO_THROW(validate_distill_options({"t", 0.0, 1.0}));
  EXPECT_NO_THROW(validate_distill_options({"t", 1.0, 0.01}));
  for (const DistillOptions& bad :
       {DistillOptions{"t", -0.1, 1.0}, DistillOptions{"t", 1.5, 1.0},
        DistillOptions{"t", 0.5, 0.0}, DistillOptions{"t", 0.5, -2.0},
        DistillOptions{"t", NAN, 1.0}, DistillOptions{"t", 0.5, INFINITY}}) {
    EXPECT_THROW(validate_distill_options(bad), Error) << bad.alpha << " " << bad.temp;
  }
  // A teacher of another vocabulary size cannot teach through the graph either.
  const ModelConfig cs = student_config();
  ModelConfig other = teacher_config();
  other.n_vocab = 24;
  const ModelWeights ws = mlkv::testing::random_weights(cs, 1),
                     wo = mlkv::testing::random_weights(other, 2);
  TrainGraph<float> student(cs, 1, 4);
  TrainGraph<float> teacher(other, 1, 4, backend<float>(), TrainGraph<float>::Mode::kForwardOnly);
  const auto rows = random_rows(1, 4, cs.n_vocab, 3);
  teacher.forward_hidden(wo, rows.data());
  try {
    student.forward_backward(ws, rows.data(), nullptr, 1.0f, -1,
                             Distillation<float>{&teacher, &wo, 0.5, 1.0});
    ADD_FAILURE() << "a teacher with 24 ids taught a student with 23";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary"), std::string::npos) << e.what();
  }
}

// run_training checks the distillation options before it reads or writes anything, and refuses a
// teacher on a device without the distillation op.
TEST(DistillOptionsCheck, TrainerRefusesBadOptionsAndTheGpu) {
  TrainOptions o;
  o.out_dir = "/nonexistent/mlkv-distill-test";
  o.data = "/nonexistent/data";
  o.steps = 1;
  o.distill.teacher = "/nonexistent/teacher";
  auto message = [&] {
    try {
      run_training(o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  o.distill.alpha = 1.25;
  EXPECT_NE(message().find("--distill-alpha 1.25 is out of range"), std::string::npos) << message();
  o.distill.alpha = 0.5;
  o.distill.temp = 0;
  EXPECT_NE(message().find("--distill-temp 0 is out of range"), std::string::npos) << message();
  o.distill.temp = 1;
  o.device = Device::kCuda;
  EXPECT_NE(message().find("--teacher trains on the CPU only"), std::string::npos) << message();
}

}  // namespace
}  // namespace mlkv::train
