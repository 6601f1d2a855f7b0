// Knowledge distillation during training (`mlkv train --teacher`, docs/TRAINING.md): the teacher
// model, loaded from a model folder and run forward without gradients on the rows the student
// trains on, in the same step. What the loss does with it is the output layer's business
// (train_model.h: Distillation); this file owns the teacher itself: loading it, checking that it
// can teach this student (the same vocabulary, a context as long as the rows), its forward-only
// graph, and the fingerprint a checkpoint records so that a resume keeps the same teacher.
//
// Not here: a teacher on another device (the distillation op is CPU-only for now; the trainer
// refuses --teacher with --device cuda), hidden-state matching.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/weights.h"
#include "train/train_model.h"

namespace mlkv::train {

// The options of a distilled run; an empty teacher means none.
struct DistillOptions {
  std::string teacher;  // model folder
  double alpha = 0.5;   // weight of the cross-entropy; 1 - alpha weighs temp^2 KL
  double temp = 1.0;    // softmax temperature of both distributions in the KL term
};

// Throws mlkv::Error naming the option when alpha is outside [0, 1] or temp is not a positive
// finite number.
void validate_distill_options(const DistillOptions& o);

// The identity of a teacher as a checkpoint records it: where it was and what it was (a 64-bit
// hash of its config and every weight; the same model copied elsewhere hashes the same).
struct TeacherFingerprint {
  std::string path;
  uint64_t hash = 0;
  std::string hash_hex() const;
};

class Teacher {
 public:
  // Loads the model folder at `path` (weights as f32 on the CPU) and builds its forward-only graph
  // for micro-batches of `batch` rows of `ctx` positions. Throws mlkv::Error when the folder does
  // not load, when its vocabulary size is not the student's (distillation compares the two
  // next-token distributions id by id) or when its context is shorter than ctx.
  Teacher(const std::string& path, const ModelConfig& student, int batch, int ctx);

  const ModelConfig& config() const { return cfg_; }
  const TeacherFingerprint& fingerprint() const { return fp_; }
  // Bytes of its weights (f32) and of its forward-only activations.
  int64_t weight_bytes() const;
  int64_t activation_bytes() const;

  // Runs the teacher on rows (host [n_rows, ctx + 1], as TrainGraph::forward_backward reads
  // them); the next distilled forward_backward of the student on the same rows reads it.
  void forward(const int32_t* rows, int n_rows);
  // The output layer's view of it, for TrainGraph::forward_backward.
  Distillation<float> distillation(double alpha, double temp);

  // When set, the teacher's forward adds its per-op wall times here.
  void set_profile(OpProfile* p) { graph_.profile = p; }

 private:
  Teacher(const std::string& path, LoadedModel m, const ModelConfig& student, int batch, int ctx);

  ModelConfig cfg_;
  ModelWeights w_;
  TrainGraph<float> graph_;
  TeacherFingerprint fp_;
};

}  // namespace mlkv::train
