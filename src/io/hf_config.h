// Hugging Face config.json <-> ModelConfig, for the gpt_neox and llama model types, including the
// mlkv keys: num_key_value_heads, num_key_value_layers (authors' owner rule), kv_source (explicit
// map; wins when present), kv_share_rope ("post" | "pre"). Documented in docs/FORMAT.md.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace mlkv {

// Parses config.json text; `where` names the file in error messages. The result is validated.
// Keys that would change the model's function in a way mlkv does not compute (a sliding window,
// q/k norms, soft-capping, other rope scalings, ...) are refused by name; keys that change
// nothing are accepted; null means "not set" as in transformers (for token ids: none).
ModelConfig parse_hf_config(const std::string& json_text, const std::string& where);
ModelConfig load_hf_config(const std::string& path);

// generation_config.json: its bos_token_id and eos_token_id (an int or a list), when present,
// replace the config's (transformers' generate() reads them from there too). Its sampling
// defaults (temperature, top_p, ...) are not read: mlkv's come from its options.
void apply_generation_config(const std::string& json_text, const std::string& where,
                             ModelConfig* cfg);
// A model folder's config: dir/config.json, then dir/generation_config.json when present.
ModelConfig load_model_config(const std::string& dir);

// Writes the config in the family's HF spelling plus the mlkv keys. Writes kv_source and
// kv_share_rope explicitly whenever a layer shares, so the file is unambiguous. eos_token_id is
// written as an int for one id and as a list for several (the ids that end a generation).
std::string hf_config_to_json(const ModelConfig& cfg);

}  // namespace mlkv
