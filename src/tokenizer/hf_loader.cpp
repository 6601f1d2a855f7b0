// Loaders for byte-level BPE files: Hugging Face tokenizer.json and GPT-2's encoder.json +
// vocab.bpe. They only translate the files into a BpeSpec; BpeTokenizer does the rest.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"
#include "tokenizer/bpe.h"

namespace mlkv {

namespace {

using nlohmann::json;

const json& field(const json& j, const char* key, const std::string& where) {
  MLKV_REQUIRE(j.is_object() && j.contains(key), where, ": missing \"", key, "\"");
  return j[key];
}

std::string string_field(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  MLKV_REQUIRE(v.is_string(), where, ": \"", key, "\" must be a string");
  return v.get<std::string>();
}

int32_t int_field(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  MLKV_REQUIRE(v.is_number_integer(), where, ": \"", key, "\" must be an integer");
  auto x = v.get<int64_t>();
  MLKV_REQUIRE(x >= 0 && x <= INT32_MAX, where, ": \"", key, "\" = ", x, " is out of range");
  return static_cast<int32_t>(x);
}

bool bool_field(const json& j, const char* key, bool def, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return def;
  MLKV_REQUIRE(j[key].is_boolean(), where, ": \"", key, "\" must be a boolean");
  return j[key].get<bool>();
}

void read_vocab(const json& v, BpeSpec& spec, const std::string& where) {
  MLKV_REQUIRE(v.is_object(), where, ": the vocabulary must be an object {piece: id}");
  spec.vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    MLKV_REQUIRE(it.value().is_number_integer(), where, ": vocabulary id of '", it.key(),
                 "' is not an integer");
    auto id = it.value().get<int64_t>();
    MLKV_REQUIRE(id >= 0 && id <= INT32_MAX, where, ": vocabulary id ", id, " of '", it.key(),
                 "' is out of range");
    spec.vocab.emplace_back(it.key(), static_cast<int32_t>(id));
  }
}

// "a b" (one space) or ["a", "b"].
void read_merges(const json& m, BpeSpec& spec, const std::string& where) {
  MLKV_REQUIRE(m.is_array(), where, ": \"merges\" must be an array");
  spec.merges.reserve(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    const json& e = m[i];
    if (e.is_string()) {
      const auto& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      MLKV_REQUIRE(sp != std::string::npos && sp > 0 && sp + 1 < s.size() &&
                       s.find(' ', sp + 1) == std::string::npos,
                   where, ": merge ", i, " ('", s, "') is not two pieces separated by one space");
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      spec.merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      fail(where, ": merge ", i, " is neither \"a b\" nor [\"a\", \"b\"]");
    }
  }
}

// Decoders: ByteLevel (the vocabulary mapping does it), ByteFallback and Fuse (what decoding does
// anyway), Replace with a string pattern, Strip of one leading space, Metaspace, and Sequence.
void read_decoder(const json& d, BpeSpec& spec, const std::string& where) {
  MLKV_REQUIRE(d.is_object() && d.contains("type") && d["type"].is_string(), where,
               ": decoder must be an object with a string \"type\"");
  const std::string type = d["type"].get<std::string>();
  if (type == "Sequence") {
    MLKV_REQUIRE(d.contains("decoders") && d["decoders"].is_array(), where,
                 ": Sequence decoder without a \"decoders\" array");
    for (const auto& sub : d["decoders"]) read_decoder(sub, spec, where);
  } else if (type == "ByteLevel" || type == "ByteFallback" || type == "Fuse") {
    // nothing to record
  } else if (type == "Replace") {
    const json& p = field(d, "pattern", where);
    MLKV_REQUIRE(p.is_object() && p.contains("String") && p["String"].is_string(), where,
                 ": only string patterns are supported in a Replace decoder");
    spec.decode_replace.emplace_back(p["String"].get<std::string>(), string_field(d, "content", where));
  } else if (type == "Strip") {
    std::string content = d.value("content", std::string(" "));
    int start = d.value("start", 0), stop = d.value("stop", 0);
    MLKV_REQUIRE(content == " " && stop == 0 && start >= 0 && start <= 1, where,
                 ": only a Strip decoder removing one leading space is supported");
    if (start == 1) spec.decode_first = BpeSpec::FirstPiece::kStripOneSpace;
  } else if (type == "Metaspace") {
    spec.decode_replace.emplace_back(d.value("replacement", std::string("\xE2\x96\x81")), " ");
    std::string scheme = d.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = d.value("add_prefix_space", true) ? "always" : "never";
    if (scheme != "never") spec.decode_first = BpeSpec::FirstPiece::kDropSpaces;
  } else {
    fail(where, ": unsupported decoder type '", type,
         "' (supported: ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence)");
  }
}

int32_t find_id(const BpeSpec& spec, const std::string& piece) {
  for (const auto& t : spec.added) {
    if (t.content == piece) return t.id;
  }
  for (const auto& [p, id] : spec.vocab) {
    if (p == piece) return id;
  }
  return -1;
}

// bos_token / eos_token of a tokenizer_config.json: a string or {"content": ...}.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

// The first special token of a TemplateProcessing "single" template: the BOS it adds.
std::string template_bos(const json& pp) {
  if (!pp.is_object()) return "";
  std::string type = pp.value("type", "");
  if (type == "Sequence" && pp.contains("processors") && pp["processors"].is_array()) {
    for (const auto& sub : pp["processors"]) {
      std::string b = template_bos(sub);
      if (!b.empty()) return b;
    }
    return "";
  }
  if (type != "TemplateProcessing" || !pp.contains("single") || !pp["single"].is_array() ||
      pp["single"].empty()) {
    return "";
  }
  const json& first = pp["single"][0];
  if (first.is_object() && first.contains("SpecialToken") && first["SpecialToken"].is_object() &&
      first["SpecialToken"].contains("id") && first["SpecialToken"]["id"].is_string()) {
    return first["SpecialToken"]["id"].get<std::string>();
  }
  return "";
}

void pick_bos_eos(BpeSpec& spec, const json& post_processor, const json& config) {
  std::string bos = config_token(config, "bos_token");
  std::string eos = config_token(config, "eos_token");
  if (bos.empty()) bos = template_bos(post_processor);
  if (!bos.empty()) spec.bos_id = find_id(spec, bos);
  if (!eos.empty()) spec.eos_id = find_id(spec, eos);
  if (spec.eos_id < 0) {
    for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"}) {
      spec.eos_id = find_id(spec, name);
      if (spec.eos_id >= 0) break;
    }
  }
}

std::unique_ptr<BpeTokenizer> build_unchecked(const json& root, const std::string& name,
                                              const json& config);

// Errors from deeper layers (a regex that does not compile, ...) get the file name in front.
std::unique_ptr<BpeTokenizer> build(const json& root, const std::string& name, const json& config) {
  try {
    return build_unchecked(root, name, config);
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind(name, 0) == 0) throw;
    fail(name, ": ", msg);
  }
}

std::unique_ptr<BpeTokenizer> build_unchecked(const json& root, const std::string& name,
                                              const json& config) {
  MLKV_REQUIRE(root.is_object(), name, ": not a tokenizer.json (the top level is not an object)");
  const json& model = field(root, "model", name);
  MLKV_REQUIRE(model.is_object(), name, ": \"model\" must be an object");
  std::string type = model.contains("type") ? string_field(model, "type", name) : "BPE";
  MLKV_REQUIRE(type == "BPE", name, ": unsupported model type '", type,
               "' (only BPE tokenizer.json files are supported; use tokenizer.model for "
               "SentencePiece)");

  BpeSpec spec;
  spec.source = name;
  read_vocab(field(model, "vocab", name), spec, name);
  read_merges(field(model, "merges", name), spec, name);
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    spec.unk_token = string_field(model, "unk_token", name);
  }
  spec.byte_fallback = bool_field(model, "byte_fallback", false, name);
  spec.fuse_unk = bool_field(model, "fuse_unk", false, name);
  spec.ignore_merges = bool_field(model, "ignore_merges", false, name);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null()) {
      MLKV_REQUIRE(model[key].is_string() && model[key].get<std::string>().empty(), name,
                   ": BPE option \"", key, "\" is not supported");
    }
  }

  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    const json& added = root["added_tokens"];
    MLKV_REQUIRE(added.is_array(), name, ": \"added_tokens\" must be an array");
    for (const auto& a : added) {
      AddedToken t;
      t.id = int_field(a, "id", name);
      t.content = string_field(a, "content", name);
      t.special = bool_field(a, "special", false, name);
      t.lstrip = bool_field(a, "lstrip", false, name);
      t.rstrip = bool_field(a, "rstrip", false, name);
      t.single_word = bool_field(a, "single_word", false, name);
      t.normalized = bool_field(a, "normalized", !t.special, name);
      spec.added.push_back(std::move(t));
    }
  }
  spec.normalizer = Normalizer::from_json(root.value("normalizer", json()), name);
  spec.pre_tokenizer = PreTokenizer::from_json(root.value("pre_tokenizer", json()), name);
  if (root.contains("decoder") && !root["decoder"].is_null()) {
    read_decoder(root["decoder"], spec, name);
  }
  MLKV_REQUIRE(!spec.pre_tokenizer->byte_level() || spec.decode_replace.empty(), name,
               ": a ByteLevel tokenizer with a Replace / Metaspace decoder is not supported");
  pick_bos_eos(spec, root.value("post_processor", json()), config);
  return std::make_unique<BpeTokenizer>(std::move(spec));
}

}  // namespace

std::unique_ptr<BpeTokenizer> parse_hf_tokenizer_json(std::string_view text,
                                                      const std::string& name) {
  json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  MLKV_REQUIRE(!root.is_discarded(), name, ": not valid JSON");
  try {
    return build(root, name, json());
  } catch (const json::exception& e) {
    fail(name, ": unexpected JSON structure: ", e.what());
  }
}

std::unique_ptr<BpeTokenizer> load_hf_tokenizer_json(const std::string& path) {
  MappedFile file(path);
  std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  MLKV_REQUIRE(!root.is_discarded(), path, ": not valid JSON (truncated or corrupt?)");
  // tokenizer_config.json beside the file names BOS / EOS when present.
  json config;
  auto cfg_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(cfg_path, ec)) {
    std::string cfg_text = read_text_file(cfg_path.string());
    config = json::parse(cfg_text, nullptr, false);
    if (config.is_discarded()) config = json();
  }
  try {
    return build(root, path, config);
  } catch (const json::exception& e) {
    fail(path, ": unexpected JSON structure: ", e.what());
  }
}

std::unique_ptr<BpeTokenizer> load_gpt2_bpe(const std::string& encoder_json,
                                            const std::string& vocab_bpe) {
  BpeSpec spec;
  spec.source = encoder_json;
  {
    std::string text = read_text_file(encoder_json);
    json v = json::parse(text, nullptr, false);
    MLKV_REQUIRE(!v.is_discarded(), encoder_json, ": not valid JSON (truncated or corrupt?)");
    try {
      read_vocab(v, spec, encoder_json);
    } catch (const json::exception& e) {
      fail(encoder_json, ": unexpected JSON structure: ", e.what());
    }
  }
  {
    std::string text = read_text_file(vocab_bpe);
    size_t pos = 0, line_no = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_no == 1 && line.substr(0, 9) == "#version:")) continue;
      size_t sp = line.find(' ');
      MLKV_REQUIRE(sp != std::string_view::npos && sp > 0 && sp + 1 < line.size() &&
                       line.find(' ', sp + 1) == std::string_view::npos,
                   vocab_bpe, ":", line_no, ": expected two pieces separated by one space");
      spec.merges.emplace_back(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)));
    }
  }
  spec.pre_tokenizer = PreTokenizer::gpt2();
  spec.normalizer = std::make_unique<Normalizer>();
  for (const auto& [piece, id] : spec.vocab) {
    if (piece == "<|endoftext|>") {
      AddedToken t;
      t.content = piece;
      t.id = id;
      t.special = true;
      spec.added.push_back(t);
      spec.eos_id = id;
    }
  }
  return std::make_unique<BpeTokenizer>(std::move(spec));
}

}  // namespace mlkv
