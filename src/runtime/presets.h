// Named model geometries for benchmarks and from-scratch training ("pythia-160m", ...), built as
// ModelConfigs with random weights. Sharing is applied on top with apply_sharing().
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace mlkv {

// Known names: pythia-14m, pythia-70m, pythia-160m, pythia-410m, llama-tiny, tiny-neox.
// Throws mlkv::Error listing the known names for an unknown one.
ModelConfig geometry_preset(const std::string& name);
std::vector<std::string> geometry_preset_names();

// Sets n_head_kv = kv_heads (0 keeps) and owners by the authors' rule for kv_layers (0 keeps all).
void apply_sharing(ModelConfig* cfg, int kv_heads, int kv_layers);

}  // namespace mlkv
