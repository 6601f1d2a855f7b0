// The inference forward pass: embedding -> n_layer x (norm, attention over the KV cache, MLP,
// residual) -> final norm -> logits for the requested rows. Driven entirely by ModelConfig flags:
// LayerNorm vs RMSNorm, GELU vs SwiGLU, parallel vs sequential residual, biases, kv_source.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/half.h"
#include "model/model.h"

namespace mlkv {

int Batch::n_outputs() const {
  int n = 0;
  for (uint8_t f : logits) n += f;
  return n;
}

Model::Model(LoadedModel m, const ModelOptions& opt)
    : cfg_(std::move(m.config)), opt_(opt), w_(std::move(m.weights)) {
  cfg_.validate();
  rope(std::max(cfg_.n_ctx, 1));
  if (opt_.weights == WeightType::kF16) pack_f16();
}

void Model::pack_f16() {
  auto pack = [](Tensor& t, std::vector<uint16_t>& out, bool release) {
    if (t.empty()) return;
    out.resize(static_cast<size_t>(t.numel()));
    f32_to_f16_n(t.data(), out.data(), out.size());
    if (release) t = Tensor();
  };
  packed_.resize(static_cast<size_t>(cfg_.n_layer));
  for (int il = 0; il < cfg_.n_layer; ++il) {
    LayerWeights& L = w_.layers[static_cast<size_t>(il)];
    PackedLayer& P = packed_[static_cast<size_t>(il)];
    for (auto [t, p] : {std::pair{&L.wq, &P.wq}, {&L.wk, &P.wk}, {&L.wv, &P.wv}, {&L.wo, &P.wo},
                        {&L.w_gate, &P.w_gate}, {&L.w_up, &P.w_up}, {&L.w_down, &P.w_down}}) {
      pack(*t, *p, true);
    }
  }
  // The output matrix; a tied one is also the embedding table, which lookups need in f32.
  if (cfg_.tied_embeddings) {
    pack(w_.tok_embd, packed_out_, false);
  } else {
    pack(w_.output, packed_out_, true);
  }
}

int64_t Model::decode_weight_bytes() const {
  const int64_t embd = int64_t{cfg_.n_vocab} * cfg_.n_embd;
  const int64_t n = cfg_.n_params() - (cfg_.tied_embeddings ? 0 : embd);
  if (opt_.weights == WeightType::kF32) return n * 4;
  // Projections in f16; norms and biases (a few thousand floats) in f32.
  int64_t small = 0;
  for (const auto& [name, t] : list_params(cfg_, w_)) {
    if (t->ndim() == 1) small += t->numel();
  }
  return (n - small) * 2 + small * 4;
}

const ops::RopeTable<float>& Model::rope(int n_pos) {
  if (rope_.n_pos < n_pos || rope_.n_rot != cfg_.n_rot) rope_.build(cfg_.n_rot, n_pos, cfg_.rope_inv_freq());
  return rope_;
}

void Model::validate_batch(const Batch& b, const KVCache& cache, std::vector<AttnRun>* runs) const {
  const int T = b.size();
  MLKV_REQUIRE(T > 0, "empty batch");
  MLKV_REQUIRE(b.seq.size() == b.token.size() && b.pos.size() == b.token.size() &&
                   b.logits.size() == b.token.size(),
               "malformed batch: token/seq/pos/logits lengths differ");
  runs->clear();
  std::vector<uint8_t> seen(static_cast<size_t>(cache.n_seq()), 0);
  for (int i = 0; i < T; ++i) {
    const int tok = b.token[i], s = b.seq[i], p = b.pos[i];
    MLKV_REQUIRE(tok >= 0 && tok < cfg_.n_vocab, "token id ", tok, " is outside the vocabulary (",
                 cfg_.n_vocab, " ids)");
    MLKV_REQUIRE(s >= 0 && s < cache.n_seq(), "sequence ", s, " is not a cache slot (the cache has ",
                 cache.n_seq(), ")");
    MLKV_REQUIRE(p < cache.n_ctx(), "context overflow: sequence ", s, " would need position ", p,
                 " but the context holds ", cache.n_ctx(), " tokens");
    if (!runs->empty() && runs->back().seq == s) {
      AttnRun& r = runs->back();
      MLKV_REQUIRE(p == r.pos0 + r.n_rows, "batch positions of sequence ", s,
                   " are not consecutive (got ", p, ", expected ", r.pos0 + r.n_rows, ")");
      ++r.n_rows;
    } else {
      MLKV_REQUIRE(!seen[static_cast<size_t>(s)], "tokens of sequence ", s,
                   " are not contiguous in the batch");
      seen[static_cast<size_t>(s)] = 1;
      MLKV_REQUIRE(p == cache.seq_len(s), "sequence ", s, " continues at position ", p,
                   " but its cache holds ", cache.seq_len(s), " tokens");
      runs->push_back({s, i, 1, p});
    }
  }
}

namespace {

void norm_rows(const ModelConfig& c, const Tensor& w, const Tensor& b, const float* x, float* y, int T) {
  if (c.norm == NormType::kLayerNorm) {
    ops::layernorm_forward<float>(x, w.data(), b.data(), y, nullptr, nullptr, T, c.n_embd,
                                  static_cast<float>(c.norm_eps));
  } else {
    ops::rmsnorm_forward<float>(x, w.data(), y, nullptr, T, c.n_embd, static_cast<float>(c.norm_eps));
  }
}

const float* bias_or_null(const Tensor& t) { return t.empty() ? nullptr : t.data(); }

// y = x W^T + b with W in whichever form the model keeps it.
void linear(const float* x, const Tensor& w32, const std::vector<uint16_t>* w16, const float* b,
            float* y, int T, int K, int N, bool accumulate = false) {
  if (w16 != nullptr && !w16->empty()) {
    ops::linear_forward_f16(x, w16->data(), b, y, T, K, N, accumulate);
  } else {
    ops::linear_forward<float>(x, w32.data(), b, y, T, K, N, accumulate);
  }
}

// Writes rows of k/v [T, g, d] into the cache slot at each row's (seq, pos).
void store_kv(KVCache& cache, int slot, const Batch& b, const float* k, const float* v, int g, int d) {
  const int T = b.size();
  const bool f16 = cache.elem() == DType::kF16;
  for (int i = 0; i < T; ++i) {
    for (int h = 0; h < g; ++h) {
      const float* ks = k + (int64_t{i} * g + h) * d;
      const float* vs = v + (int64_t{i} * g + h) * d;
      const int64_t off = int64_t{b.pos[i]} * d;
      if (f16) {
        f32_to_f16_n(ks, static_cast<uint16_t*>(cache.k_ptr(slot, b.seq[i], h)) + off, static_cast<size_t>(d));
        f32_to_f16_n(vs, static_cast<uint16_t*>(cache.v_ptr(slot, b.seq[i], h)) + off, static_cast<size_t>(d));
      } else {
        std::memcpy(static_cast<float*>(cache.k_ptr(slot, b.seq[i], h)) + off, ks, static_cast<size_t>(d) * 4);
        std::memcpy(static_cast<float*>(cache.v_ptr(slot, b.seq[i], h)) + off, vs, static_cast<size_t>(d) * 4);
      }
    }
  }
}

}  // namespace

void Model::forward(const Batch& b, KVCache& cache, float* logits) {
  std::vector<AttnRun> runs;
  validate_batch(b, cache, &runs);
  const ModelConfig& c = cfg_;
  const int T = b.size(), E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv(), F = c.n_ff;
  const ops::RopeTable<float>& rt = rope(cache.n_ctx());
  auto grow = [](std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  };
  float* x = grow(x_, size_t(T) * E);
  float* xn = grow(xn_, size_t(T) * E);
  float* q = grow(q_, size_t(T) * Q);
  float* k = grow(k_, size_t(T) * KV);
  float* v = grow(v_, size_t(T) * KV);
  float* att = grow(att_, size_t(T) * Q);
  float* h2 = grow(h2_, size_t(T) * E);
  float* up = grow(up_, size_t(T) * F);
  float* gate = c.mlp == MlpType::kSwiGlu ? grow(gate_, size_t(T) * F) : nullptr;

  for (int i = 0; i < T; ++i) {
    std::memcpy(x + int64_t{i} * E, w_.tok_embd.data() + int64_t{b.token[i]} * E, size_t(E) * 4);
  }

  for (int il = 0; il < c.n_layer; ++il) {
    const LayerWeights& L = w_.layers[static_cast<size_t>(il)];
    const PackedLayer* P = packed_.empty() ? nullptr : &packed_[static_cast<size_t>(il)];
    auto p16 = [P](std::vector<uint16_t> PackedLayer::*m) { return P ? &(P->*m) : nullptr; };
    norm_rows(c, L.attn_norm, L.attn_norm_b, x, xn, T);
    linear(xn, L.wq, p16(&PackedLayer::wq), bias_or_null(L.bq), q, T, E, Q);
    ops::rope_forward<float>(q, T, c.n_head, c.n_embd_head, b.pos.data(), rt);
    if (c.owns_kv(il)) {
      const int slot = cache.slot_of_layer(il);
      linear(xn, L.wk, p16(&PackedLayer::wk), bias_or_null(L.bk), k, T, E, KV);
      linear(xn, L.wv, p16(&PackedLayer::wv), bias_or_null(L.bv), v, T, E, KV);
      if (cache.slot_keys_rotated(slot)) ops::rope_forward<float>(k, T, c.n_head_kv, c.n_embd_head, b.pos.data(), rt);
      store_kv(cache, slot, b, k, v, c.n_head_kv, c.n_embd_head);
    }
    attention_forward(c, cache, il, rt, q, runs, att);

    if (c.parallel_residual) {
      // x + attn(ln1 x) + mlp(ln2 x): both branches read the layer's input.
      norm_rows(c, L.ffn_norm, L.ffn_norm_b, x, h2, T);
      linear(att, L.wo, p16(&PackedLayer::wo), bias_or_null(L.bo), x, T, Q, E, /*accumulate=*/true);
    } else {
      linear(att, L.wo, p16(&PackedLayer::wo), bias_or_null(L.bo), x, T, Q, E, /*accumulate=*/true);
      norm_rows(c, L.ffn_norm, L.ffn_norm_b, x, h2, T);
    }
    if (c.mlp == MlpType::kSwiGlu) {
      linear(h2, L.w_gate, p16(&PackedLayer::w_gate), nullptr, gate, T, E, F);
      linear(h2, L.w_up, p16(&PackedLayer::w_up), nullptr, up, T, E, F);
      ops::swiglu_forward<float>(gate, up, up, int64_t{T} * F);
    } else {
      linear(h2, L.w_up, p16(&PackedLayer::w_up), bias_or_null(L.b_up), up, T, E, F);
      ops::gelu_forward<float>(up, up, int64_t{T} * F, c.gelu_tanh);
    }
    linear(up, L.w_down, p16(&PackedLayer::w_down), bias_or_null(L.b_down), x, T, F, E, /*accumulate=*/true);
  }

  for (const AttnRun& r : runs) cache.set_seq_len(r.seq, r.pos0 + r.n_rows);

  // Logits only for the flagged rows.
  int n_out = 0;
  for (int i = 0; i < T; ++i) {
    if (b.logits[i]) std::memcpy(h2 + int64_t{n_out++} * E, x + int64_t{i} * E, size_t(E) * 4);
  }
  if (n_out == 0) return;
  norm_rows(c, w_.out_norm, w_.out_norm_b, h2, xn, n_out);
  linear(xn, w_.output_matrix(), &packed_out_, nullptr, logits, n_out, E, c.n_vocab);
}

}  // namespace mlkv
