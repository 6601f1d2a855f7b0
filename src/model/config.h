// ModelConfig: everything that shapes a decoder, as plain data. GPT-NeoX/Pythia and Llama are
// presets of this one struct; the single layer loop (model/forward.cpp, train/) reads its flags.
// Cross-layer KV sharing is explicit: kv_source[layer] names the owner layer whose K/V it attends
// with. validate() enforces the invariants every other module relies on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

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
  int eos_token_id = -1;
  DType file_dtype = DType::kF32;  // dtype of the weights in the checkpoint (torch_dtype)

  // --- derived ---
  bool owns_kv(int il) const { return kv_source[static_cast<size_t>(il)] == il; }
  std::vector<int> owner_layers() const;
  int n_kv_layers() const;
  int n_embd_q() const { return n_head * n_embd_head; }
  int n_embd_kv() const { return n_head_kv * n_embd_head; }
  // Bytes of K and V stored per token (all owner layers): 2 * m * g * d_head * elem_size.
  int64_t kv_bytes_per_token(size_t elem_size) const;
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

// The MLKV authors' owner rule for m KV layers out of n_layer: [0] + [int((i+1) * (L/m))], with
// the division in floating point exactly as their code does it.
std::vector<int> owners_by_authors_rule(int n_layer, int n_kv_layers);
// kv_source from a sorted owner list: each layer uses the nearest owner at or below it.
std::vector<int> kv_source_from_owners(int n_layer, const std::vector<int>& owners);

// Presets with the families' usual defaults (sizes still to be set by the caller).
ModelConfig preset_gpt_neox();
ModelConfig preset_llama();

}  // namespace mlkv
