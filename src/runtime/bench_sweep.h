// `mlkv bench --sweep`: decode throughput of a geometry's KV-sharing configurations (m KV layers x
// g KV heads each) over batches, contexts and cache formats, every row set against its own bound:
// the larger of its memory time (weights + the K/V the step reads, over the read bandwidth) and
// its compute time (the step's FLOPs over the f32 GEMM peak). The bandwidth and the GEMM peak are
// probed before and after the sweep and the best of the two is used (a busy machine lowers a
// probe); a row above 100% of its bound is flagged, the bound then being untrustworthy.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/bench.h"

namespace mlkv {

struct SweepConfig {
  int kv_layers = 0;  // m: owner layers (the authors' owner rule, model/presets.h apply_sharing)
  int kv_heads = 0;   // g: KV heads per owner layer
};

struct SweepOptions {
  std::string geometry = "pythia-160m";  // model/presets.h geometry_preset, random weights
  ModelOptions model;                    // weights and device
  // Empty: the paper's set on the geometry's l layers x h heads: MHA (l x h), GQA (l x h/3),
  // MLKV (l/3 x h), MQA (l x 1), MLKV l/2 x 1, 2 x 1 and 1 x 1 (on Pythia-160M: MHA-144, GQA-48,
  // MLKV-48, MQA-12, MLKV-6, MLKV-2, MLKV-1); configurations the geometry cannot hold are left out.
  std::vector<SweepConfig> configs;
  std::vector<int> batches = {1, 16, 64};
  std::vector<int> contexts = {512, 2048};  // positions at the last decode step
  std::vector<std::string> cache_types = {"f32"};  // kv/kv_codec.h names, "K/V" for mixed
  int gen = 8;    // decode steps per repetition (the context is filled synthetically before)
  int reps = 3;   // timed repetitions, median reported
  // Rows whose cache would exceed this many bytes are skipped (reported, not run). 0: no limit.
  int64_t max_cache_bytes = 0;
  bool probe = true;  // measure bandwidth and GEMM peak (false: no bounds; tests)
};

struct SweepRow {
  std::string config;  // "MLKV-2": MHA / GQA / MQA / MLKV and the model's m x g KV heads
  SweepConfig shape;
  int batch = 0, context = 0;
  std::string cache_type;
  int64_t kv_bytes_per_token = 0;  // 2 m g d_head element bytes (scales included)
  bool skipped = false;            // cache over max_cache_bytes
  BenchResult r;
  double bound_steps_s = 0;        // 0 without probes
  double fraction_of_bound = 0;    // decode steps/s over bound_steps_s
  bool compute_bound = false;
};

struct SweepResult {
  std::string geometry, weights, backend;
  int threads = 0;
  double bw_before = 0, bw_after = 0, bw = 0;        // read bandwidth, bytes/s
  double gemm_before = 0, gemm_after = 0, gemm = 0;  // f32 GEMM peak, FLOP/s
  std::vector<SweepRow> rows;
};

// The name of m x g KV heads on an l x h model: "MHA-144", "GQA-48", "MQA-12", "MLKV-2".
std::string sharing_name(int kv_layers, int kv_heads, int n_layer, int n_head);

// Runs every configuration x cache type x context x batch (a model per configuration). progress
// is called after each row. Throws mlkv::Error for a bad option (unknown geometry or cache type, a
// configuration the geometry cannot hold, a context below gen + 1 or above the model's).
SweepResult run_sweep(const SweepOptions& opt,
                      const std::function<void(const SweepRow&, int done, int total)>& progress = {});

// The report as a markdown table, as JSON text, and as an SVG plot (decode tokens/s and MB read
// per step against the configuration, one line per batch x context x cache type).
std::string sweep_markdown(const SweepResult& s);
std::string sweep_json(const SweepResult& s);
std::string sweep_svg(const SweepResult& s);
// One measured row as a line of JSON (no bound: the probes end the sweep), for a log written as
// the sweep goes.
std::string sweep_row_json(const SweepRow& r);

}  // namespace mlkv
