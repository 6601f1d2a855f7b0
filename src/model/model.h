// Model: config + weights + rotary tables, and the inference forward pass over a batch of tokens
// that reads and extends a KVCache. One layer loop serves both families and every sharing scheme
// (model/forward.cpp); attention over the cache is in model/attention.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/hf_model.h"
#include "kernels/ops.h"
#include "kv/kv_cache.h"

namespace mlkv {

// A batch of tokens from one or more sequences. Tokens of one sequence must be contiguous, in
// increasing consecutive positions, starting at the sequence's current cache length: a prompt
// is a run of many tokens (prefill), a decode step is one token per sequence.
struct Batch {
  std::vector<int32_t> token;   // [T]
  std::vector<int32_t> seq;     // [T] cache sequence slot
  std::vector<int32_t> pos;     // [T] position in that sequence
  std::vector<uint8_t> logits;  // [T] 1: produce logits for this token

  void add(int32_t tok, int32_t s, int32_t p, bool want_logits) {
    token.push_back(tok);
    seq.push_back(s);
    pos.push_back(p);
    logits.push_back(want_logits ? 1 : 0);
  }
  void clear() {
    token.clear();
    seq.clear();
    pos.clear();
    logits.clear();
  }
  int size() const { return static_cast<int>(token.size()); }
  int n_outputs() const;
};

// Attention work: the rows of one sequence inside a batch.
struct AttnRun {
  int seq;     // cache sequence slot
  int row0;    // first row in the batch
  int n_rows;  // consecutive rows
  int pos0;    // position of the first row
};

// How the forward pass stores its projection matrices. f16 halves the bytes a decode step
// streams (and the resident size); compute stays f32, the embedding table stays f32.
enum class WeightType { kF32, kF16 };

struct ModelOptions {
  WeightType weights = WeightType::kF32;
};

class Model {
 public:
  explicit Model(LoadedModel m, const ModelOptions& opt = {});
  static Model load(const std::string& path, const ModelOptions& opt = {}) {
    return Model(load_model(path), opt);
  }

  const ModelConfig& config() const { return cfg_; }
  // With WeightType::kF16 the projection matrices live only in packed form and these f32
  // tensors are empty; norms, biases and the embedding table are always f32.
  const ModelWeights& weights() const { return w_; }
  WeightType weight_type() const { return opt_.weights; }
  // Bytes of weights one decode step streams (everything but the embedding table).
  int64_t decode_weight_bytes() const;

  // Runs the batch through the model, writing each token's K/V into the cache (owner layers
  // only) and advancing the sequences' lengths. logits: [batch.n_outputs(), n_vocab], one row per
  // token flagged in batch.logits, in batch order. Throws mlkv::Error for a token id outside the
  // vocabulary, a position past the cache's context, or a malformed batch.
  void forward(const Batch& batch, KVCache& cache, float* logits);

 private:
  void validate_batch(const Batch& b, const KVCache& cache, std::vector<AttnRun>* runs) const;
  const ops::RopeTable<float>& rope(int n_pos);

  // f16 copies of the projection matrices (WeightType::kF16 only).
  struct PackedLayer {
    std::vector<uint16_t> wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  void pack_f16();

  ModelConfig cfg_;
  ModelOptions opt_;
  ModelWeights w_;
  std::vector<PackedLayer> packed_;
  std::vector<uint16_t> packed_out_;
  ops::RopeTable<float> rope_;
  // Scratch reused across calls: grown, never shrunk.
  std::vector<float> x_, xn_, q_, k_, v_, att_, h2_, up_, gate_;
};

// Attention of every run's query rows against the cache slot of layer il (see attention.cpp).
void attention_forward(const ModelConfig& cfg, KVCache& cache, int il, const ops::RopeTable<float>& rope,
                       const float* q, const std::vector<AttnRun>& runs, float* out);

}  // namespace mlkv
