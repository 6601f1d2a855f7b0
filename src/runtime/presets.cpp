#include "runtime/presets.h"

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
  c.kv_source.clear();
  for (int il = 0; il < layers; ++il) c.kv_source.push_back(il);
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
    for (int il = 0; il < c.n_layer; ++il) c.kv_source.push_back(il);
    return c;
  }
  std::string known;
  for (const auto& n : geometry_preset_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown model geometry '", name, "' (known: ", known, ")");
}

void apply_sharing(ModelConfig* c, int kv_heads, int kv_layers) {
  if (kv_heads > 0) {
    MLKV_REQUIRE(c->n_head % kv_heads == 0, "--kv-heads ", kv_heads,
                 " does not divide the number of attention heads (", c->n_head, ")");
    c->n_head_kv = kv_heads;
  }
  if (kv_layers > 0) {
    c->kv_source = kv_source_from_owners(c->n_layer, owners_by_authors_rule(c->n_layer, kv_layers));
  }
  c->validate();
}

}  // namespace mlkv
