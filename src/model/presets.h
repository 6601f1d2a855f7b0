// Named model geometries ("pythia-160m", "llama-tiny", ...) for benchmarks and from-scratch
// training, and the one policy that turns a preset plus overrides (layers, width, heads, MLP width,
// vocabulary, context, KV sharing) into a ModelConfig. What this is not: weights (random init is
// model/weights.h) or checkpoint configs (io/hf_config.h).
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace mlkv {

// Known names: pythia-14m, pythia-70m, pythia-160m, pythia-410m, llama-tiny, tiny-neox.
// Throws mlkv::Error listing the known names for an unknown one.
ModelConfig geometry_preset(const std::string& name);
std::vector<std::string> geometry_preset_names();

// Sets n_head_kv = kv_heads (0 keeps it) and kv_source = build_kv_source(sharing) for the
// config's n_layer (sharing.n_layer is ignored), then validates. Throws mlkv::Error naming the
// option (--kv-heads, --kv-layers, ...) for a head count that does not divide n_head or a bad
// sharing.
void apply_sharing(ModelConfig* cfg, int kv_heads, KvSharingSpec sharing);

// Changes to a preset; 0 / empty keeps the preset's value. Errors name the `mlkv train` options.
struct GeometryOverrides {
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_ff = 0;     // 0: the preset's, or when n_embd changes 4 x n_embd (GELU) or
                    // 8/3 x n_embd rounded up to a multiple of 8 (SwiGLU)
  int n_vocab = 0;  // required in effect: the preset's vocabulary is a placeholder
  int n_ctx = 0;    // 0: the preset's, at least min_ctx
  int min_ctx = 0;  // tokens per training row: the model's context is never shorter
  bool tied_embeddings = false;
  int kv_heads = 0;       // KV heads per owner layer; 0: n_head (MHA)
  KvSharingSpec sharing;  // which layers own K/V (n_layer is filled in); nothing: every layer
  std::string share;      // kv_share_rope: "post" or "pre"; "": post
  int eos_token_id = -1;  // the data's end-of-text id (-1: none); BOS too for GPT-NeoX
};

// preset + overrides -> a validated config. The head size follows n_embd / n_head and the rotary
// dims keep the preset's fraction of the head (Pythia a quarter, Llama all), at least 2. Throws
// mlkv::Error for an unknown preset, n_embd not divisible by n_head, or a bad sharing.
ModelConfig geometry_from_overrides(const std::string& preset, const GeometryOverrides& o);

}  // namespace mlkv
