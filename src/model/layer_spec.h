// The sharing semantics of every layer, computed once from the config: the one place that decides
// which K/V a layer attends with, whether it computes and stores K/V, whether its keys are read
// rotated or raw, and whether anyone reads what it stores. The inference forward, the training
// graph and the KV cache all ask these specs; none of them re-derives the rules from kv_source.
//
// The rules (docs/ARCHITECTURE.md, "KV sharing"):
//   - layer il attends with the K/V of kv_source[il] (its owner; an owner is its own source);
//   - "post" sharing: keys are shared after rotary: every reader uses them as stored (rotated);
//   - "pre" sharing (the MLKV authors' semantics): an owner with consumers shares its keys before
//     rotary; consumers attend with those raw keys, the owner itself with rotated ones. The cache
//     then stores the raw keys and the owner rotates a copy when it attends;
//   - an owner nobody reads from stores rotated keys whatever the mode.
#pragma once

#include <vector>

#include "kv/kv_cache.h"
#include "model/config.h"

namespace mlkv {

struct LayerSpec {
  int layer = 0;
  int kv_source = 0;        // owner layer whose K/V this layer attends with
  bool owns_kv = false;     // kv_source == layer: computes K/V (has K/V weights)
  bool has_consumers = false;    // an owner that some later layer reads from
  bool reads_rotated_keys = true;  // attends with rotated keys (false: a pre-sharing consumer)
  bool shares_raw_keys = false;  // an owner whose consumers read raw keys (pre sharing): keeps its
                                 // keys before rotary too, and the cache stores those
  int kv_slot = 0;          // the cache slot of kv_source (owners numbered in layer order)
  // Room for per-layer variations (attention window, rotary on/off) as data, not code paths.
};

// One spec per layer, from a validated config.
std::vector<LayerSpec> layer_specs(const ModelConfig& cfg);

// The KV cache's view of the model: owner slots, the slot each layer reads, raw-key slots.
KvLayout kv_layout(const ModelConfig& cfg);

// Bytes of a default-layout cache of n_seq sequences of n_ctx positions (kv/kv_cache.h).
int64_t kv_cache_bytes(const ModelConfig& cfg, int n_seq, int n_ctx, KvCacheType type);

}  // namespace mlkv
