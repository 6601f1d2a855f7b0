// Conversion (src/convert): identity conversion is exact (in memory and through fused -> split
// files), pooling and the three merges give the hand-computed weights, MLP widening keeps or
// changes the function as documented, the parameter report, and every impossible conversion
// fails with a clear message.
#include "convert/convert.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "core/check.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;
using testing::random_weights;
using testing::tiny_config;

std::vector<int32_t> tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

LoadedModel make(const ModelConfig& c, uint64_t seed) {
  LoadedModel m;
  m.config = c;
  m.weights = random_weights(c, seed);
  return m;
}

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

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / cat("mlkv_convert_test_", ::getpid(), "_", name);
  fs::remove_all(p);
  return p;
}

std::string error_of(const ModelConfig& src, const ConvertOptions& opt) {
  try {
    plan_conversion(src, opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// G = n_head, M = n_layer: every merge reproduces the source bit for bit.
TEST(Convert, IdentityIsExact) {
  for (Family fam : {Family::kGptNeoX, Family::kLlama}) {
    for (MergeStrategy merge :
         {MergeStrategy::kPairwise, MergeStrategy::kMean, MergeStrategy::kOwner}) {
      const ModelConfig c = tiny_config(fam, 4, 32, 4, 4, {}, KvShareRope::kPost);
      const LoadedModel src = make(c, 3);
      ConvertOptions opt;
      opt.kv_heads = 4;
      opt.kv_layers = 4;
      opt.merge = merge;
      const LoadedModel dst = convert_model(src, opt);
      const auto toks = tokens(40, c.n_vocab, 5);
      EXPECT_EQ(logprobs(src, toks), logprobs(dst, toks))
          << family_name(fam) << " " << merge_name(merge);
    }
  }
}

// A GPT-NeoX checkpoint with fused query_key_value, converted with G = n_head and M = n_layer and
// written in the split layout, scores exactly like the source.
TEST(Convert, NeoxFusedToSplitIsExact) {
  const ModelConfig c = tiny_config(Family::kGptNeoX, 3, 32, 4, 4, {}, KvShareRope::kPost);
  const LoadedModel src = make(c, 11);
  const fs::path dir = temp_dir("fused");
  save_model((dir / "src").string(), c, src.weights);  // fused where possible: MHA, no sharing
  {
    const SafeTensorsSet st = SafeTensorsSet::open_dir((dir / "src").string());
    ASSERT_NE(st.find("gpt_neox.layers.0.attention.query_key_value.weight"), nullptr);
  }
  const LoadedModel loaded = load_model((dir / "src").string());
  ConvertOptions opt;
  const LoadedModel conv = convert_model(loaded, opt);
  SaveOptions so;
  so.fuse_qkv_when_possible = false;
  save_model((dir / "dst").string(), conv.config, conv.weights, so);
  {
    const SafeTensorsSet st = SafeTensorsSet::open_dir((dir / "dst").string());
    EXPECT_EQ(st.find("gpt_neox.layers.0.attention.query_key_value.weight"), nullptr);
    EXPECT_NE(st.find("gpt_neox.layers.0.attention.query.weight"), nullptr);
    EXPECT_NE(st.find("gpt_neox.layers.2.attention.value.bias"), nullptr);
  }
  const LoadedModel back = load_model((dir / "dst").string());
  const auto toks = tokens(48, c.n_vocab, 2);
  EXPECT_EQ(logprobs(src, toks), logprobs(back, toks));
  fs::remove_all(dir);
}

// Head h of layer l holds the constant value 10 * l + h (+ 100 for V, biases likewise): pooling
// and each merge can be checked by hand.
TEST(Convert, PoolingAndMergesByHand) {
  const ModelConfig c = tiny_config(Family::kGptNeoX, 4, 16, 4, 4, {}, KvShareRope::kPost);
  LoadedModel src = make(c, 1);
  const int d = c.n_embd_head;
  for (int l = 0; l < 4; ++l) {
    LayerWeights& L = src.weights.layers[static_cast<size_t>(l)];
    for (int h = 0; h < 4; ++h) {
      for (int64_t i = 0; i < int64_t{d} * c.n_embd; ++i) {
        L.wk[h * d * c.n_embd + i] = static_cast<float>(10 * l + h);
        L.wv[h * d * c.n_embd + i] = static_cast<float>(100 + 10 * l + h);
      }
      for (int i = 0; i < d; ++i) {
        L.bk[h * d + i] = static_cast<float>(10 * l + h);
        L.bv[h * d + i] = static_cast<float>(100 + 10 * l + h);
      }
    }
  }
  // G = 2 pools heads {0,1} and {2,3}: layer l gives 10 l + 0.5 and 10 l + 2.5.
  // kv_source 0,0,0,3: the group of owner 0 is layers 0, 1, 2.
  struct Case {
    MergeStrategy merge;
    double w0, w1, w2;  // weights of layers 0, 1, 2 in owner 0's K/V
  };
  for (const Case& k : {Case{MergeStrategy::kPairwise, 0.25, 0.25, 0.5},
                        Case{MergeStrategy::kMean, 1.0 / 3, 1.0 / 3, 1.0 / 3},
                        Case{MergeStrategy::kOwner, 1.0, 0.0, 0.0}}) {
    ConvertOptions opt;
    opt.kv_heads = 2;
    opt.kv_source = {0, 0, 0, 3};
    opt.merge = k.merge;
    const LoadedModel out = convert_model(src, opt);
    const LayerWeights& o = out.weights.layers[0];
    ASSERT_EQ(o.wk.shape(), (std::vector<int64_t>{2 * d, c.n_embd}));
    for (int g = 0; g < 2; ++g) {
      const double pooled_head = 2 * g + 0.5;  // mean of heads 2g, 2g+1
      const double want_k =
          k.w0 * (0 + pooled_head) + k.w1 * (10 + pooled_head) + k.w2 * (20 + pooled_head);
      EXPECT_FLOAT_EQ(o.wk[g * d * c.n_embd + 3], static_cast<float>(want_k))
          << merge_name(k.merge);
      EXPECT_FLOAT_EQ(o.bk[g * d + 1], static_cast<float>(want_k));
      EXPECT_FLOAT_EQ(o.wv[g * d * c.n_embd + 7], static_cast<float>(100 + want_k));
      EXPECT_FLOAT_EQ(o.bv[g * d], static_cast<float>(100 + want_k));
    }
    // Owner 3 keeps its own pooled heads; non-owners hold no K/V.
    EXPECT_FLOAT_EQ(out.weights.layers[3].wk[0], 30.5f);
    EXPECT_FLOAT_EQ(out.weights.layers[3].bv[d], 132.5f);
    for (int l : {1, 2}) {
      EXPECT_TRUE(out.weights.layers[static_cast<size_t>(l)].wk.empty());
      EXPECT_TRUE(out.weights.layers[static_cast<size_t>(l)].bv.empty());
    }
    EXPECT_EQ(out.config.kv_source, (std::vector<int>{0, 0, 0, 3}));
    EXPECT_EQ(out.config.n_head_kv, 2);
  }
}

TEST(Convert, OwnerRuleAndShareFlag) {
  const ModelConfig c = tiny_config(Family::kLlama, 6, 32, 4, 4, {}, KvShareRope::kPost);
  ConvertOptions opt;
  opt.kv_layers = 4;  // authors' rule for L = 6: owners 0, 1, 3, 4
  opt.share = KvShareRope::kPre;
  const ModelConfig t = plan_conversion(c, opt);
  EXPECT_EQ(t.owner_layers(), (std::vector<int>{0, 1, 3, 4}));
  EXPECT_EQ(t.kv_source, (std::vector<int>{0, 1, 1, 3, 4, 4}));
  EXPECT_EQ(t.share_rope, KvShareRope::kPre);
  ConvertOptions o2;
  o2.owners = {0, 2};
  o2.kv_heads = 1;
  const ModelConfig t2 = plan_conversion(c, o2);
  EXPECT_EQ(t2.kv_source, (std::vector<int>{0, 0, 2, 2, 2, 2}));
  EXPECT_EQ(t2.kv_bytes_per_token(4), 2 * 2 * 1 * c.n_embd_head * 4);
}

// A GQA source can be pooled further (4 -> 2 -> 1 KV heads) but never split.
TEST(Convert, GqaSource) {
  const ModelConfig c = tiny_config(Family::kLlama, 4, 32, 4, 2, {}, KvShareRope::kPost);
  const LoadedModel src = make(c, 9);
  ConvertOptions opt;
  opt.kv_heads = 1;
  opt.kv_layers = 2;
  const LoadedModel out = convert_model(src, opt);
  EXPECT_EQ(out.config.n_head_kv, 1);
  EXPECT_EQ(out.weights.layers[0].wk.dim(0), c.n_embd_head);
  opt.kv_heads = 4;
  EXPECT_NE(error_of(c, opt).find("does not divide the source's 2 KV heads"), std::string::npos);
}

TEST(Convert, ImpossibleConversionsFailClearly) {
  const ModelConfig c = tiny_config(Family::kGptNeoX, 4, 48, 6, 6, {}, KvShareRope::kPost);
  ConvertOptions o;
  o.kv_heads = 4;
  EXPECT_NE(error_of(c, o).find("--kv-heads 4 does not divide the number of attention heads (6)"),
            std::string::npos);
  o = {};
  o.kv_layers = 5;
  EXPECT_NE(error_of(c, o).find("--kv-layers 5 is out of range"), std::string::npos);
  o = {};
  o.kv_layers = -1;
  EXPECT_NE(error_of(c, o).find("out of range"), std::string::npos);
  o = {};
  o.owners = {1, 3};
  EXPECT_NE(error_of(c, o).find("must start at layer 0"), std::string::npos);
  o = {};
  o.owners = {0, 3, 2};
  EXPECT_NE(error_of(c, o).find("strictly increasing"), std::string::npos);
  o = {};
  o.owners = {0, 4};
  EXPECT_NE(error_of(c, o).find("names layer 4"), std::string::npos);
  o = {};
  o.kv_source = {0, 0, 3, 3};
  EXPECT_NE(error_of(c, o).find("points forward"), std::string::npos);
  o = {};
  o.kv_source = {0, 0, 1, 1};
  EXPECT_NE(error_of(c, o).find("does not own K/V"), std::string::npos);
  o = {};
  o.kv_source = {0, 0};
  EXPECT_NE(error_of(c, o).find("has 2 entries"), std::string::npos);
  o = {};
  o.kv_layers = 2;
  o.owners = {0, 2};
  EXPECT_NE(error_of(c, o).find("at most one of"), std::string::npos);
  const ModelConfig shared =
      tiny_config(Family::kGptNeoX, 4, 48, 6, 6, {0, 0, 2, 2}, KvShareRope::kPost);
  EXPECT_NE(error_of(shared, {}).find("already shares K/V across layers"), std::string::npos);
}

// Widening with zero output weights keeps the function; copying (the authors') changes it. Both
// give back the removed parameters to within one neuron per layer.
TEST(Convert, WidenMlp) {
  // GPT-NeoX (GELU, biases), Llama (SwiGLU), Llama with mlp_bias (gate, up and down biases).
  for (int variant = 0; variant < 3; ++variant) {
    const Family fam = variant == 0 ? Family::kGptNeoX : Family::kLlama;
    ModelConfig c = tiny_config(fam, 4, 32, 4, 4, {}, KvShareRope::kPost);
    c.mlp_bias = variant != 1;
    const LoadedModel src = make(c, 21);
    ConvertOptions opt;
    opt.kv_heads = 1;
    opt.kv_layers = 2;
    ConvertReport plain_rep;
    const LoadedModel plain = convert_model(src, opt, &plain_rep);
    EXPECT_EQ(plain_rep.params_after, plain_rep.params_dropped);
    EXPECT_LT(plain_rep.params_after, plain_rep.params_before);

    opt.widen = WidenMode::kZero;
    ConvertReport rep;
    const LoadedModel zero = convert_model(src, opt, &rep);
    const int64_t per_neuron =
        fam == Family::kLlama ? 3 * c.n_embd + (c.mlp_bias ? 2 : 0) : 2 * c.n_embd + 1;
    EXPECT_GT(rep.n_ff_after, rep.n_ff_before);
    EXPECT_EQ(rep.params_after, rep.params_dropped + int64_t{rep.n_ff_after - rep.n_ff_before} *
                                                         per_neuron * c.n_layer);
    EXPECT_LE(std::llabs(rep.params_after - rep.params_before), per_neuron * c.n_layer / 2);
    EXPECT_EQ(zero.config.n_ff, rep.n_ff_after);
    EXPECT_EQ(zero.config.n_params(), rep.params_after);

    const auto toks = tokens(40, c.n_vocab, 8);
    EXPECT_LT(max_abs_diff(logprobs(plain, toks), logprobs(zero, toks)), 1e-5) << family_name(fam);

    opt.widen = WidenMode::kCopy;
    const LoadedModel copy = convert_model(src, opt);
    const LayerWeights& l = copy.weights.layers[1];
    const int F = c.n_ff;
    // New neuron F copies neuron 0 on both sides.
    EXPECT_EQ(l.w_up[int64_t{F} * c.n_embd + 5], l.w_up[5]);
    EXPECT_EQ(l.w_down[int64_t{3} * copy.config.n_ff + F], l.w_down[int64_t{3} * copy.config.n_ff]);
    EXPECT_GT(max_abs_diff(logprobs(plain, toks), logprobs(copy, toks)), 1e-4) << family_name(fam);
    // Zero mode: inputs copied, outputs zero.
    const LayerWeights& z = zero.weights.layers[1];
    EXPECT_EQ(z.w_up[int64_t{F} * c.n_embd + 5], z.w_up[5]);
    EXPECT_EQ(z.w_down[int64_t{3} * zero.config.n_ff + F], 0.0f);
    if (c.mlp_bias) {  // a new neuron's input biases are its model neuron's
      EXPECT_EQ(z.b_up[F], z.b_up[0]);
      if (fam == Family::kLlama) {
        EXPECT_EQ(z.b_gate[F], z.b_gate[0]);
      }
    }
  }
}

TEST(Convert, Names) {
  EXPECT_EQ(parse_merge("pairwise"), MergeStrategy::kPairwise);
  EXPECT_EQ(parse_widen("zero"), WidenMode::kZero);
  EXPECT_THROW(parse_merge("sum"), Error);
  EXPECT_THROW(parse_widen("double"), Error);
}

}  // namespace
}  // namespace mlkv
