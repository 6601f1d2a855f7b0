// Calibrated conversion (convert/fold.h, convert/calibrate.h): the foldable key maps commute with
// rotary, the KL gradient against finite differences, models built so that an exact fold exists
// are reproduced (GPT-NeoX with partial rotary, Llama with full rotary; pooled heads and layers
// reading another layer's K/V), the identity conversion stays bit-exact, and the owner search
// finds the owner set a constructed model calls for (contiguous or not). The model trained on the
// shipped text, and the CLI's options and errors, are tests/e2e/test_convert_calibrated.py's.
#include "convert/calibrate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "convert/convert.h"
#include "core/check.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace mlkv {
namespace {

using calib::Mat;
using calib::RotaryLayout;
using testing::random_tokens;
using testing::random_weights;
using testing::tiny_config;

std::vector<float> logprobs(const LoadedModel& m, const std::vector<int32_t>& toks) {
  Model model{LoadedModel(m)};
  return score_tokens(model, toks, false);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    d = std::max(d, std::fabs(double(a[i]) - b[i]));
  return d;
}

CalibrationSet random_calibration(int n_rows, int ctx, int vocab, uint32_t seed) {
  CalibrationSet s;
  s.ctx = ctx;
  s.tokens = random_tokens(n_rows * ctx, vocab, seed);
  s.available = static_cast<int64_t>(s.tokens.size());
  return s;
}

// A map that commutes with rotary (random scaled rotations on the pairs, identity plus noise on
// the free dims), near enough to the identity to be well conditioned.
Mat random_commuting(const RotaryLayout& r, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<double> th(static_cast<size_t>(r.n_params()));
  for (int i = 0; i < r.half(); ++i) {
    th[static_cast<size_t>(2 * i)] = 1.0 + 0.4 * u(rng);
    th[static_cast<size_t>(2 * i + 1)] = 0.6 * u(rng);
  }
  const int nf = r.n_free();
  for (int x = 0; x < nf; ++x) {
    for (int y = 0; y < nf; ++y)
      th[static_cast<size_t>(r.n_rot + x * nf + y)] = (x == y) + 0.3 * u(rng);
  }
  return calib::key_map(r, th);
}

Mat random_invertible(int d, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-1, 1);
  Mat m = Mat::identity(d);
  for (double& v : m.a) v += 0.3 * u(rng);
  return m;
}

// rows [h*d, (h+1)*d) of dst = A * rows of head b of src (cols columns each).
void set_head(const Tensor& src, int b, const Mat& A, int d, Tensor* dst, int h) {
  const int64_t cols = src.ndim() == 2 ? src.dim(1) : 1;
  for (int i = 0; i < d; ++i) {
    for (int64_t e = 0; e < cols; ++e) {
      double s = 0;
      for (int k = 0; k < d; ++k) s += A(i, k) * src[(int64_t{b} * d + k) * cols + e];
      (*dst)[(int64_t{h} * d + i) * cols + e] = static_cast<float>(s);
    }
  }
}

void zero(Tensor* t) {
  for (int64_t i = 0; i < t->numel(); ++i) (*t)[i] = 0.0f;
}

// A source model (MHA, every layer owning K/V) for which converting to `target` kv_source with G
// KV heads has an exact calibrated fold:
//   - in layer l, every source KV head h is a map of the head b the converted layer reads (the
//     first of its pooled group, in its owner o): keys by a map that commutes with rotary, values
//     by any invertible map (plus an offset where there are biases: the output bias takes it);
//   - a layer reads the same normed input as its owner: same norm weights, and every layer of a
//     group but the last adds nothing to the residual stream (output projection and MLP zero).
LoadedModel exact_fold_model(Family fam, const std::vector<int>& target, int G, uint64_t seed) {
  const int L = static_cast<int>(target.size());
  const ModelConfig c = tiny_config(fam, L, 64, 4, 4, {}, KvShareRope::kPost);
  LoadedModel m;
  m.config = c;
  m.weights = random_weights(c, seed);
  const int d = c.n_embd_head, H = c.n_head, per = H / G;
  const RotaryLayout rot{d, c.n_rot};
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<double> u(-1, 1);
  for (int l = 0; l < L; ++l) {
    const int o = target[static_cast<size_t>(l)];
    LayerWeights& w = m.weights.layers[static_cast<size_t>(l)];
    const LayerWeights base = m.weights.layers[static_cast<size_t>(o)];  // a copy: o may be l
    w.attn_norm = base.attn_norm;
    if (!base.attn_norm_b.empty()) w.attn_norm_b = base.attn_norm_b;
    for (int h = 0; h < H; ++h) {
      const int b = h / per * per;
      if (l == o && h == b) continue;
      const Mat A = random_commuting(rot, rng), B = random_invertible(d, rng);
      set_head(base.wk, b, A, d, &w.wk, h);
      set_head(base.wv, b, B, d, &w.wv, h);
      if (!w.bk.empty()) {
        set_head(base.bk, b, A, d, &w.bk, h);
        set_head(base.bv, b, B, d, &w.bv, h);
        for (int i = 0; i < d; ++i) w.bv[h * d + i] += static_cast<float>(0.3 * u(rng));
      }
    }
    // Dead unless the last layer of its group.
    const bool last = l + 1 == L || target[static_cast<size_t>(l + 1)] != o;
    if (!last) {
      zero(&w.wo);
      zero(&w.w_down);
      if (!w.bo.empty()) zero(&w.bo);
      if (!w.b_down.empty()) zero(&w.b_down);
    }
  }
  return m;
}

TEST(Fold, KeyMapsCommuteWithRotary) {
  for (int n_rot : {0, 8, 16}) {
    const RotaryLayout r{16, n_rot};
    std::mt19937 rng(3);
    const Mat P = random_commuting(r, rng);
    const std::vector<double> inv_freq = ops::rope_inv_freq(std::max(n_rot, 2), 10000.0);
    EXPECT_LT(calib::rotary_commutator(r, P, inv_freq, 40), 1e-12) << n_rot;
    // Parameters round-trip; a general map is projected onto the structure.
    EXPECT_EQ(calib::key_map(r, calib::key_params(r, P)).a, P.a);
    const Mat any = random_invertible(16, rng);
    if (n_rot > 0) {
      EXPECT_GT(calib::rotary_commutator(r, any, inv_freq, 40), 1e-3);
    }
    EXPECT_LT(
        calib::rotary_commutator(r, calib::key_map(r, calib::key_params(r, any)), inv_freq, 40),
        1e-12);
  }
}

// The least-squares key map recovers an exact structured relation, and the KL objective's
// gradient matches central differences.
TEST(Fold, KeyFitsAndKlGradient) {
  const int d = 8, ctx = 12, n_seq = 3;
  const RotaryLayout r{d, 4};
  std::mt19937 rng(7);
  std::normal_distribution<float> n01;
  const Mat A = random_commuting(r, rng);
  std::vector<float> q(static_cast<size_t>(n_seq * ctx * d)), ks(q.size()), ko(q.size());
  for (auto& x : q) x = 2 * n01(rng);
  for (auto& x : ks) x = n01(rng);
  for (int t = 0; t < n_seq * ctx; ++t) {
    for (int i = 0; i < d; ++i) {
      double s = i >= 4 ? 0.7 : 0.0;  // an offset on a free dim: shifts logits, left out
      for (int k = 0; k < d; ++k) s += A(i, k) * ks[static_cast<size_t>(t * d + k)];
      ko[static_cast<size_t>(t * d + i)] = static_cast<float>(s);
    }
  }
  const calib::HeadView qv{q.data(), d}, kov{ko.data(), d}, ksv{ks.data(), d};
  const Mat P = calib::fit_key_map_ls(r, kov, ksv, {0, 1, 2}, ctx);
  for (size_t i = 0; i < P.a.size(); ++i) EXPECT_NEAR(P.a[i], A.a[i], 1e-5);
  const calib::KlData k = calib::kl_data(qv, kov, ksv, d, ctx, {0, 1, 2}, 1 << 20);
  EXPECT_EQ(k.n_queries, n_seq * ctx);
  EXPECT_NEAR(calib::kl_objective(k, A, nullptr), 0.0, 1e-10);
  EXPECT_GT(calib::kl_objective(k, Mat::identity(d), nullptr), 1e-3);
  Mat at = random_invertible(d, rng), grad;
  calib::kl_objective(k, at, &grad);
  for (int i = 0; i < d; ++i) {
    for (int j = 0; j < d; ++j) {
      const double h = 1e-5, keep = at(i, j);
      at(i, j) = keep + h;
      const double fp = calib::kl_objective(k, at, nullptr);
      at(i, j) = keep - h;
      const double fm = calib::kl_objective(k, at, nullptr);
      at(i, j) = keep;
      EXPECT_NEAR(grad(i, j), (fp - fm) / (2 * h), 1e-7) << i << "," << j;
    }
  }
  // The KL fit from the identity finds the relation (convex; the data determine it).
  const Mat Pk = calib::fit_key_map_kl(k, r, Mat::identity(d), 200);
  EXPECT_LT(calib::kl_objective(k, Pk, nullptr), 1e-6);
}

struct ExactCase {
  Family fam;
  std::vector<int> target;  // kv_source of the conversion
  int G;
};

// Built so that an exact fold exists: `calibrated` reproduces the source's log-probs (f32
// rounding), while `owner` is far off.
TEST(Calibrated, ReproducesExactFolds) {
  const ExactCase cases[] = {
      {Family::kGptNeoX, {0, 1, 2, 3}, 2},  // GQA: heads pooled in pairs
      {Family::kLlama, {0, 1, 2, 3}, 2},
      {Family::kGptNeoX, {0, 1, 2, 3}, 1},  // MQA
      {Family::kLlama, {0, 1, 2, 3}, 1},
      {Family::kGptNeoX, {0, 0, 2, 2}, 4},  // MLKV: layers read another layer's K/V
      {Family::kLlama, {0, 0, 2, 2}, 4},
      {Family::kGptNeoX, {0, 0, 0, 3}, 2},  // both, groups of 3 and 1
      {Family::kLlama, {0, 0, 2, 2}, 1},
  };
  for (const ExactCase& k : cases) {
    const LoadedModel src = exact_fold_model(k.fam, k.target, k.G, 11);
    ConvertOptions opt;
    opt.kv_heads = k.G;
    opt.kv_source = k.target;
    opt.merge = MergeStrategy::kOwner;
    const LoadedModel owner = convert_model(src, opt);
    opt.merge = MergeStrategy::kCalibrated;
    const CalibrationSet data = random_calibration(16, 32, src.config.n_vocab, 5);
    ConvertReport rep;
    const LoadedModel cal = convert_model(src, opt, &rep, &data);
    const auto toks = random_tokens(64, src.config.n_vocab, 9);
    const auto want = logprobs(src, toks);
    const double d_owner = max_abs_diff(want, logprobs(owner, toks));
    const double d_cal = max_abs_diff(want, logprobs(cal, toks));
    const std::string what =
        cat(family_name(k.fam), " kv_source ", layer_list(k.target), " G ", k.G);
    std::printf("%-40s max |log-prob diff|: calibrated %.2e, owner %.3f\n", what.c_str(), d_cal,
                d_owner);
    EXPECT_GT(d_owner, 0.05) << what;
    EXPECT_LT(d_cal, 2e-4) << what << " (owner: " << d_owner << ")";
    ASSERT_TRUE(rep.calibrated);
    ASSERT_EQ(rep.calibration.layers.size(), k.target.size());
    for (const LayerCalibration& l : rep.calibration.layers) {
      EXPECT_LE(l.err, l.err_owner) << what << " layer " << l.layer;
    }
  }
}

// Solves A X = B (A [n, n], B [n, m], row-major) by Gauss-Jordan with partial pivoting.
Mat solve(Mat A, Mat B) {
  const int n = A.rows;
  for (int c = 0; c < n; ++c) {
    int piv = c;
    for (int r = c + 1; r < n; ++r) {
      if (std::fabs(A(r, c)) > std::fabs(A(piv, c))) piv = r;
    }
    for (int j = 0; j < n; ++j) std::swap(A(c, j), A(piv, j));
    for (int j = 0; j < B.cols; ++j) std::swap(B(c, j), B(piv, j));
    for (int r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = A(r, c) / A(c, c);
      for (int j = 0; j < n; ++j) A(r, j) -= f * A(c, j);
      for (int j = 0; j < B.cols; ++j) B(r, j) -= f * B(c, j);
    }
  }
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < B.cols; ++j) B(r, j) /= A(r, r);
  }
  return B;
}

// Whatever a calibrated conversion folds into a query projection commutes with rotary: for every
// head, the map M with Wq_new = M Wq_old (recovered by least squares) has a zero commutator with
// the rotation of every position, on a model where no exact fold exists (Llama: full rotary, only
// per-frequency gains and phases allowed; GPT-NeoX: those plus a free block on 3/4 of the dims).
TEST(Calibrated, QueryFoldsCommuteWithRotary) {
  for (Family fam : {Family::kLlama, Family::kGptNeoX}) {
    const ModelConfig c = tiny_config(fam, 2, 64, 4, 4, {}, KvShareRope::kPost);
    LoadedModel src;
    src.config = c;
    src.weights = random_weights(c, 31);
    ConvertOptions opt;
    opt.kv_heads = 1;
    opt.kv_layers = 1;
    opt.merge = MergeStrategy::kCalibrated;
    const CalibrationSet data = random_calibration(16, 32, c.n_vocab, 6);
    ConvertReport rep;
    const LoadedModel out = convert_model(src, opt, &rep, &data);
    const int d = c.n_embd_head, E = c.n_embd;
    const RotaryLayout rot{d, c.n_rot};
    int folded = 0;
    for (int l = 0; l < c.n_layer; ++l) {
      folded += rep.calibration.layers[static_cast<size_t>(l)].heads_folded;
      for (int h = 0; h < c.n_head; ++h) {
        const float* wo = src.weights.layers[static_cast<size_t>(l)].wq.data() + int64_t{h} * d * E;
        const float* wn = out.weights.layers[static_cast<size_t>(l)].wq.data() + int64_t{h} * d * E;
        // M = Wn Wo^T (Wo Wo^T)^-1, i.e. (Wo Wo^T) M^T = Wo Wn^T.
        Mat A(d, d), B(d, d);
        for (int i = 0; i < d; ++i) {
          for (int j = 0; j < d; ++j) {
            for (int e = 0; e < E; ++e) {
              A(i, j) += double(wo[i * E + e]) * wo[j * E + e];
              B(i, j) += double(wo[i * E + e]) * wn[j * E + e];
            }
          }
        }
        const Mat Mt = solve(A, B);
        Mat M(d, d);
        for (int i = 0; i < d; ++i) {
          for (int j = 0; j < d; ++j) M(i, j) = Mt(j, i);
        }
        EXPECT_LT(calib::rotary_commutator(rot, M, c.rope_inv_freq(), 64), 1e-4)
            << family_name(fam) << " layer " << l << " head " << h;
      }
    }
    EXPECT_GT(folded, 0) << family_name(fam) << ": some head got a key map";
  }
}

// G = n_head, M = n_layer: nothing to fold, the conversion is the source bit for bit; a layer that
// owns its unpooled K/V gets no fold in any conversion.
TEST(Calibrated, IdentityIsExact) {
  for (Family fam : {Family::kGptNeoX, Family::kLlama}) {
    const ModelConfig c = tiny_config(fam, 3, 32, 4, 4, {}, KvShareRope::kPost);
    LoadedModel src;
    src.config = c;
    src.weights = random_weights(c, 4);
    ConvertOptions opt;
    opt.merge = MergeStrategy::kCalibrated;
    const CalibrationSet data = random_calibration(8, 16, c.n_vocab, 2);
    const LoadedModel out = convert_model(src, opt, nullptr, &data);
    const auto toks = random_tokens(40, c.n_vocab, 1);
    EXPECT_EQ(logprobs(src, toks), logprobs(out, toks)) << family_name(fam);
    opt.kv_source = {0, 0, 2};
    const LoadedModel part = convert_model(src, opt, nullptr, &data);
    for (int l : {0, 2}) {
      EXPECT_EQ(part.weights.layers[static_cast<size_t>(l)].wq.data()[5],
                src.weights.layers[static_cast<size_t>(l)].wq.data()[5]);
    }
  }
}

// Converting without calibration rows is an error, not a crash.
TEST(Calibrated, NeedsCalibrationRows) {
  const ModelConfig c = tiny_config(Family::kLlama, 2, 32, 4, 4, {}, KvShareRope::kPost);
  LoadedModel src;
  src.config = c;
  src.weights = random_weights(c, 4);
  ConvertOptions opt;
  opt.merge = MergeStrategy::kCalibrated;
  EXPECT_THROW(convert_model(src, opt), Error);
  opt.merge = MergeStrategy::kOwner;
  opt.owners_auto = true;
  EXPECT_THROW(plan_conversion(c, opt), Error);  // no --kv-layers
  opt.kv_layers = 1;
  opt.merge = MergeStrategy::kPairwise;
  EXPECT_THROW(plan_conversion(c, opt), Error);  // a merge the search cannot score
}

TEST(OwnerSearch, BestKvSourceByHand) {
  // 5 layers, 2 owners: layer 3 is served well only by owner 2 (cheap), layers 1, 2 by 0.
  const double x = 10;
  std::vector<std::vector<double>> cost = {
      {0, 1, 1, 9, 9}, {x, 0, 5, 5, 5}, {x, x, 0, 2, 8}, {x, x, x, 0, 3}, {x, x, x, x, 0}};
  // Sets {0, a}: a = 1: 0+0+5+5+5=15; a = 2: 1+0+2+8=11; a = 3: 1+1+0+3=5; a = 4: 1+1+9+0=11.
  EXPECT_EQ(best_kv_source(cost, 2), (std::vector<int>{0, 0, 0, 3, 3}));
  EXPECT_DOUBLE_EQ(kv_source_cost(cost, best_kv_source(cost, 2)), 5);
  EXPECT_EQ(best_kv_source(cost, 2, /*max_sets=*/0), (std::vector<int>{0, 0, 0, 3, 3}));  // swaps
  EXPECT_EQ(best_kv_source(cost, 5), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(best_kv_source(cost, 1), (std::vector<int>{0, 0, 0, 0, 0}));
  // Not contiguous: layer 4 prefers owner 0 although 3 owns ({0, 3}: 1+1+0+0.5; {0, 2}: 3.5).
  cost[0][4] = 0.5;
  cost[3][4] = 3;
  EXPECT_EQ(best_kv_source(cost, 2), (std::vector<int>{0, 0, 0, 3, 0}));
}

// A model whose residual stream barely changes from layer to layer and where two layers have the
// same K/V weights (and attention norm): `--owners auto` makes one read the other's K/V, whether
// or not they are neighbours, where the authors' rule does not.
TEST(OwnerSearch, FindsLayersWithTheSameKv) {
  struct Case {
    Family fam;
    int from, to;  // layer `to` gets layer `from`'s K/V weights
    std::vector<int> want;
  };
  for (const Case& k :
       {Case{Family::kGptNeoX, 1, 2, {0, 1, 1, 3}}, Case{Family::kLlama, 1, 2, {0, 1, 1, 3}},
        Case{Family::kLlama, 0, 3, {0, 1, 2, 0}}}) {
    const ModelConfig c = tiny_config(k.fam, 4, 64, 4, 4, {}, KvShareRope::kPost);
    LoadedModel src;
    src.config = c;
    src.weights = random_weights(c, 21);
    for (LayerWeights& w : src.weights.layers) {
      for (Tensor* t : {&w.wo, &w.bo, &w.w_down, &w.b_down}) {
        for (int64_t i = 0; i < t->numel(); ++i) (*t)[i] *= 0.005f;
      }
    }
    const LayerWeights& a = src.weights.layers[static_cast<size_t>(k.from)];
    LayerWeights& b = src.weights.layers[static_cast<size_t>(k.to)];
    b.attn_norm = a.attn_norm;
    b.attn_norm_b = a.attn_norm_b;
    b.wk = a.wk;
    b.bk = a.bk;
    b.wv = a.wv;
    b.bv = a.bv;
    const CalibrationSet data = random_calibration(12, 32, c.n_vocab, 8);
    for (MergeStrategy merge : {MergeStrategy::kOwner, MergeStrategy::kCalibrated}) {
      ConvertOptions opt;
      opt.kv_layers = 3;
      opt.owners_auto = true;
      opt.merge = merge;
      ConvertReport rep;
      const LoadedModel out = convert_model(src, opt, &rep, &data);
      const std::string what =
          cat(family_name(k.fam), " ", k.from, "->", k.to, " ", merge_name(merge));
      EXPECT_EQ(out.config.kv_source, k.want) << what;
      EXPECT_NO_THROW(out.config.validate()) << what;
      EXPECT_EQ(out.config.n_kv_layers(), 3) << what;
      EXPECT_LT(rep.calibration.search_cost, rep.calibration.rule_cost) << what;
      EXPECT_EQ(plan_conversion(c, opt).kv_source, (std::vector<int>{0, 1, 2, 2}));  // the rule
    }
  }
}

// On a random model the search returns a valid owner set for every M, costs no more than the
// authors' rule, and keeps layer 0 an owner.
TEST(OwnerSearch, ValidOwnerSets) {
  const ModelConfig c = tiny_config(Family::kGptNeoX, 5, 32, 4, 4, {}, KvShareRope::kPre);
  LoadedModel src;
  src.config = c;
  src.weights = random_weights(c, 2);
  const CalibrationSet data = random_calibration(8, 16, c.n_vocab, 3);
  for (int M = 1; M <= 5; ++M) {
    ConvertOptions opt;
    opt.kv_layers = M;
    opt.kv_heads = 2;
    opt.owners_auto = true;
    opt.share = KvShareRope::kPre;
    ConvertReport rep;
    const LoadedModel out = convert_model(src, opt, &rep, &data);
    EXPECT_NO_THROW(out.config.validate());
    EXPECT_EQ(out.config.n_kv_layers(), M);
    EXPECT_TRUE(out.config.owns_kv(0));
    EXPECT_EQ(out.config.share_rope, KvShareRope::kPre);
    EXPECT_LE(rep.calibration.search_cost, rep.calibration.rule_cost + 1e-12);
    EXPECT_EQ(static_cast<int>(rep.calibration.owner_costs.size()), 5);
  }
}

}  // namespace
}  // namespace mlkv
