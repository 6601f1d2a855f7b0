// Model folders: save/load round trips (fused and split GPT-NeoX layouts, f32/bf16), bad
// checkpoints rejected with errors naming the tensor (overlapping tensors, a config whose sizes
// lie), tied models that also ship the output matrix, and generation_config.json's EOS ids.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/check.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;
using testing::random_weights;
using testing::tiny_config;

std::string tmp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / "mlkv_hf_model_test" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::vector<int32_t> toks(int n, int vocab) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((i * 37 + 11) % vocab);
  return t;
}

void expect_load_error(const std::string& dir, const std::string& needle) {
  try {
    load_model(dir);
    FAIL() << "loaded " << dir;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(HfModel, FusedAndSplitLayoutsAreBitIdentical) {
  const ModelConfig c = tiny_config(Family::kGptNeoX, 3, 32, 4, 4, {}, KvShareRope::kPost);
  const ModelWeights w = random_weights(c, 4);
  const std::string fused = tmp_dir("fused"), split = tmp_dir("split");
  save_model(fused, c, w, {DType::kF32, true});
  save_model(split, c, w, {DType::kF32, false});
  EXPECT_NE(SafeTensorsSet::open_dir(fused).find("gpt_neox.layers.0.attention.query_key_value.weight"), nullptr);
  EXPECT_NE(SafeTensorsSet::open_dir(split).find("gpt_neox.layers.0.attention.key.weight"), nullptr);
  Model a = Model(load_model(fused)), b = Model(load_model(split));
  LoadedModel lm{c, w};
  Model orig(std::move(lm));
  const auto t = toks(20, c.n_vocab);
  const auto ref = score_tokens(orig, t, false);
  EXPECT_EQ(score_tokens(a, t, false), ref);
  EXPECT_EQ(score_tokens(b, t, false), ref);
}

TEST(HfModel, SharedModelRoundTripBf16) {
  const ModelConfig c = tiny_config(Family::kLlama, 4, 32, 4, 2, {0, 0, 2, 2}, KvShareRope::kPre);
  const ModelWeights w = random_weights(c, 5);
  const std::string dir = tmp_dir("bf16");
  save_model(dir, c, w, {DType::kBF16, true});
  LoadedModel m = load_model(dir);
  EXPECT_EQ(m.config.kv_source, c.kv_source);
  EXPECT_EQ(m.config.share_rope, KvShareRope::kPre);
  EXPECT_TRUE(m.weights.layers[1].wk.empty());  // a consumer has no K/V weights
  // bf16 keeps 8 bits of mantissa: relative error <= 2^-8.
  for (int64_t i = 0; i < w.tok_embd.numel(); ++i) {
    EXPECT_NEAR(m.weights.tok_embd[i], w.tok_embd[i], std::fabs(w.tok_embd[i]) * 0.0040f);
  }
}

TEST(HfModel, BadCheckpoints) {
  const ModelConfig c = tiny_config(Family::kLlama, 2, 32, 4, 4, {}, KvShareRope::kPost);
  const ModelWeights w = random_weights(c, 6);
  const std::string dir = tmp_dir("bad");
  save_model(dir, c, w);
  const std::string st = dir + "/model.safetensors";

  // Missing tensor: rewrite without one.
  {
    std::vector<TensorToWrite> t;
    for (const auto& [name, ten] : list_params(c, w)) {
      if (name != "model.layers.1.mlp.up_proj.weight") t.push_back({name, ten->shape(), ten->data(), DType::kF32});
    }
    write_safetensors(st, t);
    expect_load_error(dir, "missing tensor 'model.layers.1.mlp.up_proj.weight'");
  }
  // Wrong shape.
  {
    std::vector<TensorToWrite> t;
    for (const auto& [name, ten] : list_params(c, w)) {
      std::vector<int64_t> shape = ten->shape();
      if (name == "model.layers.0.self_attn.q_proj.weight") shape = {shape[1], shape[0] / 2, 2};
      t.push_back({name, shape, ten->data(), DType::kF32});
    }
    write_safetensors(st, t);
    expect_load_error(dir, "tensor 'model.layers.0.self_attn.q_proj.weight'");
  }
  // K/V weights in a layer the config says shares: config and weights disagree.
  {
    ModelConfig shared = c;
    shared.kv_source = {0, 0};
    write_text_file(dir + "/config.json", hf_config_to_json(shared));
    save_model(tmp_dir("unused"), c, w);
    std::vector<TensorToWrite> t;
    for (const auto& [name, ten] : list_params(c, w)) t.push_back({name, ten->shape(), ten->data(), DType::kF32});
    write_safetensors(st, t);
    expect_load_error(dir, "does not own K/V");
  }
  // Unknown dtype in an otherwise fine file is reported by the reader.
  {
    write_text_file(dir + "/config.json", hf_config_to_json(c));
    std::ofstream f(st, std::ios::binary | std::ios::trunc);
    const std::string h = R"({"model.embed_tokens.weight":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}})";
    const uint64_t n = h.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << h << 'x';
  }
  expect_load_error(dir, "unknown dtype 'F8'");
  fs::remove(st);
  expect_load_error(dir, "no model.safetensors");
  expect_load_error(tmp_dir("empty") + "/nothing", "neither a model folder");
}

TEST(HfModel, ShardedCheckpoint) {
  const ModelConfig c = tiny_config(Family::kLlama, 2, 32, 4, 4, {}, KvShareRope::kPost);
  const ModelWeights w = random_weights(c, 7);
  const std::string dir = tmp_dir("sharded");
  write_text_file(dir + "/config.json", hf_config_to_json(c));
  std::vector<TensorToWrite> a, b;
  std::string map;
  int i = 0;
  for (const auto& [name, ten] : list_params(c, w)) {
    const bool first = (i++ % 2) == 0;
    (first ? a : b).push_back({name, ten->shape(), ten->data(), DType::kF32});
    if (!map.empty()) map += ',';
    map += cat("\"", name, "\":\"", first ? "m-1.safetensors" : "m-2.safetensors", "\"");
  }
  write_safetensors(dir + "/m-1.safetensors", a);
  write_safetensors(dir + "/m-2.safetensors", b);
  write_text_file(dir + "/model.safetensors.index.json", "{\"weight_map\":{" + map + "}}");
  Model m = Model(load_model(dir));
  LoadedModel lm{c, w};
  Model orig(std::move(lm));
  const auto t = toks(12, c.n_vocab);
  EXPECT_EQ(score_tokens(m, t, false), score_tokens(orig, t, false));
  // An index naming a shard that lacks the tensor.
  write_text_file(dir + "/model.safetensors.index.json",
                  "{\"weight_map\":{" + map + ",\"extra.weight\":\"m-1.safetensors\"}}");
  expect_load_error(dir, "lacks it");
}

TEST(Llama2c, ImportsTheShippedModel) {
  const std::string path = std::string(MLKV_SHARED_DIR) + "/data/models/aidreams260K/aidreams260K.bin";
  if (!fs::exists(path)) GTEST_SKIP() << "shared data not found";
  LoadedModel m = load_model(path);
  EXPECT_EQ(m.config.n_layer, 4);
  EXPECT_EQ(m.config.n_embd, 64);
  EXPECT_EQ(m.config.n_vocab, 512);
  EXPECT_TRUE(m.config.tied_embeddings);
  Model model(std::move(m));
  // Greedy decoding of a trained model is confident: the generated continuation scores far
  // better than a shuffled one.
  std::vector<GenerateRequest> req = {{{1}, 40, {}}};
  GenerateOptions opt;
  const auto out = generate(model, req, opt);
  std::vector<int32_t> seq = {1};
  seq.insert(seq.end(), out[0].tokens.begin(), out[0].tokens.end());
  const auto lp = score_tokens(model, seq, false);
  double mean = 0;
  for (float v : lp) mean += v;
  mean /= static_cast<double>(lp.size());
  EXPECT_GT(mean, -1.0) << "greedy text should be likely under the model";
  std::vector<int32_t> shuffled = seq;
  std::mt19937 rng(1);
  std::shuffle(shuffled.begin() + 1, shuffled.end(), rng);
  const auto lp2 = score_tokens(model, shuffled, false);
  double mean2 = 0;
  for (float v : lp2) mean2 += v;
  EXPECT_LT(mean2 / static_cast<double>(lp2.size()), mean - 1.0);
}

// Rewrites a safetensors file's header with `mutate`, keeping its data buffer as it is.
template <typename F>
void rewrite_header(const std::string& path, F mutate) {
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  nlohmann::json h = nlohmann::json::parse(header);
  mutate(h);
  const std::string text = h.dump();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t m = text.size();
  out.write(reinterpret_cast<const char*>(&m), 8);
  out << text << data;
}

std::vector<TensorToWrite> tensors_of(const ModelConfig& c, const ModelWeights& w) {
  std::vector<TensorToWrite> t;
  for (const auto& [name, ten] : list_params(c, w)) t.push_back({name, ten->shape(), ten->data(), DType::kF32});
  return t;
}

// The issue's file: lm_head.weight with model.embed_tokens.weight's data_offsets. It used to
// load with the output head silently equal to the embedding; the tensors no longer tile the
// buffer, and the error names both.
TEST(HfModel, OverlappingTensorsRefused) {
  const ModelConfig c = tiny_config(Family::kLlama, 2, 32, 4, 4, {}, KvShareRope::kPost);
  const ModelWeights w = random_weights(c, 8);
  const std::string dir = tmp_dir("overlap");
  save_model(dir, c, w);
  std::vector<TensorToWrite> t;
  for (const auto& x : tensors_of(c, w)) {
    if (x.name != "lm_head.weight") t.push_back(x);
  }
  write_safetensors(dir + "/model.safetensors", t);
  rewrite_header(dir + "/model.safetensors", [](nlohmann::json& h) {
    h["lm_head.weight"] = h["model.embed_tokens.weight"];
  });
  expect_load_error(dir, "tensors 'lm_head.weight' (bytes [0, 7808)) and 'model.embed_tokens.weight' (bytes [0, 7808)) overlap");
  // The same bytes named twice while the head's own bytes stay unclaimed: still an overlap.
  save_model(dir, c, w);
  rewrite_header(dir + "/model.safetensors", [](nlohmann::json& h) {
    h["lm_head.weight"]["data_offsets"] = h["model.embed_tokens.weight"]["data_offsets"];
  });
  expect_load_error(dir, "overlap");
  // A config whose sizes lie is refused before anything of its size is allocated.
  save_model(dir, c, w);
  ModelConfig big = c;
  big.n_ff = 1 << 20;
  write_text_file(dir + "/config.json", hf_config_to_json(big));
  expect_load_error(dir, "the config calls for");
}

// A tied model whose file also holds the output matrix (some exports write the tied tensor):
// transformers loads it, and so does mlkv - silently when it is the embedding; when it differs,
// the embedding is used (tie_word_embeddings says so) and the caller is told which.
TEST(HfModel, TiedModelShippingTheOutputMatrix) {
  for (Family fam : {Family::kLlama, Family::kGptNeoX}) {
    ModelConfig c = tiny_config(fam, 2, 32, 4, 4, {}, KvShareRope::kPost);
    c.tied_embeddings = true;
    const ModelWeights w = random_weights(c, 9);
    const std::string out_name = fam == Family::kLlama ? "lm_head.weight" : "embed_out.weight";
    const std::string embed_name =
        fam == Family::kLlama ? "model.embed_tokens.weight" : "gpt_neox.embed_in.weight";
    const std::string dir = tmp_dir("tied");
    save_model(dir, c, w);
    LoadedModel lm{c, w};
    Model orig(std::move(lm));
    const auto t = toks(16, c.n_vocab);
    const auto ref = score_tokens(orig, t, false);
    std::vector<std::string> warnings;
    auto warn = [&](const std::string& m) { warnings.push_back(m); };

    auto with_output = [&](const Tensor& out) {
      auto tensors = tensors_of(c, w);
      tensors.push_back({out_name, out.shape(), out.data(), DType::kF32});
      write_safetensors(dir + "/model.safetensors", tensors);
    };
    with_output(w.tok_embd);  // a copy of the embedding
    {
      Model m(load_model(dir, warn));
      EXPECT_TRUE(warnings.empty()) << warnings[0];
      EXPECT_EQ(score_tokens(m, t, false), ref);
    }
    Tensor other = w.tok_embd;
    other[3] += 1.0f;
    with_output(other);
    {
      Model m(load_model(dir, warn));
      ASSERT_EQ(warnings.size(), 1u);
      EXPECT_NE(warnings[0].find("'" + out_name + "' differs from the embedding '" + embed_name +
                                 "' (same shape, other values)"),
                std::string::npos)
          << warnings[0];
      EXPECT_NE(warnings[0].find("using the embedding as the output matrix"), std::string::npos);
      EXPECT_EQ(score_tokens(m, t, false), ref);  // the embedding, not the shipped matrix
    }
    Tensor narrow({c.n_vocab, 8});
    with_output(narrow);
    warnings.clear();
    load_model(dir, warn);
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("(shape [61, 8])"), std::string::npos) << warnings[0];
    // Any other tensor the config does not call for is still refused.
    auto tensors = tensors_of(c, w);
    tensors.push_back({"extra.weight", w.tok_embd.shape(), w.tok_embd.data(), DType::kF32});
    write_safetensors(dir + "/model.safetensors", tensors);
    expect_load_error(dir, "unexpected tensor 'extra.weight'");
  }
}

// generation_config.json next to config.json: its EOS ids are the model's (any of them ends a
// generation); the saved config.json spells several ids as a list.
TEST(HfModel, GenerationConfigEosIds) {
  ModelConfig c = tiny_config(Family::kLlama, 2, 32, 4, 4, {}, KvShareRope::kPost);
  c.eos_token_ids = {2};
  const ModelWeights w = random_weights(c, 10);
  const std::string dir = tmp_dir("genconfig");
  save_model(dir, c, w);
  EXPECT_EQ(load_model(dir).config.eos_token_ids, (std::vector<int>{2}));
  write_text_file(dir + "/generation_config.json", R"({"eos_token_id": [2, 40, 7]})");
  const LoadedModel m = load_model(dir);
  EXPECT_EQ(m.config.eos_token_ids, (std::vector<int>{2, 40, 7}));
  const std::string dir2 = tmp_dir("genconfig2");
  save_model(dir2, m.config, m.weights);
  const std::string text = read_text_file(dir2 + "/config.json");
  EXPECT_EQ(nlohmann::json::parse(text)["eos_token_id"], nlohmann::json({2, 40, 7}));
  write_text_file(dir + "/generation_config.json", R"({"eos_token_id": [2, 99]})");
  expect_load_error(dir, "generation_config.json: config: eos_token_id 99 is outside the vocabulary");
}

}  // namespace
}  // namespace mlkv
