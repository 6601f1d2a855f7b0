// MHA/GQA -> GQA/MQA/MLKV conversion of a model on disk into a new model folder, as `mlkv convert`
// does: K/V heads mean-pooled into G heads per layer, K/V merged across layers into M owners (or,
// `calibrated`, the owners' K/V kept and the query and output projections fitted on calibration
// text; owners_auto: the owners chosen by that text's calibration error), written atomically as a
// Hugging Face folder (config.json + safetensors, split q/k/v) with the tokenizer files copied.
// What this is not: loading the result (Engine::load) or uptraining it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mlkv/error.h"

namespace mlkv {

struct ConvertSpec {
  int kv_heads = 0;  // G, KV heads per KV layer; 0: keep the source's
  // Which layers own K/V: at most one of these three (none: every layer stays an owner).
  int kv_layers = 0;           // M owners by the MLKV authors' rule
  std::vector<int> owners;     // explicit owner layers, e.g. {0, 3, 6, 9}
  std::vector<int> kv_source;  // explicit layer -> owner map
  bool owners_auto = false;    // kv_layers owners chosen by the calibration error (`--owners auto`)
  // cross-layer K/V merge: "pairwise", "mean", "owner", "calibrated"; "": default (owner)
  std::string merge = "";
  std::string widen = "none";  // give back removed parameters: "none", "copy", "zero"
  std::string share = "post";  // kv_share_rope of the output: "post" or "pre"
  std::string dtype = "same";  // output dtype: "same" (as the source), "f32", "f16", "bf16"
  std::string tokenizer = "";  // tokenizer file or folder to copy; "": found next to the source
  bool force = false;          // replace an existing model folder at dst
  bool fuse_qkv = false;       // GPT-NeoX without sharing: Hugging Face's fused query_key_value
                               // (transformers loads it); default: split q/k/v
  // Calibration text for merge "calibrated" and owners_auto: a text file (tokenized with the
  // model's tokenizer, or `tokenizer`) or a token shard of `mlkv tokenize`.
  std::string calibration = "";
  int64_t calibration_tokens = 16384;            // tokens used (whole rows; every 4th row held out)
  int calibration_ctx = 0;                       // tokens per row; 0: the model's context
  std::string calibration_stream = "converted";  // activations calibrated on: "converted", "source"
};

// Converts the model at src (HF folder or llama2.c .bin) into the folder dst and returns the
// report `mlkv convert --json` prints (a JSON object as text: n_head_kv, n_kv_layers,
// owner_layers, kv_source, params_before/after, kv_bytes_per_token_before/after, ...). Every
// option is checked before anything is written; a failure leaves nothing at dst. Throws
// mlkv::Error naming the problem (a missing source, dst not empty without force, G not dividing
// the KV heads, M out of range, ...).
std::string convert(const std::string& src, const std::string& dst, const ConvertSpec& spec = {});

}  // namespace mlkv
