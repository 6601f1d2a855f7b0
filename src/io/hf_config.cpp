#include "io/hf_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"

namespace mlkv {

using json = nlohmann::json;

namespace {

// Typed access with error messages that name the key and the file.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int get_int(const char* key) const {
    MLKV_REQUIRE(has(key), where_, ": missing required key '", key, "'");
    return as_int(key);
  }
  int get_int(const char* key, int def) const { return has(key) ? as_int(key) : def; }

  double get_double(const char* key, double def) const {
    if (!has(key)) return def;
    MLKV_REQUIRE(j_[key].is_number(), where_, ": '", key, "' must be a number");
    return j_[key].get<double>();
  }
  bool get_bool(const char* key, bool def) const {
    if (!has(key)) return def;
    MLKV_REQUIRE(j_[key].is_boolean(), where_, ": '", key, "' must be true or false");
    return j_[key].get<bool>();
  }
  std::string get_string(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    MLKV_REQUIRE(j_[key].is_string(), where_, ": '", key, "' must be a string");
    return j_[key].get<std::string>();
  }
  // eos/bos ids may be an int or a list of ints (Llama 3); the first is used.
  int get_token_id(const char* key, int def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int>();
    MLKV_REQUIRE(v.is_number_integer(), where_, ": '", key, "' must be a token id");
    return v.get<int>();
  }
  const json& raw(const char* key) const { return j_[key]; }
  const std::string& where() const { return where_; }

 private:
  int as_int(const char* key) const {
    const json& v = j_[key];
    MLKV_REQUIRE(v.is_number_integer(), where_, ": '", key, "' must be an integer");
    const auto x = v.get<int64_t>();
    MLKV_REQUIRE(x >= -1 && x <= (int64_t{1} << 30), where_, ": '", key, "' = ", x,
                 " is out of range");
    return static_cast<int>(x);
  }
  const json& j_;
  std::string where_;
};

// rope_scaling: {"rope_type" (or the older "type"): "linear" | "llama3", "factor", ...}. Scalings
// that depend on the sequence length at run time (dynamic, yarn, longrope) are refused by name.
RopeScaling read_rope_scaling(const json& v, const std::string& where) {
  MLKV_REQUIRE(v.is_object(), where, ": rope_scaling must be an object");
  const ConfigReader r(v, where + " rope_scaling");
  const std::string type = r.get_string("rope_type", r.get_string("type", ""));
  RopeScaling s;
  if (type == "default") return s;
  if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    s.low_freq_factor = r.get_double("low_freq_factor", 1.0);
    s.high_freq_factor = r.get_double("high_freq_factor", 4.0);
    s.original_max_position_embeddings = r.get_int("original_max_position_embeddings");
  } else {
    fail(where, ": rope_scaling type '", type, "' is not supported (linear, llama3)");
  }
  MLKV_REQUIRE(r.has("factor"), where, ": rope_scaling needs a 'factor'");
  s.factor = r.get_double("factor", 1.0);
  return s;
}

}  // namespace

ModelConfig parse_hf_config(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(where, ": not valid JSON: ", e.what());
  }
  MLKV_REQUIRE(j.is_object(), where, ": expected a JSON object");
  ConfigReader r(j, where);
  const std::string model_type = r.get_string("model_type", "");
  ModelConfig c;
  if (model_type == "gpt_neox") {
    c = preset_gpt_neox();
  } else if (model_type == "llama" || model_type == "mistral") {
    c = preset_llama();
  } else {
    fail(where, ": model_type '", model_type,
         "' is not supported (supported: gpt_neox, llama, mistral)");
  }

  c.n_vocab = r.get_int("vocab_size");
  c.n_embd = r.get_int("hidden_size");
  c.n_layer = r.get_int("num_hidden_layers");
  c.n_head = r.get_int("num_attention_heads");
  c.n_ff = r.get_int("intermediate_size");
  c.n_ctx = r.get_int("max_position_embeddings", 2048);
  c.n_head_kv = r.get_int("num_key_value_heads", c.n_head);
  MLKV_REQUIRE(c.n_head > 0 && c.n_embd > 0, where,
               ": hidden_size and num_attention_heads must be positive");
  c.n_embd_head = r.get_int("head_dim", c.n_embd % c.n_head == 0 ? c.n_embd / c.n_head : 0);
  MLKV_REQUIRE(c.n_embd_head > 0, where, ": hidden_size (", c.n_embd,
               ") is not divisible by num_attention_heads (", c.n_head, ")");
  c.bos_token_id = r.get_token_id("bos_token_id", c.bos_token_id);
  c.eos_token_id = r.get_token_id("eos_token_id", c.eos_token_id);

  const std::string act =
      r.get_string("hidden_act", c.family == Family::kGptNeoX ? "gelu" : "silu");
  if (c.family == Family::kGptNeoX) {
    const double pct = r.get_double("rotary_pct", 0.25);
    MLKV_REQUIRE(pct >= 0 && pct <= 1, where, ": rotary_pct must be in [0, 1]");
    // Same truncation as the reference implementation: int(head_size * rotary_pct).
    c.n_rot = static_cast<int>(static_cast<double>(c.n_embd_head) * pct);
    c.rope_theta = r.get_double("rotary_emb_base", r.get_double("rope_theta", 10000));
    c.norm_eps = r.get_double("layer_norm_eps", 1e-5);
    c.parallel_residual = r.get_bool("use_parallel_residual", true);
    c.tied_embeddings = r.get_bool("tie_word_embeddings", false);
    c.attn_bias = r.get_bool("attention_bias", true);
    if (act == "gelu") {
      c.gelu_tanh = false;
    } else if (act == "gelu_new" || act == "gelu_fast" || act == "gelu_pytorch_tanh") {
      c.gelu_tanh = true;
    } else {
      fail(where, ": hidden_act '", act, "' is not supported for gpt_neox (gelu, gelu_new)");
    }
    MLKV_REQUIRE(!r.get_bool("use_key_value_mlp", false), where,
                 ": use_key_value_mlp (K/V projected by an MLP) is not supported");
  } else {
    const double partial = r.get_double("partial_rotary_factor", 1.0);
    c.n_rot = static_cast<int>(static_cast<double>(c.n_embd_head) * partial);
    c.rope_theta = r.get_double("rope_theta", 10000);
    c.norm_eps = r.get_double("rms_norm_eps", 1e-6);
    c.tied_embeddings = r.get_bool("tie_word_embeddings", false);
    c.attn_bias = r.get_bool("attention_bias", false);
    c.mlp_bias = r.get_bool("mlp_bias", false);
    MLKV_REQUIRE(act == "silu", where, ": hidden_act '", act,
                 "' is not supported for llama (silu)");
  }
  c.n_rot -= c.n_rot % 2;
  if (r.has("rope_scaling")) c.rope_scaling = read_rope_scaling(r.raw("rope_scaling"), where);

  // --- cross-layer sharing ---
  // An explicit kv_source wins; num_key_value_layers next to it must then agree with it.
  const bool has_layers = r.has("num_key_value_layers");
  const int n_kv_layers = r.get_int("num_key_value_layers", c.n_layer);
  KvSharingSpec spec;
  spec.n_layer = c.n_layer;
  spec.origin = KvSpecOrigin::kConfig;
  if (r.has("kv_source")) {
    const json& ks = r.raw("kv_source");
    MLKV_REQUIRE(ks.is_array(), where, ": kv_source must be a list of layer indices");
    for (const auto& v : ks) {
      MLKV_REQUIRE(v.is_number_integer(), where, ": kv_source entries must be integers");
      spec.kv_source.push_back(v.get<int>());
    }
    MLKV_REQUIRE(!spec.kv_source.empty(), where, ": kv_source is empty");
  } else if (has_layers) {
    spec.kv_layers = n_kv_layers;  // 0 means "not given": the check below refuses it
  }
  try {
    c.kv_source = build_kv_source(spec);
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
  c.validate();
  if (has_layers) {
    MLKV_REQUIRE(c.n_kv_layers() == n_kv_layers, where, ": num_key_value_layers is ", n_kv_layers,
                 " but kv_source has ", c.n_kv_layers(), " owner layers");
  }
  if (r.has("kv_share_rope")) {
    c.share_rope =
        parse_share_rope(r.get_string("kv_share_rope", "post"), where + ": kv_share_rope");
  } else {
    // The MLKV authors' gpt_neox checkpoints: num_key_value_layers without kv_share_rope were
    // trained with consumers reading the owner's keys before rotary.
    c.share_rope =
        (c.family == Family::kGptNeoX && has_layers) ? KvShareRope::kPre : KvShareRope::kPost;
  }

  const std::string dt = r.get_string("torch_dtype", "float32");
  if (dt == "bfloat16") {
    c.file_dtype = DType::kBF16;
  } else if (dt == "float16") {
    c.file_dtype = DType::kF16;
  } else {
    c.file_dtype = DType::kF32;
  }
  return c;
}

ModelConfig load_hf_config(const std::string& path) {
  return parse_hf_config(read_text_file(path), path);
}

std::string hf_config_to_json(const ModelConfig& c) {
  json j;
  const char* dt = c.file_dtype == DType::kBF16  ? "bfloat16"
                   : c.file_dtype == DType::kF16 ? "float16"
                                                 : "float32";
  j["vocab_size"] = c.n_vocab;
  j["hidden_size"] = c.n_embd;
  j["num_hidden_layers"] = c.n_layer;
  j["num_attention_heads"] = c.n_head;
  j["num_key_value_heads"] = c.n_head_kv;
  j["intermediate_size"] = c.n_ff;
  j["max_position_embeddings"] = c.n_ctx;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["torch_dtype"] = dt;
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0) j["eos_token_id"] = c.eos_token_id;
  if (c.n_embd_head * c.n_head != c.n_embd) j["head_dim"] = c.n_embd_head;
  if (c.family == Family::kGptNeoX) {
    j["model_type"] = "gpt_neox";
    j["architectures"] = {"GPTNeoXForCausalLM"};
    // Readers compute int(head_size * rotary_pct): pick the pct that truncates back to n_rot.
    double pct = static_cast<double>(c.n_rot) / c.n_embd_head;
    while (static_cast<int>(static_cast<double>(c.n_embd_head) * pct) < c.n_rot) {
      pct = std::nextafter(pct, 2.0);
    }
    j["rotary_pct"] = pct;
    j["rotary_emb_base"] = c.rope_theta;
    j["layer_norm_eps"] = c.norm_eps;
    j["use_parallel_residual"] = c.parallel_residual;
    j["hidden_act"] = c.gelu_tanh ? "gelu_new" : "gelu";
    j["attention_bias"] = c.attn_bias;
  } else {
    j["model_type"] = "llama";
    j["architectures"] = {"LlamaForCausalLM"};
    j["rope_theta"] = c.rope_theta;
    j["rms_norm_eps"] = c.norm_eps;
    j["hidden_act"] = "silu";
    j["attention_bias"] = c.attn_bias;
    j["mlp_bias"] = c.mlp_bias;
    if (c.n_rot != c.n_embd_head) {
      j["partial_rotary_factor"] = static_cast<double>(c.n_rot) / c.n_embd_head;
    }
  }
  if (c.rope_scaling.type != RopeScaling::Type::kNone) {
    const RopeScaling& s = c.rope_scaling;
    json rs = {{"factor", s.factor}};
    if (s.type == RopeScaling::Type::kLinear) {
      rs["rope_type"] = "linear";
    } else {
      rs["rope_type"] = "llama3";
      rs["low_freq_factor"] = s.low_freq_factor;
      rs["high_freq_factor"] = s.high_freq_factor;
      rs["original_max_position_embeddings"] = s.original_max_position_embeddings;
    }
    j["rope_scaling"] = rs;
  }
  j["num_key_value_layers"] = c.n_kv_layers();
  j["kv_source"] = c.kv_source;
  j["kv_share_rope"] = share_rope_name(c.share_rope);
  return j.dump(2) + "\n";
}

}  // namespace mlkv
