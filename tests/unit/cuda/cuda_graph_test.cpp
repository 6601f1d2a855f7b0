// Decode steps as CUDA graphs (Model::set_graphs, Backend::begin_capture ...): the same script of
// batches run by a model with graphs and by one without gives the same logits, bit for bit, and
// the graph path is really taken:
//  - two sequences decoding together for 40 steps after prefills of 230 and 241 tokens, so the
//    context crosses a 256-key attention chunk (the ungraphed grid grows there; the graphed one
//    is sized by the block tables), on a paged cache (blocks of 16) whose tables are full from
//    the start, and on a pool whose tables grow a block at a time as the sequences do (a
//    recording is refused and made again when the tables' reach crosses a chunk);
//  - a batch whose composition changes: a sequence finishes, its slot is reused by a new prefill,
//    a step mixes a decode row with a prefill (no graph), the order of the sequences in the batch
//    changes, three sequences decode together;
//  - MHA and MLKV with pre-sharing rotary (raw keys rotated on the way in), both families; f32
//    weights and cache, and f16 weights with a bf16 cache;
//  - graphs are opt-in: MLKV_CUDA_GRAPHS=1 turns them on for models made while it is set.
// Skipped without a CUDA build or a GPU; with MLKV_CUDA_TESTS_ON_CPU=1 the scripts run on the
// CPU (which has no graphs) as a check of the test itself.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_model_cases.h"
#include "cuda_test_util.h"
#include "model/model.h"

namespace mlkv::cuda_test {
namespace {

constexpr int kHeadDim = 64, kVocab = 97, kBlock = 16, kCtx = 320;

struct GraphCase {
  std::string model;  // a cuda_model_cases() name
  WeightType weights;
  KvCacheType cache;
  std::string label() const {
    return model + (weights == WeightType::kF16 ? "_f16w_bf16kv" : "_f32");
  }
};

std::vector<GraphCase> graph_cases() {
  std::vector<GraphCase> out;
  for (const char* m :
       {"gpt_neox_mha", "llama_mha", "gpt_neox_mlkv_half_pre", "llama_mlkv_half_pre"}) {
    out.push_back({m, WeightType::kF32, KvCacheType{}});
  }
  out.push_back({"llama_mlkv_half_pre", WeightType::kF16, KvCacheType{DType::kBF16, DType::kBF16}});
  out.push_back({"gpt_neox_mha", WeightType::kF16, KvCacheType{DType::kBF16, DType::kBF16}});
  return out;
}

ModelCase find_case(const std::string& name) {
  for (const ModelCase& c : model_cases()) {
    if (c.name == name) return c;
  }
  ADD_FAILURE() << "no model case " << name;
  return model_cases()[0];
}

Model make_model(const GraphCase& gc, bool graphs) {
  ModelConfig cfg = model_config(find_case(gc.model), kHeadDim, kVocab);
  cfg.n_ctx = 512;
  LoadedModel lm;
  lm.config = cfg;
  lm.weights = mlkv::testing::random_weights(cfg, 41);
  ModelOptions opt;
  opt.device = gpu_device();
  opt.weights = gc.weights;
  Model m(std::move(lm), opt);
  m.set_graphs(graphs);
  return m;
}

// The logits of every step of a script, in order.
using Logits = std::vector<std::vector<float>>;

// Runs one batch (growing a pool's block tables first, when `pool`), appends its logits.
struct Driver {
  Driver(Model& model, KVCache& kv, bool grow_pool) : m(model), cache(kv), pool(grow_pool) {}
  Model& m;
  KVCache& cache;
  bool pool;
  int next_block = 0;
  Logits out;

  void grow_tables(const Batch& b) {
    if (!pool) return;
    for (int i = 0; i < b.size(); ++i) {
      std::vector<int32_t> t = cache.block_table(b.seq[size_t(i)]);
      bool changed = false;
      while (static_cast<int>(t.size()) * kBlock <= b.pos[size_t(i)]) {
        ASSERT_LT(next_block, cache.n_blocks()) << "the test's pool is too small";
        t.push_back(next_block++);
        changed = true;
      }
      if (changed) cache.set_block_table(b.seq[size_t(i)], std::move(t));
    }
  }
  void step(const Batch& b) {
    grow_tables(b);
    std::vector<float> l(size_t(b.n_outputs()) * size_t(m.config().n_vocab));
    m.forward(b, cache, l.data());
    out.push_back(std::move(l));
  }
};

// A prefill of tokens[0, n) of sequence s (logits for the last row only).
Batch prefill(const std::vector<int32_t>& tok, int s, int n) {
  Batch b;
  for (int i = 0; i < n; ++i) b.add(tok[size_t(i)], s, i, i == n - 1);
  return b;
}

// Two sequences prefilled to 230 and 241 tokens, then 40 decode steps of both (feeding fixed
// tokens, so both runs see the same inputs whatever they compute).
Logits two_sequences(Model& m, bool pool) {
  // Full tables: 2 x 20 blocks; a pool: 38 blocks handed out as the sequences grow.
  KVCache cache = m.new_cache(2, kCtx, {}, kBlock, pool ? 38 : 0);
  Driver d(m, cache, pool);
  const auto a = mlkv::testing::random_tokens(300, kVocab, 7),
             b = mlkv::testing::random_tokens(300, kVocab, 8);
  Batch p = prefill(a, 0, 230);
  const Batch pb = prefill(b, 1, 241);
  for (int i = 0; i < pb.size(); ++i) {
    p.add(pb.token[size_t(i)], pb.seq[size_t(i)], pb.pos[size_t(i)], pb.logits[size_t(i)] != 0);
  }
  d.step(p);
  for (int t = 0; t < 40; ++t) {
    Batch s;
    s.add(a[size_t(230 + t)], 0, 230 + t, true);
    s.add(b[size_t(241 + t)], 1, 241 + t, true);
    d.step(s);
  }
  EXPECT_EQ(cache.seq_len(0), 270);
  EXPECT_EQ(cache.seq_len(1), 281);
  return std::move(d.out);
}

Logits two_sequences_full(Model& m) {
  return two_sequences(m, false);
}
Logits two_sequences_pool(Model& m) {
  return two_sequences(m, true);
}

// A batch whose composition changes as sequences finish and start.
Logits changing_batch(Model& m) {
  KVCache cache = m.new_cache(3, kCtx, {}, kBlock);
  Driver d(m, cache, false);
  const auto t0 = mlkv::testing::random_tokens(200, kVocab, 11),
             t1 = mlkv::testing::random_tokens(200, kVocab, 12),
             t2 = mlkv::testing::random_tokens(200, kVocab, 13),
             t3 = mlkv::testing::random_tokens(200, kVocab, 14);
  const int s0 = cache.acquire_seq(), s1 = cache.acquire_seq();
  d.step(prefill(t0, s0, 20));
  d.step(prefill(t1, s1, 13));
  int p0 = 20, p1 = 13;
  for (int t = 0; t < 12; ++t) {  // both decode
    Batch b;
    b.add(t0[size_t(p0)], s0, p0, true);
    b.add(t1[size_t(p1)], s1, p1, true);
    ++p0;
    ++p1;
    d.step(b);
  }
  cache.release_seq(s0);         // sequence 0 finishes
  for (int t = 0; t < 5; ++t) {  // 1 alone
    Batch b;
    b.add(t1[size_t(p1)], s1, p1, true);
    ++p1;
    d.step(b);
  }
  // A new sequence in the freed slot: a prefill alone, then decoding with 1, in the other order.
  const int s2 = cache.acquire_seq();
  EXPECT_EQ(s2, s0);
  d.step(prefill(t2, s2, 9));
  int p2 = 9;
  for (int t = 0; t < 6; ++t) {
    Batch b;
    b.add(t1[size_t(p1)], s1, p1, true);
    b.add(t2[size_t(p2)], s2, p2, true);
    ++p1;
    ++p2;
    d.step(b);
  }
  // A third sequence joins: a step mixing 1's decode row with its prefill (not a decode step),
  // then the three decode together; then 2 leaves again and 1 and 3 go on (a shape seen before,
  // with other sequences).
  const int s3 = cache.acquire_seq();
  {
    Batch b;
    b.add(t1[size_t(p1)], s1, p1, true);
    ++p1;
    for (int i = 0; i < 17; ++i) b.add(t3[size_t(i)], s3, i, i == 16);
    d.step(b);
  }
  int p3 = 17;
  for (int t = 0; t < 8; ++t) {
    Batch b;
    b.add(t2[size_t(p2)], s2, p2, true);
    b.add(t3[size_t(p3)], s3, p3, true);
    b.add(t1[size_t(p1)], s1, p1, true);
    ++p1;
    ++p2;
    ++p3;
    d.step(b);
  }
  cache.release_seq(s2);
  for (int t = 0; t < 8; ++t) {
    Batch b;
    b.add(t3[size_t(p3)], s3, p3, true);
    b.add(t1[size_t(p1)], s1, p1, true);
    ++p1;
    ++p3;
    d.step(b);
  }
  // Logits for one of the two rows only (another shape), then both again.
  for (int t = 0; t < 4; ++t) {
    Batch b;
    b.add(t3[size_t(p3)], s3, p3, t % 2 == 0);
    b.add(t1[size_t(p1)], s1, p1, true);
    ++p1;
    ++p3;
    d.step(b);
  }
  return std::move(d.out);
}

// Expects the same bits step by step.
void expect_same_bits(const std::string& what, const Logits& got, const Logits& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t s = 0; s < got.size(); ++s) {
    ASSERT_EQ(got[s].size(), want[s].size()) << what << " step " << s;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < got[s].size(); ++i) {
      if (std::memcmp(&got[s][i], &want[s][i], sizeof(float)) != 0 && !bad++) first = i;
    }
    EXPECT_EQ(bad, 0u) << what << " step " << s << ": " << bad << " logits differ, first at "
                       << first << " (graphs " << got[s][first] << ", without " << want[s][first]
                       << ")";
  }
}

class CudaGraph : public CudaParamTest<int> {
 protected:
  GraphCase gc() const { return graph_cases()[size_t(GetParam())]; }

  // Runs the script with graphs and without; checks the bits and that graphs were used.
  void check(const char* name, Logits (*script)(Model&), int64_t min_launches) {
    Model with = make_model(gc(), true), without = make_model(gc(), false);
    EXPECT_FALSE(without.graphs());
    const Logits got = script(with), want = script(without);
    const std::string what = gc().label() + " " + name;
    expect_same_bits(what, got, want);
    EXPECT_EQ(without.graph_launches(), 0) << what;
    std::printf("  %-50s %zu steps, %lld run as graphs\n", what.c_str(), got.size(),
                static_cast<long long>(with.graph_launches()));
    if (gpu_device() == Device::kCpu) {
      EXPECT_EQ(with.graph_launches(), 0) << "the CPU has no graphs";
      return;
    }
    EXPECT_TRUE(with.graphs()) << what;
    EXPECT_GE(with.graph_launches(), min_launches) << what;
  }
};

// 41 steps: a prefill, a warm-up decode step, then 39 graphs (full tables: one recording).
TEST_P(CudaGraph, TwoSequencesFullTables) {
  check("two sequences, full tables", two_sequences_full, 39);
}

// Sequence 1's table reaches past 256 positions at decode step 15 (position 256): the recording
// of 2 splits no longer fits, that step runs normally and the next one is recorded again.
TEST_P(CudaGraph, TwoSequencesGrowingPool) {
  check("two sequences, growing pool", two_sequences_pool, 37);
}

TEST_P(CudaGraph, ChangingBatch) {
  check("changing batch", changing_batch, 25);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGraph,
                         ::testing::Range(0, static_cast<int>(graph_cases().size())),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return graph_cases()[size_t(p.param)].label();
                         });

// Graphs are opt-in: a model made without MLKV_CUDA_GRAPHS (or with 0) has them off, one made
// with MLKV_CUDA_GRAPHS=1 has them on (where the backend supports them).
TEST_F(CudaTest, GraphsEnvironmentSwitch) {
  const GraphCase gc{"gpt_neox_mha", WeightType::kF32, KvCacheType{}};
  const char* old = std::getenv("MLKV_CUDA_GRAPHS");
  const std::string saved = old ? old : "";
  ModelConfig cfg = model_config(find_case(gc.model), kHeadDim, kVocab);
  auto make = [&](const char* env) {
    if (env) {
      setenv("MLKV_CUDA_GRAPHS", env, 1);
    } else {
      unsetenv("MLKV_CUDA_GRAPHS");
    }
    LoadedModel lm;
    lm.config = cfg;
    lm.weights = mlkv::testing::random_weights(cfg, 41);
    ModelOptions opt;
    opt.device = gpu_device();
    return Model(std::move(lm), opt);
  };
  Model unset = make(nullptr), zero = make("0"), one = make("1");
  if (old) {
    setenv("MLKV_CUDA_GRAPHS", saved.c_str(), 1);
  } else {
    unsetenv("MLKV_CUDA_GRAPHS");
  }
  EXPECT_FALSE(unset.graphs());
  EXPECT_FALSE(zero.graphs());
  EXPECT_EQ(one.graphs(), gpu_device() == Device::kCuda);
  const Logits l = two_sequences_full(zero);
  EXPECT_EQ(zero.graph_launches(), 0);
  EXPECT_EQ(l.size(), 41u);
}

}  // namespace
}  // namespace mlkv::cuda_test
