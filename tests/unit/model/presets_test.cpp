// Geometry presets and geometry_from_overrides: the preset + overrides policy of from-scratch
// training (head size, rotary fraction, MLP width rule, context, EOS/BOS, sharing, share mode).
#include "model/presets.h"

#include <gtest/gtest.h>

#include <string>

#include "core/check.h"

namespace mlkv {
namespace {

std::string error_of(const std::string& preset, const GeometryOverrides& o) {
  try {
    geometry_from_overrides(preset, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(Presets, KnownNamesAreValidIdentityConfigs) {
  for (const std::string& name : geometry_preset_names()) {
    const ModelConfig c = geometry_preset(name);
    EXPECT_NO_THROW(c.validate()) << name;
    EXPECT_FALSE(c.shares_across_layers()) << name;
    EXPECT_EQ(c.n_head_kv, c.n_head) << name;
  }
  const ModelConfig p = geometry_preset("pythia-160m");
  EXPECT_EQ(p.n_layer, 12);
  EXPECT_EQ(p.n_embd, 768);
  EXPECT_EQ(p.n_rot, 16);  // a quarter of 64
  EXPECT_NE(std::string(geometry_preset_names().front()), "");
  try {
    geometry_preset("gpt-5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown model geometry 'gpt-5' (known: pythia-14m"),
              std::string::npos);
  }
}

TEST(GeometryOverrides, PresetKeptWhenNothingGiven) {
  GeometryOverrides o;
  o.n_vocab = 300;
  const ModelConfig c = geometry_from_overrides("tiny-neox", o);
  const ModelConfig p = geometry_preset("tiny-neox");
  EXPECT_EQ(c.n_layer, p.n_layer);
  EXPECT_EQ(c.n_embd, p.n_embd);
  EXPECT_EQ(c.n_ff, p.n_ff);
  EXPECT_EQ(c.n_rot, p.n_rot);
  EXPECT_EQ(c.n_ctx, p.n_ctx);
  EXPECT_EQ(c.n_vocab, 300);
  EXPECT_EQ(c.kv_source, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(c.share_rope, KvShareRope::kPost);
  EXPECT_EQ(c.eos_token_id(), -1);
  EXPECT_EQ(c.bos_token_id, -1);
}

TEST(GeometryOverrides, WidthHeadsRotaryAndMlpRule) {
  GeometryOverrides o;
  o.n_vocab = 97;
  o.n_layer = 2;
  o.n_embd = 96;
  o.n_head = 3;
  // GPT-NeoX: head 32, a quarter rotary (8), MLP 4 x 96.
  ModelConfig c = geometry_from_overrides("pythia-14m", o);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_embd_head, 32);
  EXPECT_EQ(c.n_rot, 8);
  EXPECT_EQ(c.n_ff, 384);
  EXPECT_EQ(c.n_head_kv, 3);
  // Llama: all of the head rotary, SwiGLU width 8/3 x 96 = 256 rounded up to a multiple of 8.
  c = geometry_from_overrides("llama-tiny", o);
  EXPECT_EQ(c.n_rot, 32);
  EXPECT_EQ(c.n_ff, 256);
  o.n_embd = 104;
  o.n_head = 4;
  c = geometry_from_overrides("llama-tiny", o);
  EXPECT_EQ(c.n_ff, 280);  // 8 * 104 / 3 = 277, rounded up to a multiple of 8
  o.n_ff = 123;
  EXPECT_EQ(geometry_from_overrides("llama-tiny", o).n_ff, 123);
  // A tiny head keeps at least 2 rotary dims.
  GeometryOverrides t;
  t.n_vocab = 50;
  t.n_embd = 16;
  t.n_head = 4;  // head 4: a quarter is 1, rounded to an even count of at least 2
  EXPECT_EQ(geometry_from_overrides("tiny-neox", t).n_rot, 2);
}

TEST(GeometryOverrides, ContextVocabEosTied) {
  GeometryOverrides o;
  o.n_vocab = 512;
  o.min_ctx = 1000;  // longer training rows stretch the preset's 256
  EXPECT_EQ(geometry_from_overrides("llama-tiny", o).n_ctx, 1000);
  o.min_ctx = 64;
  EXPECT_EQ(geometry_from_overrides("llama-tiny", o).n_ctx, 256);
  o.n_ctx = 77;
  EXPECT_EQ(geometry_from_overrides("llama-tiny", o).n_ctx, 77);
  o.eos_token_id = 3;
  o.tied_embeddings = true;
  ModelConfig c = geometry_from_overrides("llama-tiny", o);
  EXPECT_EQ(c.eos_token_id(), 3);
  EXPECT_EQ(c.bos_token_id, -1);  // Llama: no BOS from the data
  EXPECT_TRUE(c.tied_embeddings);
  c = geometry_from_overrides("tiny-neox", o);
  EXPECT_EQ(c.bos_token_id, 3);  // GPT-NeoX: BOS = EOS
  o.eos_token_id = 512;          // outside the vocabulary: dropped
  EXPECT_EQ(geometry_from_overrides("tiny-neox", o).eos_token_id(), -1);
}

TEST(GeometryOverrides, Sharing) {
  GeometryOverrides o;
  o.n_vocab = 64;
  o.kv_heads = 2;
  o.sharing.kv_layers = 2;
  o.share = "pre";
  ModelConfig c = geometry_from_overrides("tiny-neox", o);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.kv_source, (std::vector<int>{0, 0, 2, 2}));
  EXPECT_EQ(c.share_rope, KvShareRope::kPre);
  o.sharing = {};
  o.sharing.kv_source = {0, 0, 0, 3};
  o.n_layer = 0;
  EXPECT_EQ(geometry_from_overrides("tiny-neox", o).kv_source, (std::vector<int>{0, 0, 0, 3}));
  // The number of layers is the overridden one.
  o.sharing = {};
  o.sharing.kv_layers = 3;
  o.n_layer = 6;
  EXPECT_EQ(geometry_from_overrides("tiny-neox", o).kv_source,
            (std::vector<int>{0, 0, 2, 2, 4, 4}));
}

TEST(GeometryOverrides, Errors) {
  GeometryOverrides o;
  o.n_vocab = 64;
  o.n_embd = 30;
  o.n_head = 4;
  EXPECT_EQ(error_of("llama-tiny", o), "--embd 30 is not divisible by --heads 4");
  o = {};
  o.n_vocab = 64;
  o.kv_heads = 3;
  EXPECT_EQ(error_of("llama-tiny", o),
            "--kv-heads 3 does not divide the number of attention heads (4)");
  o.kv_heads = 0;
  o.sharing.kv_layers = 9;
  EXPECT_EQ(error_of("llama-tiny", o),
            "--kv-layers 9 is out of range: the model has 4 layers (1 <= M <= 4)");
  o.sharing.kv_source = {0, 0, 1, 1};
  EXPECT_EQ(error_of("llama-tiny", o), "give at most one of --kv-layers, --owners and --kv-source");
  o.sharing = {};
  o.share = "sideways";
  EXPECT_EQ(error_of("llama-tiny", o), "--share must be \"post\" or \"pre\" (got \"sideways\")");
  EXPECT_NE(error_of("nope", {}).find("unknown model geometry 'nope'"), std::string::npos);
}

}  // namespace
}  // namespace mlkv
