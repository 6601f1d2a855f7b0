// MHA/GQA -> GQA/MQA/MLKV conversion of a trained model (the uptraining recipe of PAPER.md):
//   1. GPT-NeoX fused query_key_value is already split by the loader (io/hf_model.cpp);
//   2. inside each layer, K and V heads (weights and biases) are mean-pooled over contiguous groups
//      of n_head_kv / G heads;
//   3. across layers, the pooled K/V of every layer that reads owner o are merged into o, in layer
//      order starting at o (MergeStrategy); non-owner K/V are dropped;
//   4. optionally, the removed parameters are given back by widening every MLP (WidenMode);
//   5. `calibrated`: the owners keep their own K/V and every layer's query and output projections
//      get maps fitted on calibration text (calibrate.h, fold.h).
// Which layers own K/V comes from the options, or (owners_auto) from a search over the calibration
// error (calibrate.h).
// The result is a LoadedModel the engine and trainer use directly or save_model() writes out.
// What this file is not: file handling (tools/cli/cmd_convert.cpp writes the output folder
// atomically) or evaluation (src/eval/).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "convert/calibrate.h"
#include "io/hf_model.h"

namespace mlkv {

enum class MergeStrategy {
  kPairwise,    // the authors' running average W = (W + W_next) / 2 in layer order (1/4, 1/4, 1/2)
  kMean,        // uniform mean of the group
  kOwner,       // keep the owner's K/V only
  kCalibrated,  // keep the owner's K/V; fold maps fitted on calibration text into every layer's
                // query and output projections (fold.h)
};
// The default: the strategy with the lowest loss right after conversion on the shipped data.
// Measured (docs/RESULTS.md) on two 12-layer x 12-head models trained on TinyStories, over the
// paper's six configurations with cross-layer sharing: `owner` was best in 11 of 12 cases (mean
// loss 3.889 vs pairwise 3.914 / mean 3.912 for GPT-NeoX, 3.911 vs 3.935 / 3.937 for Llama).
inline constexpr MergeStrategy kDefaultMerge = MergeStrategy::kOwner;

enum class WidenMode {
  kNone,  // the MLP keeps its width; the model has fewer parameters
  kCopy,  // new neurons copy existing ones (input and output weights), as the authors did: the
          // copied neurons' contributions count twice, so the function changes
  kZero,  // new neurons copy existing input weights but get zero output weights: the converted
          // model computes exactly the same function, and the new neurons still train (their
          // output weights get non-zero gradients)
};

const char* merge_name(MergeStrategy m);  // "pairwise", "mean", "owner", "calibrated"
const char* widen_name(WidenMode w);      // "none", "copy", "zero"
// Parse the CLI spellings; throw mlkv::Error listing the valid ones.
MergeStrategy parse_merge(const std::string& s);
WidenMode parse_widen(const std::string& s);
// The activations calibration runs on: "converted" (true: CalibrateOptions::sequential) or
// "source"; throws mlkv::Error naming `what` (the option or argument) otherwise.
bool parse_calibration_stream(const std::string& s, const std::string& what);

struct ConvertOptions {
  int kv_heads = 0;  // G, KV heads per KV layer; 0: keep the source's
  // Which layers own K/V: at most one of these three (none: every layer stays an owner).
  int kv_layers = 0;           // M owners by the authors' rule
  std::vector<int> owners;     // explicit owner list, e.g. {0, 3, 6, 9}
  std::vector<int> kv_source;  // explicit layer -> owner map
  // kv_layers owners chosen by the calibration error instead of the authors' rule (needs
  // calibration rows; merge owner or calibrated).
  bool owners_auto = false;
  MergeStrategy merge = kDefaultMerge;
  WidenMode widen = WidenMode::kNone;
  KvShareRope share = KvShareRope::kPost;
  CalibrateOptions calibrate;  // merge calibrated, owners_auto
};

// Whether the options need calibration rows.
inline bool needs_calibration(const ConvertOptions& o) {
  return o.merge == MergeStrategy::kCalibrated || o.owners_auto;
}

struct ConvertReport {
  int64_t params_before = 0;   // the source
  int64_t params_dropped = 0;  // after pooling and dropping K/V, before widening
  int64_t params_after = 0;    // the result
  int n_ff_before = 0, n_ff_after = 0;
  int64_t kv_bytes_per_token_before = 0;  // f32 cache
  int64_t kv_bytes_per_token_after = 0;
  bool calibrated = false;  // calibration ran (merge calibrated and/or owners_auto)
  CalibrationReport calibration;
};

// The target config alone: checks every option against the source and throws mlkv::Error with a
// clear message for a conversion that cannot be done (G not dividing the KV heads, M out of range,
// owners not starting at 0, a source that already shares across layers, --owners auto without
// --kv-layers, ...). Nothing is computed or written before this succeeds. With owners_auto the
// returned kv_source is the authors' rule's, a stand-in for the searched one.
ModelConfig plan_conversion(const ModelConfig& src, const ConvertOptions& opt);

// Converts src (which must pass plan_conversion). Pooling and merging are computed in double and
// rounded once to f32, so G = n_head, M = n_layer reproduces the source bit for bit (also with
// `calibrated`: a layer whose K/V are its own unpooled ones gets no fold). calib: the calibration
// rows, required when needs_calibration(opt) (mlkv::Error otherwise).
LoadedModel convert_model(const LoadedModel& src, const ConvertOptions& opt,
                          ConvertReport* report = nullptr, const CalibrationSet* calib = nullptr);

// MLP neurons to add per layer so that widening gives back `removed` parameters (rounded to the
// nearest whole neuron per layer): a neuron costs 2 n_embd (+1 with biases) for GELU, 3 n_embd
// (+2 with biases) for SwiGLU.
int widen_neurons_per_layer(const ModelConfig& cfg, int64_t removed);

}  // namespace mlkv
