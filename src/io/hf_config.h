// Hugging Face config.json <-> ModelConfig, for the gpt_neox and llama model types, including the
// mlkv keys: num_key_value_heads, num_key_value_layers (authors' owner rule), kv_source (explicit
// map; wins when present), kv_share_rope ("post" | "pre"). Documented in docs/FORMAT.md.
#pragma once

#include <string>

#include "model/config.h"

namespace mlkv {

// Parses config.json text; `where` names the file in error messages. The result is validated.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& where);
ModelConfig load_hf_config(const std::string& path);

// Writes the config in the family's HF spelling plus the mlkv keys. Writes kv_source and
// kv_share_rope explicitly whenever a layer shares, so the file is unambiguous.
std::string hf_config_to_json(const ModelConfig& cfg);

}  // namespace mlkv
