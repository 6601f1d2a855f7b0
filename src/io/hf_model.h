// Loading and saving whole models in the Hugging Face folder layout: config.json plus
// model.safetensors (or shards listed in model.safetensors.index.json). Tensor names come from
// model/weights.h; this file adds the GPT-NeoX fused query_key_value layout on both sides.
#pragma once

#include <functional>
#include <string>

#include "model/config.h"
#include "model/weights.h"

namespace mlkv {

// Told about something odd in a model that loads anyway (one line, no "warning:" prefix).
using LoadWarning = std::function<void(const std::string&)>;

// Reads a model folder (or a llama2.c .bin file, see io/llama2c.h): config.json, then
// generation_config.json when present (its EOS ids win), then the weights. Every tensor is
// checked for presence and shape before anything is allocated; tensors the config does not call
// for are an error (a K/V projection in a layer that kv_source says does not own one, say),
// except known non-parameter buffers and, in a tied model, the output matrix: accepted when it
// equals the embedding; when it differs the embedding is used and `warn` is told (no `warn`:
// "mlkv: warning: ..." on stderr).
LoadedModel load_model(const std::string& path, const LoadWarning& warn = {});

struct SaveOptions {
  DType dtype = DType::kF32;   // file dtype: F32, F16 or BF16
  // GPT-NeoX: write the fused query_key_value tensor when the model is plain MHA (readable by
  // stock GPT-NeoX code); otherwise the split query/key/value layout is always used.
  bool fuse_qkv_when_possible = true;
};

// Writes config.json and model.safetensors into dir (created if needed), each atomically.
void save_model(const std::string& dir, const ModelConfig& cfg, const ModelWeights& w,
                const SaveOptions& opt = {});

}  // namespace mlkv
