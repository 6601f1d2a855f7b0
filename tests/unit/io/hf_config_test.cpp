// config.json and generation_config.json against what Hugging Face writes for the two families
// mlkv loads: real configs (every key transformers writes) load; keys that would change the math
// in a way mlkv does not compute are refused by name; keys that change nothing are accepted;
// null means "not set"; eos_token_id may be a list and any of its ids ends a generation;
// transformers 5's rope_parameters / dtype spellings read like the older ones. The key table is
// in docs/FORMAT.md.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/mmap_file.h"
#include "io/hf_config.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Pythia-70m's config.json as transformers 4.4x writes it (with the keys newer versions add).
json pythia() {
  return json::parse(R"({
    "architectures": ["GPTNeoXForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
    "bos_token_id": 0, "classifier_dropout": 0.1, "eos_token_id": 0, "hidden_act": "gelu",
    "hidden_dropout": 0.0, "hidden_size": 512, "initializer_range": 0.02,
    "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
    "partial_rotary_factor": 0.25, "rope_scaling": null, "rope_theta": 10000,
    "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": false,
    "torch_dtype": "float16", "transformers_version": "4.45.0", "use_cache": true,
    "use_parallel_residual": true, "vocab_size": 50304})");
}

// Llama 3.1 8B's config.json.
json llama31() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

// A small Llama with the base-class keys transformers writes for every model.
json small_llama() {
  return json::parse(R"({
    "model_type": "llama", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 256,
    "_name_or_path": "x/y", "return_dict": true, "output_hidden_states": false,
    "output_attentions": false, "torchscript": false, "use_bfloat16": false,
    "tf_legacy_loss": false, "pruned_heads": {}, "chunk_size_feed_forward": 0,
    "is_encoder_decoder": false, "is_decoder": false, "add_cross_attention": false,
    "tie_encoder_decoder": false, "max_length": 20, "min_length": 0, "do_sample": false,
    "early_stopping": false, "num_beams": 1, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "repetition_penalty": 1.0, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
    "tokenizer_class": null, "prefix": null, "pad_token_id": null, "sep_token_id": null,
    "decoder_start_token_id": null, "task_specific_params": null, "problem_type": null,
    "initializer_range": 0.02, "use_cache": true, "pretraining_tp": 1,
    "attention_dropout": 0.0, "auto_map": {}, "_attn_implementation_autoset": true})");
}

ModelConfig parse(const json& j) {
  return parse_hf_config(j.dump(), "config.json");
}

std::string error_of(const json& j) {
  try {
    parse(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

json with(json j, const std::string& key, const json& value) {
  j[key] = value;
  return j;
}

TEST(HfConfigAudit, RealConfigsLoad) {
  const ModelConfig p = parse(pythia());
  EXPECT_EQ(p.family, Family::kGptNeoX);
  EXPECT_EQ(p.n_rot, 16);  // int(64 * 0.25)
  EXPECT_EQ(p.rope_theta, 10000);
  EXPECT_EQ(p.eos_token_ids, (std::vector<int>{0}));
  EXPECT_EQ(p.file_dtype, DType::kF16);
  const ModelConfig l = parse(llama31());
  EXPECT_EQ(l.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(l.bos_token_id, 128000);
  EXPECT_EQ(l.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(l.n_head_kv, 8);
  const ModelConfig s = parse(small_llama());  // base-class keys change nothing
  EXPECT_EQ(s.n_embd, 64);
  EXPECT_TRUE(s.eos_token_ids.empty());
}

// Each key mlkv does not compute, at a value that would change the math, is refused by name;
// at its neutral value (what transformers writes for a model without the feature) it loads.
TEST(HfConfigAudit, MathChangingKeysRefusedByName) {
  struct Case {
    const char* key;
    json bad, neutral;
  };
  const std::vector<Case> cases = {
      {"sliding_window", 128, nullptr},  // smaller than the 256-position context
      {"use_sliding_window", true, false},
      {"qk_norm", true, false},
      {"use_qk_norm", true, false},
      {"qk_layernorm", true, false},
      {"qkv_bias", true, false},
      {"use_qkv_bias", true, false},
      {"add_qkv_bias", true, false},
      {"bias", true, false},
      {"add_bias_linear", true, false},
      {"clip_qkv", 8.0, nullptr},
      {"attn_logit_softcapping", 50.0, nullptr},
      {"final_logit_softcapping", 30.0, nullptr},
      {"query_pre_attn_scalar", 256, nullptr},
      {"attention_multiplier", 0.0078125, nullptr},
      {"embedding_multiplier", 12.0, 1.0},
      {"residual_multiplier", 0.22, 1.0},
      {"logits_scaling", 8.0, 1.0},
      {"logit_scale", 0.0625, nullptr},
      {"quantization_config", {{"quant_method", "gptq"}, {"bits", 4}}, nullptr},
      {"num_experts", 8, nullptr},
      {"num_local_experts", 8, 0},
      {"n_routed_experts", 64, nullptr},
      {"alibi", true, false},
      {"position_embedding_type", "alibi", "rope"},
      {"layer_types", {"sliding_attention", "full_attention"}, {"full_attention", "full_attention"}},
      {"use_parallel_residual", true, false},   // a gpt_neox key in a llama config
      {"rotary_pct", 0.5, nullptr},             // likewise
      {"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}, {{"rope_type", "default"}}},
      {"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}, nullptr},
      {"rope_scaling", {{"rope_type", "longrope"}, {"factor", 2.0}}, json::object()},
      {"partial_rotary_factor", 2.5, 1.0},
  };
  for (const Case& c : cases) {
    const std::string e = error_of(with(small_llama(), c.key, c.bad));
    EXPECT_NE(e.find(c.key), std::string::npos) << c.key << ": " << e;
    EXPECT_EQ(error_of(with(small_llama(), c.key, c.neutral)), "(accepted)") << c.key;
  }
  // A window as long as the context changes nothing; so does a window switched off (Qwen2).
  EXPECT_EQ(error_of(with(small_llama(), "sliding_window", 256)), "(accepted)");
  json qwen_style = with(small_llama(), "sliding_window", 32);
  qwen_style["use_sliding_window"] = false;
  qwen_style["max_window_layers"] = 2;
  EXPECT_EQ(error_of(qwen_style), "(accepted)");
  // gpt_neox: the MLP always has biases; the rotary fraction spelled twice must agree.
  EXPECT_NE(error_of(with(pythia(), "mlp_bias", false)).find("'mlp_bias'"), std::string::npos);
  EXPECT_EQ(error_of(with(pythia(), "mlp_bias", true)), "(accepted)");
  EXPECT_NE(error_of(with(pythia(), "partial_rotary_factor", 0.5))
                .find("'rotary_pct' (0.25) and 'partial_rotary_factor' (0.5) disagree"),
            std::string::npos);
  EXPECT_NE(error_of(with(pythia(), "rope_theta", 500000))
                .find("'rotary_emb_base' (10000) and 'rope_theta' (500000) disagree"),
            std::string::npos);
  EXPECT_NE(error_of(with(pythia(), "use_key_value_mlp", true)).find("use_key_value_mlp"),
            std::string::npos);
}

// Null is "not set", as transformers reads None, wherever its config classes allow it.
TEST(HfConfigAudit, NullsWhereTransformersAllowsThem) {
  json j = small_llama();
  for (const char* key : {"num_key_value_heads", "head_dim", "rope_scaling", "rope_parameters",
                          "sliding_window", "pad_token_id", "torch_dtype", "dtype",
                          "pretraining_tp", "attention_dropout", "quantization_config",
                          "layer_types", "rope_theta", "partial_rotary_factor",
                          "tie_word_embeddings", "max_position_embeddings"}) {
    j[key] = nullptr;
  }
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = nullptr;
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.n_embd_head, 16);
  EXPECT_EQ(c.n_rot, 16);
  EXPECT_EQ(c.rope_theta, 10000);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  // gpt_neox: a null eos is none, not the preset's 0.
  EXPECT_TRUE(parse(with(pythia(), "eos_token_id", nullptr)).eos_token_ids.empty());
  EXPECT_EQ(parse(with(pythia(), "bos_token_id", nullptr)).bos_token_id, -1);
  // Required keys are still required.
  EXPECT_NE(error_of(with(small_llama(), "vocab_size", nullptr)).find("missing required key 'vocab_size'"),
            std::string::npos);
}

TEST(HfConfigEos, IntListNullAndBadValues) {
  auto eos = [](const json& v) { return parse(with(small_llama(), "eos_token_id", v)).eos_token_ids; };
  EXPECT_EQ(eos(7), (std::vector<int>{7}));
  EXPECT_EQ(eos({2, 75, 9}), (std::vector<int>{2, 75, 9}));
  EXPECT_TRUE(eos(json::array()).empty());
  EXPECT_TRUE(eos(-1).empty());
  const ModelConfig c = parse(with(small_llama(), "eos_token_id", {2, 75}));
  EXPECT_EQ(c.eos_token_id(), 2);
  EXPECT_TRUE(c.is_eos(2));
  EXPECT_TRUE(c.is_eos(75));
  EXPECT_FALSE(c.is_eos(3));
  for (const json& bad : {json("2"), json({1, -3}), json({1, "a"}), json({{"id", 1}}), json(-2)}) {
    EXPECT_NE(error_of(with(small_llama(), "eos_token_id", bad)).find("'eos_token_id' must be a token id"),
              std::string::npos)
        << bad.dump();
  }
  EXPECT_NE(error_of(with(small_llama(), "eos_token_id", {2, 100})).find("eos_token_id 100 is outside the vocabulary"),
            std::string::npos);
}

// Written back as transformers spells it: one id an int, several a list; read back the same.
TEST(HfConfigEos, WrittenBackFaithfully) {
  ModelConfig c = parse(with(small_llama(), "eos_token_id", {2, 75}));
  json out = json::parse(hf_config_to_json(c));
  EXPECT_EQ(out["eos_token_id"], json({2, 75}));
  EXPECT_EQ(parse_hf_config(hf_config_to_json(c), "y").eos_token_ids, c.eos_token_ids);
  c.eos_token_ids = {5};
  out = json::parse(hf_config_to_json(c));
  EXPECT_EQ(out["eos_token_id"], json(5));
  c.eos_token_ids.clear();
  out = json::parse(hf_config_to_json(c));
  EXPECT_TRUE(out.contains("eos_token_id") && out["eos_token_id"].is_null());
  EXPECT_TRUE(parse_hf_config(hf_config_to_json(c), "y").eos_token_ids.empty());
}

// "No BOS" / "no EOS" survive a round trip in every family, including those whose default has one
// (GPT-NeoX: BOS 0, EOS 0): written as null, never left out (found by hf_config_fuzz: a config with
// "bos_token_id": -1 read back with BOS 0).
TEST(HfConfigEos, NoneSurvivesRoundTripInEveryFamily) {
  for (const json& base : {small_llama(), pythia()}) {
    for (const json& none : {json(-1), json(nullptr), json::array()}) {
      json j = base;
      j["bos_token_id"] = none;
      j["eos_token_id"] = none;
      const ModelConfig c = parse(j);
      ASSERT_EQ(c.bos_token_id, -1) << j.dump();
      ASSERT_TRUE(c.eos_token_ids.empty()) << j.dump();
      const std::string text = hf_config_to_json(c);
      const json out = json::parse(text);
      EXPECT_TRUE(out["bos_token_id"].is_null()) << text;
      EXPECT_TRUE(out["eos_token_id"].is_null()) << text;
      const ModelConfig d = parse_hf_config(text, "round trip");
      EXPECT_EQ(d.bos_token_id, -1) << text;
      EXPECT_TRUE(d.eos_token_ids.empty()) << text;
    }
    // An id is kept as it is, 0 included.
    json j = base;
    j["bos_token_id"] = 0;
    j["eos_token_id"] = 0;
    const ModelConfig d = parse_hf_config(hf_config_to_json(parse(j)), "round trip");
    EXPECT_EQ(d.bos_token_id, 0);
    EXPECT_EQ(d.eos_token_ids, std::vector<int>{0});
  }
}

// generation_config.json's ids replace config.json's (transformers' generate() reads them
// there); its other keys are not read; a bad one is an error naming it.
TEST(HfConfigEos, GenerationConfigWins) {
  ModelConfig c = parse(with(small_llama(), "eos_token_id", 2));
  apply_generation_config(R"({"bos_token_id": 1, "eos_token_id": [2, 75], "temperature": 0.6,
                              "top_p": 0.9, "do_sample": true, "transformers_version": "4.43"})",
                          "generation_config.json", &c);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{2, 75}));
  EXPECT_EQ(c.bos_token_id, 1);
  apply_generation_config(R"({"pad_token_id": 0})", "g", &c);  // no ids: config's stay
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{2, 75}));
  auto gen_error = [&](const std::string& text) {
    ModelConfig d = c;
    try {
      apply_generation_config(text, "gen.json", &d);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(gen_error("{oops").find("gen.json: not valid JSON"), std::string::npos);
  EXPECT_NE(gen_error("[1]").find("gen.json: expected a JSON object"), std::string::npos);
  EXPECT_NE(gen_error(R"({"eos_token_id": [2, 500]})").find("gen.json: config: eos_token_id 500"),
            std::string::npos);
  EXPECT_NE(gen_error(R"({"eos_token_id": "x"})").find("gen.json: 'eos_token_id' must be a token id"),
            std::string::npos);

  // load_model_config reads both files of a folder.
  const fs::path dir = fs::temp_directory_path() / "mlkv_hf_config_test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_text_file((dir / "config.json").string(), with(small_llama(), "eos_token_id", 2).dump());
  EXPECT_EQ(load_model_config(dir.string()).eos_token_ids, (std::vector<int>{2}));
  write_text_file((dir / "generation_config.json").string(), R"({"eos_token_id": [2, 75]})");
  EXPECT_EQ(load_model_config(dir.string()).eos_token_ids, (std::vector<int>{2, 75}));
  write_text_file((dir / "generation_config.json").string(), R"({"eos_token_id": 9})");
  EXPECT_EQ(load_model_config(dir.string()).eos_token_ids, (std::vector<int>{9}));
}

// transformers 5 writes rope_theta / partial_rotary_factor / the scaling inside rope_parameters
// and "dtype" for "torch_dtype": the same model either way; spellings that disagree are refused.
TEST(HfConfigRope, Transformers5Spellings) {
  json v5 = llama31();
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  v5.erase("torch_dtype");
  v5["dtype"] = "bfloat16";
  v5["rope_parameters"] = {{"rope_type", "llama3"},
                           {"rope_theta", 500000.0},
                           {"factor", 8.0},
                           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 8192}};
  const ModelConfig a = parse(v5), b = parse(llama31());
  EXPECT_EQ(a.rope_inv_freq(), b.rope_inv_freq());
  EXPECT_EQ(a.file_dtype, DType::kBF16);

  json neox5 = pythia();
  for (const char* k : {"rotary_pct", "rotary_emb_base", "rope_theta", "partial_rotary_factor"})
    neox5.erase(k);
  neox5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 40000}, {"partial_rotary_factor", 0.5}};
  const ModelConfig n = parse(neox5);
  EXPECT_EQ(n.n_rot, 32);
  EXPECT_EQ(n.rope_theta, 40000);
  EXPECT_EQ(n.rope_scaling.type, RopeScaling::Type::kNone);

  json clash = llama31();
  clash["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  EXPECT_NE(error_of(clash).find("rope_scaling and rope_parameters describe different rope scalings"),
            std::string::npos);
  clash["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 10000.0}, {"factor", 8.0},
                              {"original_max_position_embeddings", 8192}};
  EXPECT_NE(error_of(clash).find("'rope_theta' (500000) and 'rope_parameters.rope_theta' (10000) disagree"),
            std::string::npos);
  json per_layer = small_llama();
  per_layer["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e6}}},
                                  {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  EXPECT_NE(error_of(per_layer).find("rope_parameters per layer type"), std::string::npos);
  EXPECT_NE(error_of(with(small_llama(), "rope_parameters", {{"rope_type", "yarn"}, {"factor", 4}}))
                .find("rope_parameters type 'yarn' is not supported"),
            std::string::npos);
  EXPECT_NE(error_of(with(small_llama(), "rope_theta", -1)).find("must be positive"), std::string::npos);
}

// Sizes no real model has are refused before anything is sized from them.
TEST(HfConfigAudit, ImplausibleSizes) {
  EXPECT_NE(error_of(with(small_llama(), "num_hidden_layers", 1 << 30)).find("implausibly large"),
            std::string::npos);
  json huge = small_llama();
  huge["hidden_size"] = 1 << 28;
  huge["vocab_size"] = 1 << 28;
  EXPECT_NE(error_of(huge).find("implausibly many"), std::string::npos);
}

}  // namespace
}  // namespace mlkv
