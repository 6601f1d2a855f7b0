// The training graph: the forward pass keeping activations, and the backward pass, of the whole
// decoder, for both families and every KV sharing scheme, templated on the float type (float
// trains; double is the gradient-check path on the scalar reference). It runs the same layer loop
// as inference (model/transformer.h); what is its own is where activations are kept (one set per
// layer, in an arena allocated at construction: no allocation per step), where keys and values
// come from (the owner layers' saved buffers, not a cache), and the backward pass.
//
// Semantics are those of inference: the gradients of every consumer layer flow into its owner's
// K/V projections (consumers run backward before their owner and add into the owner's gradient
// accumulators: w.r.t. rotated keys for readers of rotated keys, raw keys for pre-sharing
// consumers); attention scores are recomputed in the backward pass from the saved softmax
// normaliser; the logits exist only for a chunk of rows at a time (output layer and cross-entropy
// fused, forward and backward). arena_bytes() gives the exact arena size; docs/TRAINING.md has the
// formula.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"

namespace mlkv::train {

using mlkv::Op;
using mlkv::op_name;
using mlkv::OpProfile;

template <typename T>
class TrainGraph {
 public:
  // Buffers for micro-batches of `batch` rows of `ctx` positions, on the device of `be`.
  TrainGraph(const ModelConfig& cfg, int batch, int ctx, Backend<T>& be = backend<T>());
  ~TrainGraph();

  int batch() const { return batch_; }
  int ctx() const { return ctx_; }

  // rows: host [batch, ctx + 1] token ids; row b predicts rows[b][1..ctx] from rows[b][0..ctx-1].
  // Returns the SUM of the batch * ctx next-token cross-entropies (nats). When grads is not null,
  // adds grad_scale * d(sum)/d(parameter) into *grads (same layout and element type as w, T).
  // n_rows (1..batch, default batch) runs a smaller batch in the same buffers.
  // Throws mlkv::Error for a token id outside the vocabulary.
  double forward_backward(const ModelWeights& w, const int32_t* rows, ModelWeights* grads,
                          T grad_scale, int n_rows = -1);

  // Bytes of the activation arena and scratch for this geometry (elem = sizeof(T)), not counting
  // the per-thread attention blocks (2 * 64 * ctx + ctx elements per thread).
  static int64_t arena_bytes(const ModelConfig& cfg, int batch, int ctx, size_t elem);
  // What this graph holds now (equals arena_bytes after the first backward pass).
  int64_t allocated_bytes() const;

  // When set, forward_backward adds its per-op wall times here.
  OpProfile* profile = nullptr;

 private:
  struct Arena;
  class Attention;
  double head(const ModelWeights& w, ModelWeights* grads, T grad_scale);

  ModelConfig cfg_;
  int batch_, ctx_;
  int64_t n_;  // batch * ctx rows
  Transformer<T> net_;
  Backend<T>& be_;
  ops::RopeTable<T> rope_;
  std::vector<int32_t> pos_;  // [batch * ctx] position of each row: t % ctx
  int head_chunk_;            // rows of logits materialised at once
  std::vector<int32_t> inputs_, targets_;  // [n]
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<Attention> attn_;
};

}  // namespace mlkv::train
