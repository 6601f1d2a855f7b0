// Model: config + weights + rotary tables on a backend, and the inference forward pass over a
// batch of tokens that reads and extends a KVCache. It runs the one layer loop
// (model/transformer.h) with one scratch set of activations and an attention context that stores
// each owner layer's K/V into the cache and attends over it (the backend's attention_cached).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kv/kv_cache.h"
#include "model/transformer.h"
#include "model/weights.h"

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

using ops::AttnRun;

// How the forward pass stores its projection matrices. f16 and bf16 halve the bytes a decode step
// streams (and the resident size), q8_0 (llama.cpp's blocks of 32 int8 and an f16 scale,
// core/quant.h: 34 bytes per 32 values) takes 0.53 of f16's; accumulation stays f32, the
// embedding table stays f32. On the CPU f16 / bf16 values are widened exactly to f32 and
// multiplied in f32, and q8_0 weights multiply the activations rounded to q8 blocks (as llama.cpp
// does); on the GPU bf16 products round the activations to bf16 too, and q8_0 is CPU-only.
enum class WeightType { kF32, kF16, kBF16, kQ8_0 };

struct ModelOptions {
  WeightType weights = WeightType::kF32;
  Device device = Device::kCpu;
  // f32, f16 and bf16 matrices on the CPU are stored in panels of 16 rows (DType::kF32P16,
  // kF16P16, kBF16P16, core/quant.h), the layout the decode GEMV streams fastest
  // (kernels/cpu/gemv_panels-inl.h); the same values, the same bytes. false keeps them row-major
  // (the embedding table, and a tied f32 output matrix, always are).
  bool panels = true;
};

class Model {
 public:
  // Throws mlkv::Error for an invalid config or a device without a backend.
  explicit Model(LoadedModel m, const ModelOptions& opt = {});
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) = delete;

  const ModelConfig& config() const { return cfg_; }
  // With WeightType::kF16 (kBF16, kQ8_0) the projection matrices (and the output matrix) are F16
  // (BF16, Q8_0) tensors; norms, biases and the embedding table are always f32.
  const ModelWeights& weights() const { return w_; }
  WeightType weight_type() const { return opt_.weights; }
  Device device() const { return opt_.device; }
  // Bytes of weights one decode step streams (everything but the embedding table).
  int64_t decode_weight_bytes() const;

  // A KV cache for this model on its device: n_seq sequences of n_ctx positions (block_size 0:
  // one contiguous block per sequence; see kv/kv_cache.h).
  KVCache new_cache(int n_seq, int n_ctx, KvCacheType type = {}, int block_size = 0,
                    int n_blocks = 0) const;

  // Runs the batch through the model, writing each token's K/V into the cache (owner layers
  // only) and advancing the sequences' lengths. logits: host [batch.n_outputs(), n_vocab], one row
  // per token flagged in batch.logits, in batch order. Throws mlkv::Error for a token id outside
  // the vocabulary, a position past the cache's context, or a malformed batch.
  void forward(const Batch& batch, KVCache& cache, float* logits);

  // Decode steps as recorded op sequences (CUDA graphs, on backends that have them): a batch of
  // one token per sequence runs normally the first time its shape is seen (batch size, which
  // rows want logits, the cache), is recorded the second time, and from then on is replayed
  // after the host work of its ops (same results, bit for bit; one launch instead of one per
  // op). Where the backend supports it: on with MLKV_CUDA_GRAPHS=1 or set_graphs(true) (off by
  // default until verified on a GPU).
  void set_graphs(bool on);
  bool graphs() const;
  // Steps that were replayed (or recorded and run) as a graph so far.
  int64_t graph_launches() const;

  // When set, forward() adds every op's wall time to *p (model/transformer.h's OpProfile: the
  // embedding, each layer's norms, projections, attention and MLP, and the output head with its
  // final norm). Timed on the calling thread: meaningful on the CPU, whose ops finish before they
  // return. nullptr stops it.
  void set_profile(OpProfile* p);

 private:
  struct Scratch;
  struct Graphs;
  void validate_batch(const Batch& b, const KVCache& cache, std::vector<AttnRun>* runs) const;
  const ops::RopeTable<float>& rope(int n_pos);
  // The device work of a forward pass: every op from the embedding to the logits of `rows`
  // (into `out`: host memory on the CPU, the scratch logits on a device).
  void issue_ops(const Batch& b, KVCache& cache, const std::vector<AttnRun>& runs,
                 const ops::RopeTable<float>& rt, const std::vector<int32_t>& rows, float* out);

  ModelConfig cfg_;
  ModelOptions opt_;
  ModelWeights w_;
  Tensor output_f16_;  // f16/bf16 copy of a tied output matrix (the embedding stays f32 for lookups)
  std::unique_ptr<Transformer<float>> net_;
  ops::RopeTable<float> rope_;
  std::unique_ptr<Scratch> scratch_;  // activations, grown with the batch, never shrunk
  std::unique_ptr<Graphs> graphs_;    // recorded decode steps (backends with graphs only)
};

}  // namespace mlkv
