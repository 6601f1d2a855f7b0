#include "io/llama2c.h"

#include <cstring>

#include "core/check.h"
#include "core/mmap_file.h"

namespace mlkv {

namespace {

// Rows of one head go from interleaved pairs (2i, 2i+1) to halves (i, i + d/2).
void permute_rows_interleaved_to_half(Tensor& w, int n_heads, int head_dim) {
  const int64_t cols = w.dim(1);
  Tensor tmp(w);
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    for (int i = 0; i < half; ++i) {
      for (int j = 0; j < 2; ++j) {
        const int64_t src = static_cast<int64_t>(h) * head_dim + 2 * i + j;
        const int64_t dst = static_cast<int64_t>(h) * head_dim + j * half + i;
        std::memcpy(w.data() + dst * cols, tmp.data() + src * cols, static_cast<size_t>(cols) * 4);
      }
    }
  }
}

}  // namespace

LoadedModel load_llama2c(const std::string& path) {
  MappedFile f(path);
  return load_llama2c(f.data(), f.size(), path);
}

LoadedModel load_llama2c(const uint8_t* data, size_t size, const std::string& path) {
  MLKV_REQUIRE(size >= 28, "'", path, "' is too short for a llama2.c checkpoint header");
  int32_t hdr[7];
  std::memcpy(hdr, data, sizeof hdr);
  const int dim = hdr[0], hidden = hdr[1], n_layers = hdr[2], n_heads = hdr[3], n_kv = hdr[4];
  const bool shared_cls = hdr[5] > 0;
  // In 64 bits: -INT32_MIN does not fit an int.
  const int64_t vocab64 = shared_cls ? int64_t{hdr[5]} : -int64_t{hdr[5]};
  const int seq_len = hdr[6];
  MLKV_REQUIRE(dim > 0 && hidden > 0 && n_layers > 0 && n_heads > 0 && n_kv > 0 && vocab64 > 0 &&
                   seq_len > 0 && dim % n_heads == 0 && n_heads % n_kv == 0 && dim <= (1 << 16) &&
                   hidden <= (1 << 18) && n_layers <= 1024 && vocab64 <= (1 << 22) &&
                   seq_len <= (1 << 22),
               "'", path, "': implausible llama2.c header (dim ", dim, ", hidden ", hidden, ", layers ",
               n_layers, ", heads ", n_heads, ", kv heads ", n_kv, ", vocab ", hdr[5], ", seq_len ",
               seq_len, ")");
  const int vocab = static_cast<int>(vocab64);
  LoadedModel m;
  ModelConfig& c = m.config;
  c = preset_llama();
  c.n_vocab = vocab;
  c.n_embd = dim;
  c.n_layer = n_layers;
  c.n_head = n_heads;
  c.n_head_kv = n_kv;
  c.n_embd_head = dim / n_heads;
  c.n_rot = c.n_embd_head;
  c.n_ff = hidden;
  c.n_ctx = seq_len;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.tied_embeddings = shared_cls;
  // llama2.c's tokenizer: 1 is BOS, 2 is EOS (when the vocabulary has them).
  c.bos_token_id = vocab > 1 ? 1 : -1;
  c.eos_token_ids.clear();
  if (vocab > 2) c.eos_token_ids = {2};
  c.kv_source = build_kv_source({.n_layer = n_layers});  // every layer owns its K/V
  c.validate();

  const int64_t head = c.n_embd_head, kv_dim = int64_t{n_kv} * head;
  const int64_t L = n_layers;
  int64_t need = int64_t{vocab} * dim + L * dim * 2 + L * dim * dim * 2 + L * kv_dim * dim * 2 +
                 L * hidden * dim * 3 + dim + int64_t{seq_len} * head;  // freq_cis real + imag
  if (!shared_cls) need += int64_t{vocab} * dim;
  const int64_t have = static_cast<int64_t>((size - 28) / 4);
  MLKV_REQUIRE(have >= need, "'", path, "' is truncated: the header needs ", need,
               " floats of weights but the file holds ", have);

  allocate_weights(c, &m.weights);
  const uint8_t* p = data + 28;  // f32 values, read with memcpy (no alignment assumed)
  auto take = [&](Tensor& t) {
    std::memcpy(t.data(), p, static_cast<size_t>(t.numel()) * 4);
    const int64_t bad = first_non_finite(t.data(), t.numel());
    MLKV_REQUIRE(bad < 0, "'", path, "' holds a non-finite weight (", t.data()[bad < 0 ? 0 : bad], ") at float ",
                 (p - (data + 28)) / 4 + bad, " of its weights: the file is damaged (NaN or infinite weights make every output NaN)");
    p += t.numel() * 4;
  };
  auto& layers = m.weights.layers;
  take(m.weights.tok_embd);
  for (auto& l : layers) take(l.attn_norm);
  for (auto& l : layers) take(l.wq);
  for (auto& l : layers) take(l.wk);
  for (auto& l : layers) take(l.wv);
  for (auto& l : layers) take(l.wo);
  for (auto& l : layers) take(l.ffn_norm);
  for (auto& l : layers) take(l.w_gate);  // w1
  for (auto& l : layers) take(l.w_down);  // w2
  for (auto& l : layers) take(l.w_up);    // w3
  take(m.weights.out_norm);
  p += int64_t{seq_len} * head * 4;  // freq_cis_real, freq_cis_imag: recomputed from rope_theta
  if (!shared_cls) take(m.weights.output);
  for (auto& l : layers) {
    permute_rows_interleaved_to_half(l.wq, n_heads, static_cast<int>(head));
    permute_rows_interleaved_to_half(l.wk, n_kv, static_cast<int>(head));
  }
  return m;
}

}  // namespace mlkv
