// Throughput measurement of a model: prefill and decode tokens/s for a batch of sequences, with
// the bytes a decode step must read (weights once, plus every layer's view of the KV cache) so the
// result can be set against the memory-bandwidth bound.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace mlkv {

struct BenchOptions {
  int prompt = 128;       // prompt tokens per sequence (prefilled, or synthetic context)
  int gen = 32;           // decode steps
  int batch = 1;          // sequences decoded together
  int reps = 3;           // timed repetitions after one warm-up (median reported)
  KvCacheType cache_elem;  // keys' and values' formats
  // Skip the prefill: fill the cache with random K/V up to `prompt` tokens and only time decoding.
  // Attention cost does not depend on the values, so this measures decode at long contexts without
  // spending minutes on prefill.
  bool synthetic_context = false;
  // 0: one contiguous stretch of cache per sequence. B > 0: blocks of B positions with the
  // sequences' blocks interleaved (block i of sequence s at i x batch + s), as a server's paged
  // cache becomes when its sequences grow together; attention then reads B positions at a time.
  int block_size = 0;
  // When set, the timed decode steps (reps x gen of them, not the warm-up) add their ops' wall
  // time here (Model::set_profile; the CPU backend only).
  OpProfile* profile = nullptr;
};

struct BenchResult {
  double prefill_tok_s = 0;      // prompt tokens per second (0 with synthetic context)
  double decode_tok_s = 0;       // generated tokens per second, all sequences together
  double decode_step_ms = 0;     // one decode step for the whole batch
  int64_t weight_bytes = 0;      // weights a decode step reads (Model::decode_weight_bytes)
  int64_t kv_read_bytes = 0;     // K/V bytes the attention of one step reads at mid-generation
  int64_t kv_cache_bytes = 0;    // size of the cache allocated
  // FLOPs of one decode step at mid-generation: 2 x the weights each token multiplies (q, the
  // owners' k/v, o, MLP, output head) x batch, plus attention's 4 x n_head x d_head x context per
  // layer and token.
  double step_flops = 0;
};

BenchResult bench_model(Model& model, const BenchOptions& opt);

// A decode step op by op, from the OpProfile of `steps` timed steps: each op kind's wall time per
// step and the bytes it must read per step (its weight matrices and biases; for attention the K/V
// of r.kv_read_bytes; 0 for ops that only touch activations), and a last row "other" for the rest
// of r.decode_step_ms (batch validation, cache bookkeeping). Kinds that took no time are left out.
struct ProfileRow {
  std::string op;
  double ms_per_step = 0;
  double bytes_per_step = 0;
};
std::vector<ProfileRow> decode_profile(const Model& model, const BenchResult& r,
                                       const OpProfile& p, int steps);

// The bound of a decode step: the larger of its memory time (weights + K/V read, over the read
// bandwidth in bytes/s) and its compute time (step FLOPs over the GEMM peak in FLOP/s). A ceiling
// of 0 (not measured) leaves its time out; both 0 give steps_s 0 (no bound).
struct DecodeBound {
  double mem_s = 0, compute_s = 0;  // seconds per step
  double steps_s = 0;               // 1 / max(mem_s, compute_s)
  double fraction = 0;              // achieved steps/s (decode_tok_s / batch) over steps_s
  bool compute_bound() const { return compute_s > mem_s; }
};
DecodeBound decode_bound(const BenchResult& r, int batch, double bandwidth, double gemm_peak);

// The ceilings a decode step is set against, measured on the model's device.
//  - read bandwidth, bytes/s: on the CPU all threads streaming 1 GiB (runtime/membw.h); on another
//    device a device-to-device copy of 1 GiB (bytes read + written, the best of 5);
//  - GEMM peak, FLOP/s: f32 products of 2048 x 2048 x 2048 through the backend, the best of 3.
double measure_device_bandwidth(Device device);
double measure_gemm_peak(Device device);

}  // namespace mlkv
