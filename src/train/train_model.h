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
//
// A graph built forward-only (a distillation teacher, train/distill.h) runs the same loop without
// keeping anything for a backward pass: one set of activations for every layer with the residual
// stream updated in place (as inference does), the owners' K/V, and the final normed rows, from
// which the logits of a chunk of rows are made on demand (chunk_logits) while the student's output
// layer walks the same chunks.
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
class TrainGraph;

// Knowledge distillation in the output layer (docs/TRAINING.md, "Distillation"): the loss of each
// position becomes alpha CE + (1 - alpha) temp^2 KL(softmax(teacher / temp) || softmax(student /
// temp)) (Hinton et al. 2015). The teacher is a forward-only graph over the same vocabulary that
// has run forward_hidden() on the same rows.
template <typename T>
struct Distillation {
  TrainGraph<T>* teacher = nullptr;
  const ModelWeights* teacher_weights = nullptr;
  double alpha = 0.5;  // in [0, 1]
  double temp = 1.0;   // > 0
};

// Sums over the positions of a forward pass: cross-entropy and (distilling) KL(teacher || student)
// at the temperature, both in nats, without alpha or temp^2.
struct LossSums {
  double ce = 0;
  double kl = 0;
};

template <typename T>
class TrainGraph {
 public:
  enum class Mode { kTrain, kForwardOnly };
  // Buffers for micro-batches of `batch` rows of `ctx` positions, on the device of `be`.
  // head_rows: rows of logits the output layer makes at once (0: as many as 2^24 logits hold, what
  // arena_bytes assumes; tests set fewer to run several chunks on a tiny model).
  TrainGraph(const ModelConfig& cfg, int batch, int ctx, Backend<T>& be = backend<T>(),
             Mode mode = Mode::kTrain, int head_rows = 0);
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
  // The same with distillation: the gradient is grad_scale * d(sum of the per-position losses
  // above)/d(parameter); returns both sums. The teacher must have run forward_hidden on rows.
  LossSums forward_backward(const ModelWeights& w, const int32_t* rows, ModelWeights* grads,
                            T grad_scale, int n_rows, const Distillation<T>& distill);

  // Forward-only graphs: embedding, layers and final norm over rows (as forward_backward reads
  // them; the targets are not used), keeping the normed final rows for chunk_logits.
  void forward_hidden(const ModelWeights& w, const int32_t* rows, int n_rows = -1);
  // Logits [n, n_vocab] of rows [row0, row0 + n) of the last forward_hidden, n <= head_chunk(),
  // in the graph's own chunk buffer (overwritten by the next call; the caller may consume it).
  T* chunk_logits(const ModelWeights& w, int64_t row0, int n);
  // Rows of logits the output layer makes at once (the same for every graph of a vocabulary size
  // and micro-batch).
  int head_chunk() const { return head_chunk_; }

  // Bytes of the activation arena and scratch for this geometry (elem = sizeof(T)), not counting
  // the per-thread attention blocks (2 * 64 * ctx + ctx elements per thread).
  static int64_t arena_bytes(const ModelConfig& cfg, int batch, int ctx, size_t elem,
                             Mode mode = Mode::kTrain);
  // What this graph holds now (equals arena_bytes after the first backward pass).
  int64_t allocated_bytes() const;

  // When set, forward_backward adds its per-op wall times here.
  OpProfile* profile = nullptr;

 private:
  struct Arena;
  class Attention;
  void check_rows(const int32_t* rows, int n_rows);  // and sets n_, inputs_, targets_
  LossSums run(const ModelWeights& w, const int32_t* rows, ModelWeights* grads, T grad_scale,
               int n_rows, const Distillation<T>* distill);
  LossSums head(const ModelWeights& w, ModelWeights* grads, T grad_scale,
                const Distillation<T>* distill);

  ModelConfig cfg_;
  Mode mode_;
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
