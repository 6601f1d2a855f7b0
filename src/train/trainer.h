// The training loop behind `mlkv train`: from scratch (a ModelConfig, random init) or uptraining
// an existing model folder; data-parallel over MPI ranks with gradient accumulation; AdamW with
// warmup + decay and global-norm clipping; periodic validation; JSONL log, SVG loss plot;
// atomic checkpoints and exact resume; optional distillation from a teacher model (distill.h); the
// result is an HF model folder the engine reads.
// docs/TRAINING.md describes the options, the data rule and the memory cost.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "model/config.h"
#include "train/distill.h"
#include "train/optimizer.h"
#include "train/train_model.h"

namespace mlkv::train {

struct TrainOptions {
  std::string out_dir;  // model folder written at every checkpoint and at the end

  // Model: uptrain `init` (a model folder) when set, else train `config` from scratch.
  std::string init;
  ModelConfig config;
  float init_std = 0.02f;  // from scratch: normal(0, init_std), output projections / sqrt(2L)
  uint64_t init_seed = 0;  // 0: use `seed`

  // Data (data.h): a tokenize output folder or shard file; validation from `val`, from the
  // folder's val shards, or the last val_fraction of the training tokens.
  std::string data, val;
  double val_fraction = 0;
  std::string tokenizer;  // copied into out_dir (default: the data folder's or init's)

  int ctx = 256;       // positions per row
  int64_t batch = 8;   // rows per optimizer step, all ranks and micro-steps together
  int accum = 1;       // micro-steps per optimizer step (per rank)
  int64_t steps = 0;   // optimizer steps; 0: derived from tokens
  int64_t tokens = 0;  // training tokens (rounded up to whole steps)

  double lr = 6e-4, min_lr_ratio = 0.1;
  int64_t warmup = -1;  // steps; -1: warmup_ratio * steps
  double warmup_ratio = 0.0;
  std::string schedule = "cosine";
  AdamWConfig adam;
  double clip = 1.0;  // global grad-norm clip; 0: off

  int64_t eval_every = 0;   // steps between validations (0: only at the end, when there is data)
  int64_t eval_rows = 256;  // validation rows (file order); 0: all
  int64_t save_every = 0;   // steps between checkpoints (0: only at the end)
  int threads = 0;          // per rank; 0: the cores / ranks on this machine
  uint64_t seed = 1234;
  bool shuffle = true;
  bool resume = false;     // continue from out_dir/checkpoint.safetensors
  bool overwrite = false;  // allow starting over in an out_dir that holds a checkpoint
  // Resume on data other than the checkpoint's (training or validation tokens differ): refused
  // unless this is set, since the data order then differs from the interrupted run's.
  bool allow_data_change = false;
  // Optimizer steps whose gradient (or loss) is not finite: stop at the first (0), or skip up to
  // this many in the run (no update; the step's rows are consumed) and stop at the next.
  int64_t skip_nonfinite = 0;
  // Knowledge distillation from a teacher model folder (distill.h; docs/TRAINING.md): per
  // position alpha CE + (1 - alpha) temp^2 KL(teacher || student). The teacher and both numbers
  // are part of the run: a resume needs the same teacher; alpha or temp changed on resume are
  // reported like --lr.
  DistillOptions distill;
  DType out_dtype = DType::kF32;
  bool quiet = false;    // no progress bar or progress lines
  bool profile = false;  // print the per-op time breakdown at the end
  // Where parameters, gradients, moments and activations live (a CUDA build: Device::kCuda).
  // Checkpoints and the model are written from host copies, in the same format on every device.
  Device device = Device::kCpu;
  // Products of the weights: f32, or bf16 mixed precision (GPU: bf16 operands, f32 accumulation;
  // master weights, gradients and AdamW moments stay f32, so checkpoints are unchanged).
  DType precision = DType::kF32;
};

struct TrainSummary {
  int64_t steps = 0;          // optimizer steps done in total
  int64_t skipped_steps = 0;  // of which skipped for a non-finite gradient (the whole run)
  double last_loss = 0;       // training loss of the last step that updated the weights
  // Distilling: that step's mean cross-entropy and KL (the loss is alpha ce + (1 - alpha) T^2 kl).
  double last_ce = 0, last_kl = 0;
  double val_loss = -1;     // last validation loss (-1: none)
  double tokens_per_s = 0;  // this session
  double seconds = 0;       // this session's wall time in the loop
  int64_t n_params = 0;
  OpProfile profile;  // summed over this session's steps (when options.profile)
};

// Runs the training; throws mlkv::Error for bad options or data.
TrainSummary run_training(const TrainOptions& opt);

// File names inside out_dir.
inline constexpr const char* kCheckpointFile = "checkpoint.safetensors";
inline constexpr const char* kLogFile = "train_log.jsonl";
inline constexpr const char* kPlotFile = "loss.svg";

// The per-op breakdown as a text table (what --profile prints).
std::string format_profile(const OpProfile& p, double step_seconds_total);

}  // namespace mlkv::train
