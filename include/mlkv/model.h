// The public model API: describe a checkpoint (ModelInfo), load it (Engine::load), score token
// sequences, get logits, and generate continuations of several prompts over one shared KV cache.
// Models are Hugging Face folders (config.json + safetensors, GPT-NeoX/Pythia or Llama, any
// KV-sharing scheme) or llama2.c .bin files. Everything here is plain data or a pimpl class: no
// engine header leaks through. What this is not: continuous batching of requests that arrive over
// time (mlkv/session.h), training, conversion or evaluation (the mlkv tool).
//
// Units: token ids are int32 in [0, n_vocab); log-probabilities are natural logs (nats); bytes
// are bytes. Cache and weight element types are spelled "f32" or "f16". Every failure the caller
// can cause (files, options, token ids, context overflow) throws mlkv::Error naming the problem.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mlkv/error.h"
#include "mlkv/generation.h"
#include "mlkv/sampling.h"
#include "mlkv/tokenizer.h"

namespace mlkv {

// A copy of a model's configuration as plain data.
struct ModelInfo {
  std::string family;  // "gpt_neox" or "llama"
  int n_vocab = 0;     // vocabulary size (logits per token)
  int n_embd = 0;      // hidden size
  int n_layer = 0;
  int n_head = 0;       // query heads per layer
  int n_head_kv = 0;    // K/V heads per owner layer (GQA/MQA when < n_head)
  int n_embd_head = 0;  // head size
  int n_ff = 0;         // MLP width
  int n_ctx = 0;        // longest context the model was made for (max_position_embeddings)
  int n_rot = 0;        // rotary dims per head
  std::string norm;     // "layernorm" or "rmsnorm"
  std::string mlp;      // "gelu" or "swiglu"
  bool parallel_residual = false;
  bool tied_embeddings = false;
  std::vector<int> kv_source;     // [n_layer]: the layer whose K/V layer l attends with (<= l)
  std::vector<int> owner_layers;  // layers that own K/V (kv_source[l] == l), ascending
  int n_kv_layers = 0;            // owner_layers.size()
  std::string kv_share_rope;      // "post" or "pre": keys consumers read (after / before rotary)
  int bos_token_id = -1;          // -1: none
  int eos_token_id = -1;          // the first of eos_token_ids; -1: none
  std::vector<int> eos_token_ids;  // every id that ends a generation (any one stops it): the
                                   // folder's generation_config.json when present, else
                                   // config.json's eos_token_id (an int or a list)
  int64_t n_params = 0;
  std::string scheme;   // "MHA", "GQA (g KV heads)", "MQA" or "MLKV (m KV layers x g KV heads)"
  std::string summary;  // one line: "llama L=4 E=64 H=4 G=4 M=4 d_head=16 ..."

  // Bytes of K and V cached per token, all owner layers: m * g * (row bytes of K + of V), a row
  // being d_head values in the format (q8_0: 34 bytes per 32 values, q4_0: 18). cache_type as
  // GenerationOptions::cache_type; anything else, or a block format that does not divide d_head,
  // throws mlkv::Error.
  int64_t kv_bytes_per_token(const std::string& cache_type = "f32") const;
  // The same model without sharing (every layer, every head): 2 * l * h * d_head * element size.
  int64_t mha_kv_bytes_per_token(const std::string& cache_type = "f32") const;
  // mha_kv_bytes_per_token / kv_bytes_per_token = l * h / (m * g).
  double kv_reduction_vs_mha() const;
  // Bytes of a cache for `batch` sequences of `ctx` tokens: batch * ctx * kv_bytes_per_token.
  // Throws mlkv::Error unless ctx > 0 and batch > 0.
  int64_t kv_cache_bytes(int ctx, int batch, const std::string& cache_type = "f32") const;
};

// The configuration of a model without loading its weights (a folder's config.json; a llama2.c
// file is read whole). Throws mlkv::Error for a missing, malformed or unsupported model.
ModelInfo read_model_info(const std::string& path);

enum class TokenizerMode {
  kAuto,      // load one if it can be found and read; has_tokenizer() tells
  kRequired,  // not finding or not reading one throws mlkv::Error
  kNone,      // do not look (token-id use only)
};

struct LoadOptions {
  std::string weights = "f32";  // in-memory projection weights: "f32", or "f16" (half the bytes
                                // a decode step reads; compute stays f32)
  int threads = 0;              // compute threads for the whole process; 0: all cores
  std::string device = "cpu";   // only "cpu" in this build
  std::string tokenizer = "";   // tokenizer file or folder; "": the model's folder (or, for a
                                // model file, the folder it is in)
  TokenizerMode tokenizer_mode = TokenizerMode::kAuto;
  // Called with each warning about a model that loads anyway (a tied model whose file also holds
  // an output matrix that differs from the embedding: the embedding is used); empty: printed on
  // stderr as "mlkv: warning: ...".
  std::function<void(const std::string&)> on_warning = {};
};

class Session;

// A loaded model (weights in memory, optional tokenizer). Move-only. Not thread-safe: one call at
// a time (a Session running on another thread counts as a call for as long as it runs).
class Engine {
 public:
  // Loads the model at path. Throws mlkv::Error for a missing or corrupt model, weights other
  // than "f32"/"f16", a device other than "cpu" ("device 'cuda' is not available: this build has
  // no CUDA backend"), or (TokenizerMode::kRequired) no readable tokenizer.
  static Engine load(const std::string& path, const LoadOptions& opt = {});

  Engine(Engine&&) noexcept;
  Engine& operator=(Engine&&) noexcept;
  ~Engine();

  const ModelInfo& info() const;
  bool has_tokenizer() const;
  // Throws mlkv::Error when there is none.
  const Tokenizer& tokenizer() const;

  // Bytes of a KV cache for `batch` sequences of `ctx` tokens (info().kv_cache_bytes).
  int64_t kv_bytes(int ctx, int batch, const std::string& cache_type = "f32") const;

  // log p(tokens[i+1] | tokens[0..i]) for i in [0, n-1): n-1 values, nats. cached = false: one
  // pass over the sequence; true: token-by-token decoding through a KV cache of cache_type
  // (the same numbers within f32 rounding). Throws mlkv::Error for fewer than 2 tokens, more
  // than n_ctx + 1, or an id outside the vocabulary.
  std::vector<float> score(const std::vector<int32_t>& tokens, bool cached = false,
                           const std::string& cache_type = "f32");

  // Next-token logits after every prefix: [n, n_vocab] row-major, row i for tokens[0..i]
  // (unnormalised, f32). Throws mlkv::Error for an empty sequence, more than n_ctx tokens or
  // an id outside the vocabulary.
  std::vector<float> logits(const std::vector<int32_t>& tokens);

  // Continuations of every prompt (token ids), generated together over one KV cache; results
  // index-aligned with prompts. on_token(prompt index, token id) is called for every generated
  // token as it is sampled. Throws mlkv::Error ("prompt i: ...") for an empty prompt, ids outside
  // the vocabulary, a prompt longer than the context, or bad sampling parameters.
  std::vector<Generation> generate(const std::vector<std::vector<int32_t>>& prompts,
                                   const GenerationOptions& opt = {},
                                   const std::function<void(int, int32_t)>& on_token = {});

 private:
  friend class Session;
  friend struct EngineAccess;  // src/api: the calls of mlkv/evaluate.h reach the model through it
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlkv
