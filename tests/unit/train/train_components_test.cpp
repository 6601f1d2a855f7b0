// The trainer's parts: the data row rule (order, shuffle, shard boundaries), the learning-rate
// schedule and AdamW against hand-computed values, clipping norm, and checkpoints (round trip,
// a writer killed half-way leaves the previous file loadable, corrupt files are clear errors).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "core/check.h"
#include "io/token_shard.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/optimizer.h"

namespace mlkv::train {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("mlkv_train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// Two shards holding 0, 1, ..., 99 (split at 37), so a token's value is its stream position.
std::vector<std::string> counting_shards(const std::string& dir) {
  std::vector<int32_t> a(37), b(63);
  std::iota(a.begin(), a.end(), 0);
  std::iota(b.begin(), b.end(), 37);
  TokenShardWriter wa(dir + "/train_000.bin", TokenDtype::kU16, 1000, -1);
  wa.append(a);
  wa.finish();
  TokenShardWriter wb(dir + "/train_001.bin", TokenDtype::kU16, 1000, -1);
  wb.append(b);
  wb.finish();
  return {dir + "/train_000.bin", dir + "/train_001.bin"};
}

TEST(TrainData, RowRuleInFileOrder) {
  const std::string dir = temp_dir("rows");
  TokenStream s(counting_shards(dir));
  ASSERT_EQ(s.n_tokens(), 100);
  RowSource rows(s, 0, s.n_tokens(), 8, 1, /*shuffle=*/false);
  EXPECT_EQ(rows.n_rows(), 12);  // (100 - 1) / 8
  std::vector<int32_t> r(9);
  for (int64_t g : {0, 4, 11, 12, 29}) {
    rows.fetch(g, r.data());
    const int64_t start = (g % 12) * 8;  // mlkv_ref.py batch_rows: (r mod R) * ctx, ctx + 1 tokens
    for (int i = 0; i < 9; ++i) EXPECT_EQ(r[i], start + i) << "row " << g;
  }
  // A row across the shard boundary (tokens 32..40).
  rows.fetch(4, r.data());
  EXPECT_EQ(r[4], 36);
  EXPECT_EQ(r[5], 37);
  fs::remove_all(dir);
}

TEST(TrainData, ShuffleIsASeededPermutationPerEpoch) {
  const std::string dir = temp_dir("shuffle");
  TokenStream s(counting_shards(dir));
  RowSource a(s, 0, 100, 4, 7, true), b(s, 0, 100, 4, 7, true), c(s, 0, 100, 4, 8, true);
  const int64_t R = a.n_rows();
  std::set<int64_t> epoch0, epoch1;
  bool differs_from_identity = false, epochs_differ = false, seeds_differ = false;
  for (int64_t g = 0; g < R; ++g) {
    epoch0.insert(a.row_of(g));
    epoch1.insert(a.row_of(R + g));
    EXPECT_EQ(a.row_of(g), b.row_of(g));  // same seed, same order
    differs_from_identity |= a.row_of(g) != g;
    epochs_differ |= a.row_of(g) != a.row_of(R + g);
    seeds_differ |= a.row_of(g) != c.row_of(g);
  }
  EXPECT_EQ(static_cast<int64_t>(epoch0.size()), R);
  EXPECT_EQ(static_cast<int64_t>(epoch1.size()), R);
  EXPECT_TRUE(differs_from_identity && epochs_differ && seeds_differ);
  // Going back to an earlier epoch (resume) gives the same rows.
  EXPECT_EQ(a.row_of(3), b.row_of(3));
  fs::remove_all(dir);
}

TEST(TrainData, FolderAndErrors) {
  const std::string dir = temp_dir("folder");
  counting_shards(dir);
  const DataFiles f = find_data_files(dir);
  EXPECT_EQ(f.train.size(), 2u);
  EXPECT_TRUE(f.val.empty());
  EXPECT_THROW(find_data_files(dir + "/nope"), Error);
  TokenStream s(f.train);
  std::vector<int32_t> out(10);
  EXPECT_THROW(s.read(95, 10, out.data()), Error);
  RowSource tiny(s, 0, 5, 8, 1, false);
  EXPECT_EQ(tiny.n_rows(), 0);
  EXPECT_THROW(tiny.row_of(0), Error);
  fs::remove_all(dir);
}

// The fingerprint a checkpoint keeps of its data changes with the content, not only the size:
// a resume on other data is refused (trainer.cpp).
TEST(TrainData, FingerprintIdentifiesContent) {
  const std::string dir = temp_dir("fingerprint");
  TokenStream s(counting_shards(dir));
  const DataFingerprint all = RowSource(s, 0, 100, 8, 1, true).fingerprint();
  EXPECT_EQ(all.tokens, 100);
  EXPECT_EQ(all.rows, 12);
  EXPECT_EQ(all.hash_hex().size(), 16u);
  // The same tokens in another stream (one shard, no shuffle, other ctx): the same data.
  TokenShardWriter w(dir + "/one.bin", TokenDtype::kU32, 1000, -1);
  std::vector<int32_t> ids(100);
  std::iota(ids.begin(), ids.end(), 0);
  w.append(ids);
  w.finish();
  TokenStream one({dir + "/one.bin"});
  EXPECT_TRUE(RowSource(one, 0, 100, 4, 7, false).fingerprint().same_data(all));
  // Same count, one token changed; same count, two tokens swapped; a sub-range: all different.
  ids[50] = 999;
  TokenShardWriter w2(dir + "/changed.bin", TokenDtype::kU16, 1000, -1);
  w2.append(ids);
  w2.finish();
  TokenStream changed({dir + "/changed.bin"});
  EXPECT_FALSE(RowSource(changed, 0, 100, 8, 1, true).fingerprint().same_data(all));
  std::iota(ids.begin(), ids.end(), 0);
  std::swap(ids[10], ids[11]);
  TokenShardWriter w3(dir + "/swapped.bin", TokenDtype::kU16, 1000, -1);
  w3.append(ids);
  w3.finish();
  TokenStream swapped({dir + "/swapped.bin"});
  EXPECT_FALSE(RowSource(swapped, 0, 100, 8, 1, true).fingerprint().same_data(all));
  EXPECT_FALSE(RowSource(s, 0, 90, 8, 1, true).fingerprint().same_data(all));
  EXPECT_FALSE(RowSource(s, 10, 100, 8, 1, true).fingerprint().same_data(all));
  fs::remove_all(dir);
}

TEST(TrainOptimizer, ScheduleMatchesReferenceFormula) {
  LrSchedule s;
  s.lr = 1e-3;
  s.warmup = 4;
  s.total = 20;
  s.min_ratio = 0.1;
  EXPECT_DOUBLE_EQ(s.at(0), 1e-3 * 1 / 4);
  EXPECT_DOUBLE_EQ(s.at(3), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(4), 1e-3);  // step W runs at the full lr
  const double lr_min = 1e-4;
  EXPECT_NEAR(s.at(12), lr_min + (1e-3 - lr_min) * 0.5 * (1 + std::cos(M_PI * 8 / 16)), 1e-18);
  EXPECT_GT(s.at(19), lr_min);
  s.kind = LrSchedule::Kind::kConstant;
  EXPECT_DOUBLE_EQ(s.at(19), 1e-3);
  s.kind = LrSchedule::Kind::kLinear;
  EXPECT_NEAR(s.at(12), lr_min + (1e-3 - lr_min) * 0.5, 1e-18);
  EXPECT_THROW(LrSchedule::parse("step"), Error);
}

TEST(TrainOptimizer, AdamWStepByHandAndNoDecayOnNormsAndBiases) {
  ModelConfig c =
      mlkv::testing::tiny_config(Family::kGptNeoX, 1, 8, 2, 2, {}, KvShareRope::kPost, 5);
  ModelWeights p = mlkv::testing::random_weights(c, 1), g;
  allocate_weights(c, &g);
  for (auto& r : list_params(c, g)) {
    for (int64_t i = 0; i < r.tensor->numel(); ++i)
      (*r.tensor)[i] = 0.01f * static_cast<float>(i % 7) - 0.02f;
  }
  const ModelWeights p0 = p;
  AdamWConfig ac;
  ac.weight_decay = 0.1;
  AdamW opt(c, ac);
  const double lr = 0.01, scale = 0.5;
  opt.step(p, g, lr, scale);
  opt.step(p, g, lr, scale);  // t = 2: bias corrections matter
  auto pr = list_params(c, p);
  auto pr0 = list_params(c, const_cast<ModelWeights&>(p0));
  auto gr = list_params(c, g);
  for (size_t k = 0; k < pr.size(); ++k) {
    const bool decay = pr[k].decay;
    EXPECT_EQ(decay, pr[k].tensor->ndim() == 2) << pr[k].name;  // matrices yes, norms/biases no
    for (int64_t i = 0; i < pr[k].tensor->numel(); i += 5) {
      double x = (*pr0[k].tensor)[i], m = 0, v = 0;
      const double gg = (*gr[k].tensor)[i] * scale;
      for (int t = 1; t <= 2; ++t) {
        m = 0.9 * m + 0.1 * gg;
        v = 0.95 * v + 0.05 * gg * gg;
        const double mh = m / (1 - std::pow(0.9, t)), vh = v / (1 - std::pow(0.95, t));
        x = x - lr * (mh / (std::sqrt(vh) + 1e-8) + (decay ? 0.1 : 0.0) * x);
      }
      EXPECT_NEAR((*pr[k].tensor)[i], x, 2e-6) << pr[k].name << "[" << i << "]";
    }
  }
  EXPECT_EQ(opt.steps(), 2);
  // Global norm: sqrt of the sum of squares over every tensor.
  double ss = 0;
  for (auto& r : list_params(c, g)) {
    for (int64_t i = 0; i < r.tensor->numel(); ++i) ss += double((*r.tensor)[i]) * (*r.tensor)[i];
  }
  std::string bad;
  EXPECT_NEAR(global_grad_norm(c, g, &bad), std::sqrt(ss), 1e-9 * std::sqrt(ss));
  EXPECT_EQ(bad, "");
  // A non-finite entry: the norm is not finite and the first tensor holding one is named (the
  // trainer stops or skips the step before the update with that name).
  auto refs = list_params(c, g);
  ASSERT_GT(refs.size(), 5u);
  (*refs[5].tensor).data()[refs[5].tensor->numel() - 1] = INFINITY;
  (*refs.back().tensor).data()[0] = NAN;
  EXPECT_FALSE(std::isfinite(global_grad_norm(c, g, &bad)));
  EXPECT_EQ(bad, refs[5].name);
}

TEST(TrainCheckpoint, RoundTripKilledWriterAndCorruptFiles) {
  const std::string dir = temp_dir("ckpt");
  const std::string path = dir + "/checkpoint.safetensors";
  ModelConfig c =
      mlkv::testing::tiny_config(Family::kLlama, 4, 16, 4, 1, {0, 0, 2, 2}, KvShareRope::kPre, 11);
  ModelWeights p = mlkv::testing::random_weights(c, 2), m = mlkv::testing::random_weights(c, 3),
               v = mlkv::testing::random_weights(c, 4);
  CheckpointState st;
  st.step = 7;
  st.next_row = 56;
  st.global_batch = 8;
  st.ctx = 32;
  st.seed = 99;
  st.shuffle = false;
  st.total_steps = 100;
  st.tokens_seen = 1792;
  st.options_json = "{\"lr\":0.001}";
  save_checkpoint(path, c, p, m, v, st);
  auto same = [&](const ModelWeights& a, const ModelWeights& b) {
    auto la = list_params(c, a), lb = list_params(c, b);
    for (size_t k = 0; k < la.size(); ++k) {
      if (std::memcmp(la[k].second->data(), lb[k].second->data(),
                      size_t(la[k].second->numel()) * 4) != 0)
        return false;
    }
    return true;
  };
  {
    Checkpoint ck = load_checkpoint(path);
    EXPECT_EQ(ck.config.kv_source, c.kv_source);
    EXPECT_EQ(ck.config.share_rope, KvShareRope::kPre);
    EXPECT_EQ(ck.state.step, 7);
    EXPECT_EQ(ck.state.seed, 99u);
    EXPECT_FALSE(ck.state.shuffle);
    EXPECT_EQ(ck.state.options_json, st.options_json);
    EXPECT_TRUE(same(ck.params, p) && same(ck.adam_m, m) && same(ck.adam_v, v));
    // Not set: no data recorded, AdamW's count is the step, the losses unknown / none.
    EXPECT_FALSE(ck.state.has_data);
    EXPECT_EQ(ck.state.adam_steps, -1);
    EXPECT_TRUE(std::isnan(ck.state.last_loss));
    EXPECT_EQ(ck.state.last_val_loss, -1);
  }
  {
    // The data, AdamW's count (a skipped step) and the last losses round-trip.
    CheckpointState s2 = st;
    s2.has_data = true;
    s2.train_data = {1387, 42, 0x0123456789abcdefull};
    s2.val_data = {};
    s2.adam_steps = 6;
    s2.skipped_steps = 1;
    s2.last_loss = 4.25;
    s2.last_val_loss = 4.5;
    save_checkpoint(dir + "/full.safetensors", c, p, m, v, s2);
    const CheckpointState r = load_checkpoint(dir + "/full.safetensors").state;
    EXPECT_TRUE(r.has_data);
    EXPECT_TRUE(r.train_data.same_data(s2.train_data));
    EXPECT_EQ(r.train_data.rows, 42);
    EXPECT_EQ(r.train_data.hash_hex(), "0123456789abcdef");
    EXPECT_EQ(r.val_data.tokens, 0);
    EXPECT_EQ(r.adam_steps, 6);
    EXPECT_EQ(r.skipped_steps, 1);
    EXPECT_EQ(r.last_loss, 4.25);
    EXPECT_EQ(r.last_val_loss, 4.5);
  }
  // A second save dies (SIGKILL) half-way through the file: the first one is still there, intact.
  const pid_t pid = fork();
  if (pid == 0) {
    CheckpointState st2 = st;
    st2.step = 8;
    save_checkpoint(path, c, m, m, m, st2, [](uint64_t done, uint64_t total) {
      if (2 * done >= total) ::kill(::getpid(), SIGKILL);
    });
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  int n_tmp = 0;
  for (const auto& e : fs::directory_iterator(dir))
    n_tmp += e.path().string().find(".tmp.") != std::string::npos;
  EXPECT_EQ(n_tmp, 1);  // the half-written file
  {
    Checkpoint ck = load_checkpoint(path);
    EXPECT_EQ(ck.state.step, 7);
    EXPECT_TRUE(same(ck.params, p));
  }
  // Truncated and foreign files are errors that name the file.
  fs::copy_file(path, dir + "/cut.safetensors");
  fs::resize_file(dir + "/cut.safetensors", fs::file_size(path) / 2);
  EXPECT_THROW(load_checkpoint(dir + "/cut.safetensors"), Error);
  EXPECT_THROW(load_checkpoint(dir + "/missing.safetensors"), Error);
  std::ofstream(dir + "/junk.safetensors") << "not a checkpoint";
  try {
    load_checkpoint(dir + "/junk.safetensors");
    FAIL() << "junk loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("junk.safetensors"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mlkv::train
