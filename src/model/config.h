// ModelConfig: everything that shapes a decoder, as plain data. GPT-NeoX/Pythia and Llama are
// presets of this one struct; the single layer loop (model/forward.cpp, train/) reads its flags.
// Cross-layer KV sharing is explicit: kv_source[layer] names the owner layer whose K/V it attends
// with. validate() enforces the invariants every other module relies on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kv/kv_codec.h"

namespace mlkv {

enum class Family { kGptNeoX, kLlama };
enum class NormType { kLayerNorm, kRmsNorm };
enum class MlpType { kGelu, kSwiGlu };   // GELU: up -> gelu -> down; SwiGLU: silu(gate)*up -> down
enum class KvShareRope { kPost, kPre };  // which keys consumer layers read from their owner

// rope_scaling of config.json. linear: every frequency divided by factor (positions stretched);
// llama3 (Llama 3.1+): low frequencies divided by factor, high ones kept, a smooth blend between.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

const char* family_name(Family f);           // "gpt_neox", "llama"
const char* share_rope_name(KvShareRope s);  // "post", "pre"
// The one parser of the kv_share_rope spellings "post" and "pre" (config.json, --share). Throws
// mlkv::Error `<what> must be "post" or "pre" (got "<s>")`; `what` names the key or option.
KvShareRope parse_share_rope(const std::string& s, const std::string& what = "kv_share_rope");

struct ModelConfig {
  Family family = Family::kLlama;
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int n_embd_head = 0;  // head size; n_embd / n_head unless the config says otherwise
  int n_ff = 0;
  int n_ctx = 2048;  // max_position_embeddings: the longest context the model was made for
  int n_rot = 0;     // rotary dims per head (the first n_rot dims; rotate-half layout)
  double rope_theta = 10000.0;  // double: written back to config.json exactly as read
  RopeScaling rope_scaling;
  double norm_eps = 1e-5;

  NormType norm = NormType::kRmsNorm;
  MlpType mlp = MlpType::kSwiGlu;
  bool gelu_tanh = false;          // hidden_act "gelu_new"/"gelu_pytorch_tanh": tanh approximation
  bool parallel_residual = false;  // x + attn(ln1 x) + mlp(ln2 x)
  bool attn_bias = false;          // biases on q/k/v/o projections
  bool mlp_bias = false;           // biases on the MLP projections
  bool tied_embeddings = false;    // output matrix = token embedding

  // Cross-layer sharing: kv_source[il] = owner layer (<= il, kv_source[owner] == owner).
  std::vector<int> kv_source;
  KvShareRope share_rope = KvShareRope::kPost;

  int bos_token_id = -1;
  // Every id that ends a generation (Llama 3 lists several; any of them stops). Empty: none.
  // From config.json's eos_token_id (an int or a list), replaced by generation_config.json's
  // when that file is present (io/hf_config.h).
  std::vector<int> eos_token_ids;
  DType file_dtype = DType::kF32;  // dtype of the weights in the checkpoint (torch_dtype)

  // --- derived ---
  // The first EOS id (the document separator, a scoring prefix), -1 when there is none.
  int eos_token_id() const { return eos_token_ids.empty() ? -1 : eos_token_ids.front(); }
  bool is_eos(int token) const;
  bool owns_kv(int il) const { return kv_source[static_cast<size_t>(il)] == il; }
  std::vector<int> owner_layers() const;
  int n_kv_layers() const;
  int n_embd_q() const { return n_head * n_embd_head; }
  int n_embd_kv() const { return n_head_kv * n_embd_head; }
  // Bytes of K and V stored per token (all owner layers): 2 * m * g * d_head * elem_size.
  int64_t kv_bytes_per_token(size_t elem_size) const;
  // The same for keys and values in cache formats (quantized rows include their scales):
  // m * g * (k_row_bytes + v_row_bytes).
  int64_t kv_bytes_per_token(KvCacheType type) const;
  // The same for this model without any sharing (every layer owns n_head KV heads):
  // 2 * l * h * d_head * elem_size bytes per token.
  int64_t mha_kv_bytes_per_token(size_t elem_size) const;
  int64_t mha_kv_bytes_per_token(KvCacheType type) const;  // l * h * (k_row_bytes + v_row_bytes)
  // How many times smaller the cache is than MHA's: l * h / (m * g) (independent of the element).
  double kv_reduction_vs_mha() const;
  int64_t n_params() const;
  // Rotary inverse frequencies of the n_rot / 2 dimension pairs, scaling applied.
  std::vector<double> rope_inv_freq() const;
  // True when some layer reads another layer's K/V.
  bool shares_across_layers() const;

  // Checks every invariant (positive sizes, head divisibility, kv_source well formed); throws
  // mlkv::Error naming the problem.
  void validate() const;
  // One-line human summary: "llama L=4 E=64 H=4 KV=4x4 ...".
  std::string summary() const;
};

// "0,3,6": a list of layers as the options spell it (messages; printed in brackets by the CLI).
std::string layer_list(const std::vector<int>& layers);

// How the model shares K/V, for people: "MHA", "GQA (g KV heads)", "MQA", or
// "MLKV (m KV layers x g KV heads)" when some layer reads another layer's K/V.
std::string sharing_scheme_name(const ModelConfig& cfg);

// The MLKV authors' owner rule for m KV layers out of n_layer: [0] + [int((i+1) * (L/m))], with
// the division in floating point exactly as their code does it.
std::vector<int> owners_by_authors_rule(int n_layer, int n_kv_layers);
// kv_source from a sorted owner list: each layer uses the nearest owner at or below it.
std::vector<int> kv_source_from_owners(int n_layer, const std::vector<int>& owners);

// Where a KvSharingSpec came from, which sets the wording of its errors: command-line options
// (--kv-layers, --owners, --kv-source) or config.json keys (num_key_value_layers, kv_source).
enum class KvSpecOrigin { kOptions, kConfig };

// The ways to say which layers own K/V. At most one of kv_layers, owners and kv_source is given;
// none means identity (every layer owns its K/V: MHA/GQA/MQA).
struct KvSharingSpec {
  int n_layer = 0;
  int kv_layers = 0;                // m owners by the authors' rule (1 <= m <= n_layer); 0: none
  std::vector<int> owners = {};     // explicit owner layers, strictly increasing, from 0
  std::vector<int> kv_source = {};  // explicit layer -> owner map: n_layer entries
  KvSpecOrigin origin = KvSpecOrigin::kOptions;
};

// The one builder of kv_source (config.json, conversion, presets, training, imports): returns a
// map of n_layer entries with kv_source[l] <= l and kv_source[kv_source[l]] == kv_source[l].
// Throws mlkv::Error naming the option or key for two sources at once, m out of range, owners
// not starting at 0 / not increasing / past the last layer, a map of the wrong length, pointing
// forward or at a layer that does not own K/V.
std::vector<int> build_kv_source(const KvSharingSpec& spec);

// Presets with the families' usual defaults (sizes still to be set by the caller).
ModelConfig preset_gpt_neox();
ModelConfig preset_llama();

}  // namespace mlkv
