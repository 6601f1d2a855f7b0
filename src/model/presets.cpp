// Geometry presets and the preset + overrides policy of from-scratch training (see presets.h).
#include "model/presets.h"

#include <algorithm>

#include "core/check.h"

namespace mlkv {

namespace {

ModelConfig neox(int layers, int embd, int heads, int vocab) {
  ModelConfig c = preset_gpt_neox();
  c.n_layer = layers;
  c.n_embd = embd;
  c.n_head = heads;
  c.n_head_kv = heads;
  c.n_embd_head = embd / heads;
  c.n_rot = c.n_embd_head / 4;
  c.n_ff = 4 * embd;
  c.n_vocab = vocab;
  c.n_ctx = 2048;
  c.kv_source = build_kv_source({.n_layer = layers});
  return c;
}

}  // namespace

std::vector<std::string> geometry_preset_names() {
  return {"pythia-14m", "pythia-70m", "pythia-160m", "pythia-410m", "llama-tiny", "tiny-neox"};
}

ModelConfig geometry_preset(const std::string& name) {
  if (name == "pythia-14m") return neox(6, 128, 4, 50304);
  if (name == "pythia-70m") return neox(6, 512, 8, 50304);
  if (name == "pythia-160m") return neox(12, 768, 12, 50304);
  if (name == "pythia-410m") return neox(24, 1024, 16, 50304);
  if (name == "tiny-neox") return neox(4, 64, 4, 512);
  if (name == "llama-tiny") {
    ModelConfig c = preset_llama();
    c.n_layer = 4;
    c.n_embd = 64;
    c.n_head = 4;
    c.n_head_kv = 4;
    c.n_embd_head = 16;
    c.n_rot = 16;
    c.n_ff = 172;
    c.n_vocab = 512;
    c.n_ctx = 256;
    c.kv_source = build_kv_source({.n_layer = c.n_layer});
    return c;
  }
  std::string known;
  for (const auto& n : geometry_preset_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown model geometry '", name, "' (known: ", known, ")");
}

void apply_sharing(ModelConfig* c, int kv_heads, KvSharingSpec sharing) {
  if (kv_heads > 0) {
    MLKV_REQUIRE(c->n_head % kv_heads == 0, "--kv-heads ", kv_heads,
                 " does not divide the number of attention heads (", c->n_head, ")");
    c->n_head_kv = kv_heads;
  }
  sharing.n_layer = c->n_layer;
  c->kv_source = build_kv_source(sharing);
  c->validate();
}

ModelConfig geometry_from_overrides(const std::string& preset, const GeometryOverrides& o) {
  ModelConfig c = geometry_preset(preset);
  const int preset_head = c.n_embd_head;
  const int preset_rot = c.n_rot;
  if (o.n_layer > 0) c.n_layer = o.n_layer;
  if (o.n_embd > 0) c.n_embd = o.n_embd;
  if (o.n_head > 0) c.n_head = o.n_head;
  MLKV_REQUIRE(c.n_embd % c.n_head == 0, "--embd ", c.n_embd, " is not divisible by --heads ",
               c.n_head);
  c.n_embd_head = c.n_embd / c.n_head;
  // Keep the preset's rotary fraction (Pythia: a quarter of each head; Llama: all of it).
  c.n_rot = std::max(2, (c.n_embd_head * preset_rot / preset_head) / 2 * 2);
  if (o.n_ff > 0) {
    c.n_ff = o.n_ff;
  } else if (o.n_embd > 0) {
    c.n_ff = c.mlp == MlpType::kSwiGlu ? (8 * c.n_embd / 3 + 7) / 8 * 8 : 4 * c.n_embd;
  }
  c.n_head_kv = c.n_head;
  if (o.n_vocab > 0) c.n_vocab = o.n_vocab;
  c.n_ctx = o.n_ctx > 0 ? o.n_ctx : std::max(c.n_ctx, o.min_ctx);
  c.tied_embeddings = o.tied_embeddings;
  c.eos_token_ids.clear();
  if (o.eos_token_id >= 0 && o.eos_token_id < c.n_vocab) c.eos_token_ids = {o.eos_token_id};
  c.bos_token_id = c.family == Family::kGptNeoX ? c.eos_token_id() : -1;
  apply_sharing(&c, o.kv_heads, o.sharing);
  if (!o.share.empty()) c.share_rope = parse_share_rope(o.share, "--share");
  c.validate();
  return c;
}

}  // namespace mlkv
