// The public API's conversion and evaluation calls (mlkv/convert.h, mlkv/evaluate.h) on the real
// tiny llama2.c model of the shared data: loglikelihood equals the sum of score() over the
// continuation, with argmax flags from logits(); evaluate returns the eval document; convert
// writes a loadable MLKV folder, reports it, and refuses impossible conversions leaving nothing
// behind; a missing model is a FileError, a file that is no model a plain Error. Includes only
// mlkv/ headers and links only mlkv_api.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mlkv/mlkv.h"

namespace {

namespace fs = std::filesystem;

const std::string kDir = std::string(MLKV_SHARED_DIR) + "/data/models/aidreams260K";
const std::string kModel = kDir + "/aidreams260K.bin";

bool have_data() {
  return fs::exists(kModel);
}

fs::path scratch(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("mlkv_api_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

TEST(PublicApiEval, LoglikelihoodIsSumOfScores) {
  if (!have_data()) GTEST_SKIP() << "no shared model";
  mlkv::Engine e = mlkv::Engine::load(kModel);
  const std::vector<int32_t> ctx = {1, 429, 491, 433, 295};
  const std::vector<std::vector<int32_t>> conts = {{429, 444}, {445, 265, 262}, {7}};
  std::vector<mlkv::LoglikelihoodRequest> reqs;
  for (const auto& c : conts) reqs.push_back({ctx, c});
  mlkv::LoglikelihoodOptions o;
  o.batch = 2;
  const std::vector<mlkv::LoglikelihoodResult> res = mlkv::loglikelihood(e, reqs, o);
  ASSERT_EQ(res.size(), conts.size());
  for (size_t i = 0; i < conts.size(); ++i) {
    std::vector<int32_t> all = ctx;
    all.insert(all.end(), conts[i].begin(), conts[i].end());
    const std::vector<float> lp = e.score(all);
    const std::vector<float> z = e.logits(all);
    const int V = e.info().n_vocab;
    double sum = 0;
    bool greedy = true;
    for (size_t t = ctx.size(); t < all.size(); ++t) {
      sum += lp[t - 1];
      const float* row = z.data() + (t - 1) * static_cast<size_t>(V);
      greedy = greedy && std::max_element(row, row + V) - row == all[t];
    }
    EXPECT_NEAR(res[i].logprob, sum, 1e-4) << i;
    EXPECT_EQ(res[i].greedy, greedy) << i;
    EXPECT_EQ(res[i].n_tokens, static_cast<int>(conts[i].size()));
  }
  EXPECT_THROW(mlkv::loglikelihood(e, {{{}, {1}}}), mlkv::Error);
  EXPECT_THROW(mlkv::loglikelihood(e, {{{1}, {}}}), mlkv::Error);
  EXPECT_THROW(mlkv::loglikelihood(e, {{{1}, {512}}}), mlkv::Error);
  o.batch = 0;
  EXPECT_THROW(mlkv::loglikelihood(e, reqs, o), mlkv::Error);
}

TEST(PublicApiEval, EvaluateReturnsTheDocument) {
  if (!have_data()) GTEST_SKIP() << "no shared model";
  mlkv::Engine e = mlkv::Engine::load(kModel);
  mlkv::EvaluateOptions o;
  o.inputs = {"piqa"};
  o.eval_dir = std::string(MLKV_SHARED_DIR) + "/data/eval";
  o.limit = 5;
  o.bos = true;
  o.model_name = kModel;
  const std::string doc = mlkv::evaluate(e, o);
  EXPECT_NE(doc.find("\"results\""), std::string::npos);
  EXPECT_NE(doc.find("\"piqa\""), std::string::npos);
  EXPECT_NE(doc.find("\"acc_norm\""), std::string::npos);
  EXPECT_THROW(mlkv::evaluate(e, {}), mlkv::Error);  // nothing to evaluate
  o.inputs = {"no_such_task"};
  EXPECT_THROW(mlkv::evaluate(e, o), mlkv::Error);
  mlkv::Engine no_tok =
      mlkv::Engine::load(kModel, {.tokenizer_mode = mlkv::TokenizerMode::kNone});
  o.inputs = {"piqa"};
  EXPECT_THROW(mlkv::evaluate(no_tok, o), mlkv::Error);
}

TEST(PublicApiEval, ConvertWritesAnMlkvFolder) {
  if (!have_data()) GTEST_SKIP() << "no shared model";
  const fs::path dst = scratch("convert");
  mlkv::ConvertSpec s;
  s.kv_heads = 2;
  s.kv_layers = 2;
  const std::string report = mlkv::convert(kModel, dst.string(), s);
  EXPECT_NE(report.find("\"n_kv_layers\": 2"), std::string::npos) << report;
  mlkv::Engine e = mlkv::Engine::load(dst.string());
  EXPECT_EQ(e.info().n_kv_layers, 2);
  EXPECT_EQ(e.info().n_head_kv, 2);
  EXPECT_EQ(e.info().kv_source, (std::vector<int>{0, 0, 2, 2}));
  // Not empty and no force: refused; force: replaced.
  EXPECT_THROW(mlkv::convert(kModel, dst.string(), s), mlkv::Error);
  s.force = true;
  EXPECT_NO_THROW(mlkv::convert(kModel, dst.string(), s));
  fs::remove_all(dst);
  // Impossible conversions throw before anything is written.
  const fs::path bad = scratch("convert_bad");
  mlkv::ConvertSpec b;
  b.kv_heads = 3;
  EXPECT_THROW(mlkv::convert(kModel, bad.string(), b), mlkv::Error);
  b = {};
  b.merge = "median";
  EXPECT_THROW(mlkv::convert(kModel, bad.string(), b), mlkv::Error);
  b = {};
  b.dtype = "f8";
  EXPECT_THROW(mlkv::convert(kModel, bad.string(), b), mlkv::Error);
  EXPECT_FALSE(fs::exists(bad));
}

TEST(PublicApiEval, FileErrorsAreTyped) {
  if (!have_data()) GTEST_SKIP() << "no shared model";
  const fs::path missing = scratch("missing_model");
  try {
    mlkv::Engine::load(missing.string());
    FAIL() << "loaded a missing model";
  } catch (const mlkv::FileError& e) {
    EXPECT_TRUE(e.not_found()) << e.what();
  }
  // A file that exists but is no model: a plain Error, not a FileError.
  const fs::path text = scratch("not_a_model.txt");
  std::ofstream(text) << "hi";
  try {
    mlkv::Engine::load(text.string());
    FAIL() << "loaded a text file";
  } catch (const mlkv::FileError& e) {
    FAIL() << "a FileError for a file that exists: " << e.what();
  } catch (const mlkv::Error&) {
  }
  fs::remove(text);
  EXPECT_THROW(mlkv::load_tokenizer(missing.string()), mlkv::FileError);
}

}  // namespace
