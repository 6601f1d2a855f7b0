// Training checkpoints: one safetensors file holding the parameters, both AdamW moments and the
// run state, written atomically (temp file, fsync, rename, directory fsync via AtomicFileWriter):
// a process killed at any moment leaves the previous checkpoint intact and loadable.
// Layout: tensors "param/<HF name>", "adam_m/<HF name>", "adam_v/<HF name>" (F32); __metadata__
// {"format": "mlkv-train-checkpoint", "version": "1", "config": <config.json text>,
//  "state": <JSON of CheckpointState>}. Readable by any safetensors reader. Fields added to the
// state later are optional when read, so older version-1 checkpoints still load.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>

#include "model/config.h"
#include "model/weights.h"
#include "train/data.h"

namespace mlkv::train {

// Everything besides tensors that a resumed run needs to continue exactly where it stopped. The
// data position is a function of (seed, step, global batch) (see data.h), stored explicitly too.
struct CheckpointState {
  int64_t step = 0;          // optimizer updates done (= AdamW's t)
  int64_t next_row = 0;      // global row index the next step starts at (step * global_batch)
  int64_t global_batch = 0;  // rows per optimizer step
  int ctx = 0;
  uint64_t seed = 0;  // data shuffle seed (the only random stream of a run after init)
  bool shuffle = true;
  int64_t total_steps = 0;  // the schedule's length
  double tokens_seen = 0;
  double elapsed_s = 0;      // training wall time so far
  std::string options_json;  // the run's options, to report what a resume would change

  // Written since the data check (older checkpoints lack them; load_checkpoint fills the
  // defaults): the data the run was reading, to refuse a resume on other data ...
  bool has_data = false;
  DataFingerprint train_data, val_data;  // val_data.tokens == 0: no validation data
  // ... AdamW's step count (the steps minus those skipped for a non-finite gradient; -1: = step),
  int64_t adam_steps = -1;
  int64_t skipped_steps = 0;
  // ... and the losses of the last step, so that resuming a finished run reports them.
  double last_loss = std::numeric_limits<double>::quiet_NaN();  // NaN: unknown
  double last_val_loss = -1;                                    // -1: none
  // Distilled runs (distill.h): the teacher (its path and the hash of its config and weights;
  // empty path: no teacher) and the last step's cross-entropy and KL parts.
  std::string teacher;
  uint64_t teacher_hash = 0;
  double last_ce = std::numeric_limits<double>::quiet_NaN();
  double last_kl = std::numeric_limits<double>::quiet_NaN();
};

// Called after each tensor is written with (bytes written, total bytes): a test hook.
using WriteProgress = std::function<void(uint64_t done, uint64_t total)>;

void save_checkpoint(const std::string& path, const ModelConfig& cfg, const ModelWeights& params,
                     const ModelWeights& adam_m, const ModelWeights& adam_v,
                     const CheckpointState& state, const WriteProgress& progress = {});

struct Checkpoint {
  ModelConfig config;
  ModelWeights params, adam_m, adam_v;
  CheckpointState state;
};

// Throws mlkv::Error naming the file for a missing, truncated or inconsistent checkpoint.
Checkpoint load_checkpoint(const std::string& path);

}  // namespace mlkv::train
