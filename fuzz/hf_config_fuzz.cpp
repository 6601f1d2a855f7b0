// libFuzzer target: config.json and generation_config.json parsing (io/hf_config.h) on arbitrary
// text. Anything but success or mlkv::Error is a bug. A config that parses must be valid and
// must survive a round trip through mlkv's own writer unchanged (every field that shapes the
// model, the EOS ids included); the same text as a generation_config.json on top of a valid
// config either applies or is an mlkv::Error.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "io/hf_config.h"

namespace {

bool same(const mlkv::ModelConfig& a, const mlkv::ModelConfig& b) {
  const auto& s = a.rope_scaling;
  const auto& t = b.rope_scaling;
  return a.family == b.family && a.n_vocab == b.n_vocab && a.n_embd == b.n_embd &&
         a.n_layer == b.n_layer && a.n_head == b.n_head && a.n_head_kv == b.n_head_kv &&
         a.n_embd_head == b.n_embd_head && a.n_ff == b.n_ff && a.n_ctx == b.n_ctx &&
         a.n_rot == b.n_rot && a.rope_theta == b.rope_theta && a.norm_eps == b.norm_eps &&
         s.type == t.type && s.factor == t.factor && s.low_freq_factor == t.low_freq_factor &&
         s.high_freq_factor == t.high_freq_factor &&
         s.original_max_position_embeddings == t.original_max_position_embeddings &&
         a.norm == b.norm && a.mlp == b.mlp && a.gelu_tanh == b.gelu_tanh &&
         a.parallel_residual == b.parallel_residual && a.attn_bias == b.attn_bias &&
         a.mlp_bias == b.mlp_bias && a.tied_embeddings == b.tied_embeddings &&
         a.kv_source == b.kv_source && a.share_rope == b.share_rope &&
         a.bos_token_id == b.bos_token_id && a.eos_token_ids == b.eos_token_ids &&
         a.file_dtype == b.file_dtype;
}

const mlkv::ModelConfig& base() {
  static const mlkv::ModelConfig c = mlkv::parse_hf_config(
      R"({"model_type":"llama","vocab_size":300,"hidden_size":64,"num_hidden_layers":2,
          "num_attention_heads":4,"intermediate_size":128,"eos_token_id":2})",
      "base");
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const mlkv::ModelConfig c = mlkv::parse_hf_config(text, "fuzz.json");
    c.validate();
    const mlkv::ModelConfig d = mlkv::parse_hf_config(mlkv::hf_config_to_json(c), "round trip");
    if (!same(c, d)) std::abort();
  } catch (const mlkv::Error&) {
  }
  try {
    mlkv::ModelConfig g = base();
    mlkv::apply_generation_config(text, "fuzz_generation.json", &g);
    g.validate();
  } catch (const mlkv::Error&) {
  }
  return 0;
}
