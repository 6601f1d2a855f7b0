#include "io/hf_config.h"

#include <cmath>
#include <filesystem>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"

namespace mlkv {

using json = nlohmann::json;

namespace {

// Typed access with error messages that name the key and the file. A key whose value is null
// counts as absent (transformers treats None as "not set"), except where noted.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  bool present(const char* key) const { return j_.contains(key); }

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
  // Token ids: an int or a list of ints (Llama 3's eos_token_id). Absent: def; null, -1 or []:
  // none (transformers' None).
  std::vector<int> get_token_ids(const char* key, const std::vector<int>& def) const {
    if (!present(key)) return def;
    const json& v = j_[key];
    std::vector<int> ids;
    if (v.is_null()) return ids;
    if (v.is_number_integer() && v.get<int64_t>() == -1) return ids;
    for (const json& id : v.is_array() ? v : json::array({v})) {
      MLKV_REQUIRE(id.is_number_integer() && id.get<int64_t>() >= 0 &&
                       id.get<int64_t>() <= (int64_t{1} << 30),
                   where_, ": '", key, "' must be a token id or a list of token ids (got ",
                   v.dump(), ")");
      ids.push_back(id.get<int>());
    }
    return ids;
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

bool same_scaling(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor &&
         a.original_max_position_embeddings == b.original_max_position_embeddings;
}

// rope_scaling (or transformers 5's rope_parameters, named by `key`): {"rope_type" (or the older
// "type"): "default" | "linear" | "llama3", "factor", ...}. No type and no factor, or type
// "default": no scaling. Scalings mlkv does not compute (dynamic, yarn, longrope, ...) are refused
// by name.
RopeScaling read_rope_scaling(const json& v, const std::string& where, const char* key) {
  MLKV_REQUIRE(v.is_object(), where, ": ", key, " must be an object");
  const ConfigReader r(v, cat(where, " ", key));
  const std::string type = r.get_string("rope_type", r.get_string("type", ""));
  RopeScaling s;
  if (type == "default" || (type.empty() && !r.has("factor"))) return s;
  if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    s.low_freq_factor = r.get_double("low_freq_factor", 1.0);
    s.high_freq_factor = r.get_double("high_freq_factor", 4.0);
    s.original_max_position_embeddings = r.get_int("original_max_position_embeddings");
  } else {
    fail(where, ": ", key, " type '", type, "' is not supported (default, linear, llama3)");
  }
  MLKV_REQUIRE(r.has("factor"), where, ": ", key, " needs a 'factor'");
  s.factor = r.get_double("factor", 1.0);
  return s;
}

// A number that config files spell under several keys (the family's own key, the generic one,
// transformers 5's rope_parameters entry): every spelling present must agree. `names` and
// `values` run in parallel; absent spellings are nullopt.
double agreed(const std::vector<std::string>& names, const std::vector<const json*>& values,
              double def, const std::string& where) {
  std::optional<double> got;
  std::string got_name;
  for (size_t i = 0; i < names.size(); ++i) {
    const json* v = values[i];
    if (v == nullptr || v->is_null()) continue;
    MLKV_REQUIRE(v->is_number(), where, ": '", names[i], "' must be a number");
    const double x = v->get<double>();
    MLKV_REQUIRE(!got || *got == x, where, ": '", got_name, "' (", *got, ") and '", names[i],
                 "' (", x, ") disagree");
    got = x;
    got_name = names[i];
  }
  return got.value_or(def);
}

const json* find_key(const json& j, const char* key) {
  return j.is_object() && j.contains(key) ? &j[key] : nullptr;
}

// Rotary base, rotary fraction and rope scaling, from whichever spellings the file uses:
// gpt_neox rotary_emb_base / rotary_pct, the generic rope_theta / partial_rotary_factor,
// rope_scaling, and transformers 5's rope_parameters {rope_type, rope_theta,
// partial_rotary_factor, factor, ...}.
void read_rope(const json& j, const ConfigReader& r, ModelConfig* c) {
  const std::string& where = r.where();
  const bool neox = c->family == Family::kGptNeoX;
  json params = json::object();
  if (r.has("rope_parameters")) {
    params = r.raw("rope_parameters");
    MLKV_REQUIRE(params.is_object(), where, ": rope_parameters must be an object");
    for (auto it = params.begin(); it != params.end(); ++it) {
      MLKV_REQUIRE(!it.value().is_object(), where, ": rope_parameters per layer type ('",
                   it.key(), "') is not supported (every layer uses one rotary embedding)");
    }
  }
  const json* p_theta = find_key(params, "rope_theta");
  const json* p_partial = find_key(params, "partial_rotary_factor");
  if (neox) {
    c->rope_theta = agreed({"rotary_emb_base", "rope_theta", "rope_parameters.rope_theta"},
                           {find_key(j, "rotary_emb_base"), find_key(j, "rope_theta"), p_theta},
                           10000, where);
  } else {
    c->rope_theta = agreed({"rope_theta", "rope_parameters.rope_theta"},
                           {find_key(j, "rope_theta"), p_theta}, 10000, where);
  }
  MLKV_REQUIRE(c->rope_theta > 0, where, ": the rotary base (rope_theta) must be positive");
  const double partial =
      neox ? agreed({"rotary_pct", "partial_rotary_factor", "rope_parameters.partial_rotary_factor"},
                    {find_key(j, "rotary_pct"), find_key(j, "partial_rotary_factor"), p_partial},
                    0.25, where)
           : agreed({"partial_rotary_factor", "rope_parameters.partial_rotary_factor"},
                    {find_key(j, "partial_rotary_factor"), p_partial}, 1.0, where);
  MLKV_REQUIRE(partial >= 0 && partial <= 1, where, ": ",
               neox ? "rotary_pct" : "partial_rotary_factor", " must be in [0, 1] (got ",
               partial, ")");
  // Same truncation as the reference implementation: int(head_size * fraction), even.
  c->n_rot = static_cast<int>(static_cast<double>(c->n_embd_head) * partial);
  c->n_rot -= c->n_rot % 2;

  std::optional<RopeScaling> scaling;
  if (r.has("rope_scaling")) scaling = read_rope_scaling(r.raw("rope_scaling"), where, "rope_scaling");
  if (r.has("rope_parameters")) {
    const RopeScaling s = read_rope_scaling(params, where, "rope_parameters");
    MLKV_REQUIRE(!scaling || same_scaling(*scaling, s), where,
                 ": rope_scaling and rope_parameters describe different rope scalings");
    scaling = s;
  }
  if (scaling) c->rope_scaling = *scaling;
}

// --- the key audit (docs/FORMAT.md, "config.json keys") ---
// Keys that change the model's function in ways mlkv does not compute. Each is refused by name
// unless it holds its neutral value (null, false, the identity) - what transformers writes for
// a model that does not use the feature.
bool is_null_or_false(const json& v) {
  return v.is_null() || (v.is_boolean() && !v.get<bool>());
}
bool is_null_or_one(const json& v) {
  return v.is_null() || (v.is_number() && v.get<double>() == 1.0);
}
bool is_null_or_zero(const json& v) {
  return v.is_null() || (v.is_number() && v.get<double>() == 0.0) || is_null_or_false(v);
}

struct RefusedKey {
  const char* key;
  bool (*neutral)(const json& v);
  const char* what;  // what it would change
};

const RefusedKey kRefusedKeys[] = {
    {"use_sliding_window", is_null_or_false, "sliding-window attention"},
    {"qk_norm", is_null_or_false, "normalisation of queries and keys"},
    {"use_qk_norm", is_null_or_false, "normalisation of queries and keys"},
    {"qk_layernorm", is_null_or_false, "normalisation of queries and keys"},
    {"qkv_bias", is_null_or_false, "biases on q/k/v only (mlkv: attention_bias, all or none)"},
    {"use_qkv_bias", is_null_or_false, "biases on q/k/v only (mlkv: attention_bias, all or none)"},
    {"add_qkv_bias", is_null_or_false, "biases on q/k/v only (mlkv: attention_bias, all or none)"},
    {"bias", is_null_or_false, "projection biases under another name (mlkv: attention_bias, mlp_bias)"},
    {"add_bias_linear", is_null_or_false, "projection biases under another name (mlkv: attention_bias, mlp_bias)"},
    {"clip_qkv", [](const json& v) { return v.is_null(); }, "clipping of q/k/v"},
    {"attn_logit_softcapping", [](const json& v) { return v.is_null(); }, "soft-capped attention scores"},
    {"final_logit_softcapping", [](const json& v) { return v.is_null(); }, "soft-capped output logits"},
    {"query_pre_attn_scalar", [](const json& v) { return v.is_null(); }, "the attention scale"},
    {"attention_multiplier", [](const json& v) { return v.is_null(); }, "the attention scale"},
    {"embedding_multiplier", is_null_or_one, "scaled embeddings"},
    {"residual_multiplier", is_null_or_one, "scaled residual branches"},
    {"logits_scaling", is_null_or_one, "scaled output logits"},
    {"logit_scale", is_null_or_one, "scaled output logits"},
    {"quantization_config", [](const json& v) { return v.is_null(); }, "quantized weights"},
    {"num_experts", is_null_or_zero, "a mixture of experts"},
    {"num_local_experts", is_null_or_zero, "a mixture of experts"},
    {"n_routed_experts", is_null_or_zero, "a mixture of experts"},
    {"alibi", is_null_or_false, "ALiBi position biases"},
    {"use_key_value_mlp", is_null_or_false, "K/V projected by an MLP"},
    {"position_embedding_type",
     [](const json& v) {
       return v.is_null() || (v.is_string() && (v.get<std::string>() == "rotary" ||
                                                v.get<std::string>() == "rope"));
     },
     "the position encoding"},
};

void audit_keys(const json& j, const ModelConfig& c, const std::string& where) {
  for (const RefusedKey& k : kRefusedKeys) {
    if (!j.contains(k.key)) continue;
    MLKV_REQUIRE(k.neutral(j[k.key]), where, ": '", k.key, "' = ", j[k.key].dump(),
                 " is not supported (", k.what, ")");
  }
  // Sliding windows: harmless only when no window is set, or it spans the whole context, or
  // use_sliding_window (Qwen2's switch) is false.
  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    const json& w = j["sliding_window"];
    const bool off = j.contains("use_sliding_window") && is_null_or_false(j["use_sliding_window"]);
    MLKV_REQUIRE(off || (w.is_number_integer() && w.get<int64_t>() >= c.n_ctx), where,
                 ": 'sliding_window' = ", w.dump(),
                 " is not supported (sliding-window attention; mlkv attends over the whole "
                 "context of ", c.n_ctx, " positions)");
  }
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const json& t = j["layer_types"];
    MLKV_REQUIRE(t.is_array(), where, ": 'layer_types' must be a list");
    for (const json& e : t) {
      MLKV_REQUIRE(e.is_string() && e.get<std::string>() == "full_attention", where,
                   ": 'layer_types' entry ", e.dump(),
                   " is not supported (every layer attends over the full context)");
    }
  }
  // Keys of the other family, at a value that would change the math if they applied.
  if (c.family == Family::kLlama) {
    MLKV_REQUIRE(!j.contains("use_parallel_residual") ||
                     is_null_or_false(j["use_parallel_residual"]),
                 where, ": 'use_parallel_residual' = true is not supported for llama (a gpt_neox key)");
    MLKV_REQUIRE(!j.contains("rotary_pct") || is_null_or_one(j["rotary_pct"]), where,
                 ": 'rotary_pct' is a gpt_neox key; llama spells the rotary fraction "
                 "partial_rotary_factor");
  } else {
    MLKV_REQUIRE(!j.contains("mlp_bias") || j["mlp_bias"].is_null() ||
                     (j["mlp_bias"].is_boolean() && j["mlp_bias"].get<bool>()),
                 where, ": 'mlp_bias' = ", j.value("mlp_bias", json()).dump(),
                 " is not supported for gpt_neox (its MLP always has biases)");
  }
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
  const std::vector<int> bos = r.get_token_ids("bos_token_id", {c.bos_token_id});
  c.bos_token_id = bos.empty() ? -1 : bos.front();
  c.eos_token_ids = r.get_token_ids("eos_token_id", c.eos_token_ids);

  const std::string act =
      r.get_string("hidden_act", c.family == Family::kGptNeoX ? "gelu" : "silu");
  if (c.family == Family::kGptNeoX) {
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
  } else {
    c.norm_eps = r.get_double("rms_norm_eps", 1e-6);
    c.tied_embeddings = r.get_bool("tie_word_embeddings", false);
    c.attn_bias = r.get_bool("attention_bias", false);
    c.mlp_bias = r.get_bool("mlp_bias", false);
    MLKV_REQUIRE(act == "silu" || act == "swish", where, ": hidden_act '", act,
                 "' is not supported for llama (silu)");
  }
  read_rope(j, r, &c);
  audit_keys(j, c, where);

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

  // transformers 5 writes "dtype", earlier versions "torch_dtype".
  const std::string dt = r.get_string("torch_dtype", r.get_string("dtype", "float32"));
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

void apply_generation_config(const std::string& text, const std::string& where, ModelConfig* c) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(where, ": not valid JSON: ", e.what());
  }
  MLKV_REQUIRE(j.is_object(), where, ": expected a JSON object");
  const ConfigReader r(j, where);
  const std::vector<int> bos = r.get_token_ids("bos_token_id", {c->bos_token_id});
  MLKV_REQUIRE(bos.size() <= 1, where, ": 'bos_token_id' must be one token id");
  c->bos_token_id = bos.empty() ? -1 : bos.front();
  c->eos_token_ids = r.get_token_ids("eos_token_id", c->eos_token_ids);
  try {
    c->validate();
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
}

ModelConfig load_model_config(const std::string& dir) {
  namespace fs = std::filesystem;
  ModelConfig c = load_hf_config((fs::path(dir) / "config.json").string());
  const fs::path gen = fs::path(dir) / "generation_config.json";
  if (fs::is_regular_file(gen)) apply_generation_config(read_text_file(gen.string()), gen.string(), &c);
  return c;
}

namespace {

// Token ids as transformers spells them: one id as an int, several as a list.
// No ids is written as null ("none"), never left out: an absent key reads back as the family's
// default (e.g. GPT-NeoX's BOS 0), which would give a model without one a BOS after a round trip.
void write_token_ids(json& j, const char* key, const std::vector<int>& ids) {
  if (ids.empty()) {
    j[key] = nullptr;
  } else if (ids.size() == 1) {
    j[key] = ids.front();
  } else {
    j[key] = ids;
  }
}

}  // namespace

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
  write_token_ids(j, "bos_token_id",
                  c.bos_token_id >= 0 ? std::vector<int>{c.bos_token_id} : std::vector<int>{});
  write_token_ids(j, "eos_token_id", c.eos_token_ids);
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
