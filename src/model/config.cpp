#include "model/config.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/ops.h"

namespace mlkv {

const char* family_name(Family f) {
  return f == Family::kGptNeoX ? "gpt_neox" : "llama";
}
const char* share_rope_name(KvShareRope s) {
  return s == KvShareRope::kPost ? "post" : "pre";
}

KvShareRope parse_share_rope(const std::string& s, const std::string& what) {
  if (s == "post") return KvShareRope::kPost;
  if (s == "pre") return KvShareRope::kPre;
  fail(what, " must be \"post\" or \"pre\" (got \"", s, "\")");
}

namespace {

// Bounds far beyond any real model, so that a corrupt or hostile config is refused before
// anything is sized from it (and the parameter arithmetic stays inside int64).
constexpr int kMaxLayers = 1 << 16;
constexpr double kMaxParams = 1e15;

// The invariants of a layer -> owner map; `prefix` starts every message ("config: " or ""),
// `name` is what the map is called where it came from (kv_source, --kv-source).
void check_kv_map(const std::vector<int>& src, int n_layer, const char* prefix,
                  const char* name) {
  MLKV_REQUIRE(static_cast<int>(src.size()) == n_layer, prefix, name, " has ", src.size(),
               " entries but the model has ", n_layer, " layers");
  for (int il = 0; il < n_layer; ++il) {
    const int s = src[static_cast<size_t>(il)];
    MLKV_REQUIRE(s >= 0, prefix, "kv_source[", il, "] = ", s, " is negative");
    MLKV_REQUIRE(s <= il, prefix, "kv_source[", il, "] = ", s,
                 " points forward (a layer can only use K/V of itself or an earlier layer)");
    MLKV_REQUIRE(src[static_cast<size_t>(s)] == s, prefix, "kv_source[", il, "] = ", s,
                 " points at layer ", s, ", which does not own K/V (kv_source[", s, "] = ",
                 src[static_cast<size_t>(s)], ")");
  }
}

}  // namespace

std::vector<int> ModelConfig::owner_layers() const {
  std::vector<int> owners;
  for (int il = 0; il < n_layer; ++il) {
    if (owns_kv(il)) owners.push_back(il);
  }
  return owners;
}

int ModelConfig::n_kv_layers() const {
  return static_cast<int>(owner_layers().size());
}

int64_t ModelConfig::kv_bytes_per_token(size_t elem_size) const {
  return int64_t{2} * n_kv_layers() * n_head_kv * n_embd_head * static_cast<int64_t>(elem_size);
}

int64_t ModelConfig::kv_bytes_per_token(KvCacheType type) const {
  return int64_t{n_kv_layers()} * n_head_kv * static_cast<int64_t>(type.pair_bytes(n_embd_head));
}

int64_t ModelConfig::mha_kv_bytes_per_token(KvCacheType type) const {
  return int64_t{n_layer} * n_head * static_cast<int64_t>(type.pair_bytes(n_embd_head));
}

int64_t ModelConfig::mha_kv_bytes_per_token(size_t elem_size) const {
  return int64_t{2} * n_layer * n_head * n_embd_head * static_cast<int64_t>(elem_size);
}

double ModelConfig::kv_reduction_vs_mha() const {
  return static_cast<double>(mha_kv_bytes_per_token(1)) /
         static_cast<double>(kv_bytes_per_token(1));
}

bool ModelConfig::is_eos(int token) const {
  return std::find(eos_token_ids.begin(), eos_token_ids.end(), token) != eos_token_ids.end();
}

bool ModelConfig::shares_across_layers() const {
  for (int il = 0; il < n_layer; ++il) {
    if (!owns_kv(il)) return true;
  }
  return false;
}

std::vector<double> ModelConfig::rope_inv_freq() const {
  std::vector<double> f = ops::rope_inv_freq(n_rot, rope_theta);
  const RopeScaling& s = rope_scaling;
  for (double& v : f) {
    if (s.type == RopeScaling::Type::kLinear) {
      v /= s.factor;
    } else if (s.type == RopeScaling::Type::kLlama3) {
      // Wavelengths longer than the original context / low_freq_factor are stretched by factor,
      // those shorter than original / high_freq_factor kept, the band between interpolated.
      const double wavelen = 2 * M_PI / v, orig = s.original_max_position_embeddings;
      if (wavelen > orig / s.low_freq_factor) {
        v /= s.factor;
      } else if (wavelen >= orig / s.high_freq_factor) {
        const double t =
            (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        v = (1 - t) * v / s.factor + t * v;
      }
    }
  }
  return f;
}

int64_t ModelConfig::n_params() const {
  const int64_t E = n_embd, V = n_vocab, F = n_ff, Q = n_embd_q(), KV = n_embd_kv();
  const int64_t norm_params = norm == NormType::kLayerNorm ? 2 * E : E;
  int64_t total = V * E;                 // token embedding
  if (!tied_embeddings) total += V * E;  // output matrix
  total += norm_params;                  // final norm
  for (int il = 0; il < n_layer; ++il) {
    total += 2 * norm_params;  // attention and MLP norms
    total += Q * E + E * Q;    // wq, wo
    if (attn_bias) total += Q + E;
    if (owns_kv(il)) {
      total += 2 * KV * E;  // wk, wv
      if (attn_bias) total += 2 * KV;
    }
    const int64_t n_mats = mlp == MlpType::kSwiGlu ? 3 : 2;
    total += n_mats * E * F;
    if (mlp_bias) total += (n_mats - 1) * F + E;
  }
  return total;
}

void ModelConfig::validate() const {
  MLKV_REQUIRE(n_vocab > 0, "config: vocab_size must be positive (got ", n_vocab, ")");
  MLKV_REQUIRE(n_embd > 0, "config: hidden_size must be positive (got ", n_embd, ")");
  MLKV_REQUIRE(n_layer > 0, "config: num_hidden_layers must be positive (got ", n_layer, ")");
  MLKV_REQUIRE(n_head > 0, "config: num_attention_heads must be positive (got ", n_head, ")");
  MLKV_REQUIRE(n_head_kv > 0, "config: num_key_value_heads must be positive (got ", n_head_kv, ")");
  MLKV_REQUIRE(n_head % n_head_kv == 0, "config: num_attention_heads (", n_head,
               ") is not divisible by num_key_value_heads (", n_head_kv, ")");
  MLKV_REQUIRE(n_embd_head > 0 && n_embd_head % 2 == 0,
               "config: head size must be a positive even number (got ", n_embd_head, ")");
  MLKV_REQUIRE(n_ff > 0, "config: intermediate_size must be positive (got ", n_ff, ")");
  MLKV_REQUIRE(n_ctx > 0, "config: max_position_embeddings must be positive (got ", n_ctx, ")");
  MLKV_REQUIRE(n_layer <= kMaxLayers, "config: num_hidden_layers (", n_layer,
               ") is implausibly large (at most ", kMaxLayers, ")");
  {
    // n_params() in floating point first: it must not overflow.
    const double E = n_embd, Q = static_cast<double>(n_head) * n_embd_head,
                 KV = static_cast<double>(n_head_kv) * n_embd_head;
    const double per_layer = 2 * Q * E + 2 * KV * E + 3.0 * E * n_ff + 4 * E + 3.0 * n_ff + Q;
    const double total = 2.0 * n_vocab * E + n_layer * per_layer;
    MLKV_REQUIRE(total <= kMaxParams, "config: the geometry calls for ~", total,
                 " parameters, implausibly many (corrupt config?)");
  }
  if (rope_scaling.type != RopeScaling::Type::kNone) {
    const RopeScaling& s = rope_scaling;
    MLKV_REQUIRE(s.factor > 0 && std::isfinite(s.factor),
                 "config: rope_scaling.factor must be positive (got ", s.factor, ")");
    if (s.type == RopeScaling::Type::kLlama3) {
      MLKV_REQUIRE(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor,
                   "config: rope_scaling needs 0 < low_freq_factor < high_freq_factor (got ",
                   s.low_freq_factor, ", ", s.high_freq_factor, ")");
      MLKV_REQUIRE(s.original_max_position_embeddings > 0,
                   "config: rope_scaling.original_max_position_embeddings must be positive");
    }
  }
  MLKV_REQUIRE(n_rot >= 0 && n_rot <= n_embd_head && n_rot % 2 == 0, "config: rotary dims (", n_rot,
               ") must be even and at most the head size (", n_embd_head, ")");
  MLKV_REQUIRE(rope_theta > 0, "config: rotary base must be positive");
  MLKV_REQUIRE(norm_eps >= 0, "config: norm epsilon must not be negative");
  check_kv_map(kv_source, n_layer, "config: ", "kv_source");
  MLKV_REQUIRE(bos_token_id < n_vocab, "config: bos_token_id ", bos_token_id,
               " is outside the vocabulary (", n_vocab, " ids)");
  for (int id : eos_token_ids) {
    MLKV_REQUIRE(id >= 0 && id < n_vocab, "config: eos_token_id ", id,
                 " is outside the vocabulary (", n_vocab, " ids)");
  }
}

std::string ModelConfig::summary() const {
  return cat(family_name(family), " L=", n_layer, " E=", n_embd, " H=", n_head, " G=", n_head_kv,
             " M=", n_kv_layers(), " d_head=", n_embd_head, " ff=", n_ff, " V=", n_vocab,
             " share=", share_rope_name(share_rope));
}

std::string layer_list(const std::vector<int>& layers) {
  std::string s;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (i > 0) s += ',';
    s += std::to_string(layers[i]);
  }
  return s;
}

std::string sharing_scheme_name(const ModelConfig& c) {
  const int m = c.n_kv_layers(), g = c.n_head_kv;
  if (m < c.n_layer) return cat("MLKV (", m, " KV layers x ", g, " KV heads)");
  if (g == c.n_head) return "MHA";
  if (g == 1) return "MQA";
  return cat("GQA (", g, " KV heads)");
}

std::vector<int> owners_by_authors_rule(int n_layer, int n_kv_layers) {
  MLKV_REQUIRE(n_kv_layers >= 1 && n_kv_layers <= n_layer, "num_key_value_layers (", n_kv_layers,
               ") must be between 1 and the number of layers (", n_layer, ")");
  std::vector<int> owners = {0};
  const double step = static_cast<double>(n_layer) / static_cast<double>(n_kv_layers);
  for (int i = 0; i < n_kv_layers - 1; ++i) {
    owners.push_back(static_cast<int>(static_cast<double>(i + 1) * step));
  }
  return owners;
}

std::vector<int> kv_source_from_owners(int n_layer, const std::vector<int>& owners) {
  MLKV_REQUIRE(!owners.empty() && owners[0] == 0, "the first KV owner must be layer 0");
  for (size_t i = 1; i < owners.size(); ++i) {
    MLKV_REQUIRE(owners[i] > owners[i - 1], "KV owner layers must be strictly increasing");
  }
  MLKV_REQUIRE(owners.back() < n_layer, "KV owner layer ", owners.back(),
               " does not exist (the model has ", n_layer, " layers)");
  std::vector<int> src(static_cast<size_t>(n_layer));
  size_t k = 0;
  for (int il = 0; il < n_layer; ++il) {
    while (k + 1 < owners.size() && owners[k + 1] <= il) ++k;
    src[static_cast<size_t>(il)] = owners[k];
  }
  return src;
}

std::vector<int> build_kv_source(const KvSharingSpec& s) {
  const bool cfg = s.origin == KvSpecOrigin::kConfig;
  const char* layers_name = cfg ? "num_key_value_layers" : "--kv-layers";
  const char* owners_name = cfg ? "owners" : "--owners";
  const char* map_name = cfg ? "kv_source" : "--kv-source";
  const int L = s.n_layer;
  MLKV_REQUIRE(L > 0, "the number of layers must be positive (got ", L, ")");
  MLKV_REQUIRE(L <= kMaxLayers, "the number of layers (", L, ") is implausibly large (at most ",
               kMaxLayers, ")");
  const int n_given =
      (s.kv_layers != 0 ? 1 : 0) + (s.owners.empty() ? 0 : 1) + (s.kv_source.empty() ? 0 : 1);
  MLKV_REQUIRE(n_given <= 1, "give at most one of ", layers_name, ", ", owners_name, " and ",
               map_name);
  if (s.kv_layers != 0) {
    // Config keys get owners_by_authors_rule's own message, which names num_key_value_layers.
    MLKV_REQUIRE(cfg || (s.kv_layers >= 1 && s.kv_layers <= L), layers_name, " ", s.kv_layers,
                 " is out of range: the model has ", L, " layers (1 <= M <= ", L, ")");
    return kv_source_from_owners(L, owners_by_authors_rule(L, s.kv_layers));
  }
  if (!s.owners.empty()) {
    const std::vector<int>& o = s.owners;
    MLKV_REQUIRE(o[0] == 0, owners_name, " must start at layer 0 (got ", layer_list(o),
                 "): layer 0 has no earlier layer to read K/V from");
    for (size_t i = 1; i < o.size(); ++i) {
      MLKV_REQUIRE(o[i] > o[i - 1], owners_name, " must be strictly increasing (got ",
                   layer_list(o), ")");
    }
    MLKV_REQUIRE(o.back() < L, owners_name, " names layer ", o.back(), " but the model has ", L,
                 " layers (0..", L - 1, ")");
    return kv_source_from_owners(L, o);
  }
  if (!s.kv_source.empty()) {
    check_kv_map(s.kv_source, L, "", map_name);
    return s.kv_source;
  }
  std::vector<int> identity(static_cast<size_t>(L));
  for (int il = 0; il < L; ++il) identity[static_cast<size_t>(il)] = il;
  return identity;
}

ModelConfig preset_gpt_neox() {
  ModelConfig c;
  c.family = Family::kGptNeoX;
  c.norm = NormType::kLayerNorm;
  c.mlp = MlpType::kGelu;
  c.parallel_residual = true;
  c.attn_bias = true;
  c.mlp_bias = true;
  c.tied_embeddings = false;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;
  c.bos_token_id = 0;
  c.eos_token_ids = {0};
  return c;
}

ModelConfig preset_llama() {
  ModelConfig c;
  c.family = Family::kLlama;
  c.norm = NormType::kRmsNorm;
  c.mlp = MlpType::kSwiGlu;
  c.parallel_residual = false;
  c.attn_bias = false;
  c.mlp_bias = false;
  c.tied_embeddings = false;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;
  return c;
}

}  // namespace mlkv
