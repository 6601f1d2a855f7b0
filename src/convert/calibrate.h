// Calibrated conversion on a model: runs calibration rows through the models layer by layer (the
// one layer loop, model/transformer.h, on the CPU backend), hands each layer's activations to the
// fitting of fold.h and writes the chosen maps into the converted model's query and output
// projections (query rows, output columns, output bias: the file format and the inference cost do
// not change). Also the search for which layers own K/V (`--owners auto`): every (owner, layer)
// pair's calibration error, then the owner set with the lowest total.
// What this is not: the conversion recipe (convert.h) or reading calibration files
// (calibration_data.h).
#pragma once

#include <cstdint>
#include <vector>

#include "convert/calibration_data.h"
#include "convert/fold.h"
#include "io/hf_model.h"

namespace mlkv {

struct CalibrateOptions {
  calib::FitOptions fit;
  // The owner search's fits, made for every (owner, layer) pair: cheaper (fewer KL steps, a
  // coarser ridge grid, fewer rows); its ranking, not the final weights, comes from these.
  calib::FitOptions search = calib::FitOptions::coarse();
  int search_rows = 64;  // the search uses at most this many calibration rows (the first ones)
  // Feed each layer the converted model's own activations (its earlier layers already folded, the
  // owners' K/V computed from the owners' converted inputs), as GPTQ-style methods do; false: the
  // source model's activations throughout.
  bool sequential = true;
};

// One layer's calibration result; errors are held-out sums of ||error added to the residual
// stream||^2 (fold.h), energy the held-out sum of ||x||^2 of the layer's input.
struct LayerCalibration {
  int layer = 0, kv_source = 0;
  double err_owner = 0, err = 0;  // owner's K/V as they are / with the chosen folds
  double attn_energy = 0;         // sum ||Wo o||^2 of the source attention output
  double stream_energy = 0;       // sum ||x||^2 of the layer's input
  double kl_owner = 0, kl = 0;    // held-out attention KL, mean over heads
  int heads_folded = 0;           // query heads whose query projection got a key map
  bool output_folded = false;     // the output projection got a map
};

struct CalibrationReport {
  int64_t tokens = 0;
  int rows = 0, ctx = 0, held_rows = 0;
  bool sequential = true;
  std::vector<LayerCalibration> layers;
  // --owners auto: cost[o][l] (o <= l; -1 elsewhere) = held-out error of layer l reading owner o's
  // K/V relative to the stream energy, and the totals of the chosen and the authors' owner sets.
  std::vector<std::vector<double>> owner_costs;
  double search_cost = -1, rule_cost = -1;
  double seconds = 0;
};

// dst: src converted with MergeStrategy::kOwner (pooled K/V, the owners' own). Folds the fitted
// key and output maps into dst's layers, first to last.
void calibrate_folds(const LoadedModel& src, LoadedModel* dst, const CalibrationSet& data,
                     const CalibrateOptions& opt, CalibrationReport* report);

// The kv_source with `kv_layers` owners (layer 0 among them; any layer may read any owner before
// it, contiguous or not) that minimises the summed calibration cost, each layer reading the owner
// that serves it best. pooled: src converted to the target's KV heads without cross-layer sharing
// (every layer's pooled K/V; its kv_share_rope the target's); `fold`: costs with calibrated folds
// (else the plain owner's error). Costs come from the source model's activations. Fills
// report->owner_costs and the totals.
std::vector<int> search_kv_source(const LoadedModel& src, const LoadedModel& pooled, int kv_layers,
                                  bool fold, const CalibrationSet& data,
                                  const CalibrateOptions& opt, CalibrationReport* report);

// The owner set minimising sum_l min_{o in set, o <= l} cost[o][l] with cost[l][l] for owners:
// exhaustive when there are at most `max_sets` candidate sets, else a swap search from the
// authors' rule. Returns the kv_source (each layer its cheapest owner).
std::vector<int> best_kv_source(const std::vector<std::vector<double>>& cost, int kv_layers,
                                int64_t max_sets = 2000000);
// sum_l cost[kv_source[l]][l].
double kv_source_cost(const std::vector<std::vector<double>>& cost,
                      const std::vector<int>& kv_source);

}  // namespace mlkv
