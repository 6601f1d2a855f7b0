#include "model/layer_spec.h"

namespace mlkv {

std::vector<LayerSpec> layer_specs(const ModelConfig& cfg) {
  const int L = cfg.n_layer;
  std::vector<LayerSpec> specs(static_cast<size_t>(L));
  std::vector<int> slot_of_owner(static_cast<size_t>(L), -1);
  int n_slots = 0;
  for (int il = 0; il < L; ++il) {
    LayerSpec& s = specs[static_cast<size_t>(il)];
    s.layer = il;
    s.kv_source = cfg.kv_source[static_cast<size_t>(il)];
    s.owns_kv = s.kv_source == il;
    if (s.owns_kv) slot_of_owner[static_cast<size_t>(il)] = n_slots++;
  }
  const bool pre = cfg.share_rope == KvShareRope::kPre;
  for (int il = 0; il < L; ++il) {
    LayerSpec& s = specs[static_cast<size_t>(il)];
    s.kv_slot = slot_of_owner[static_cast<size_t>(s.kv_source)];
    if (!s.owns_kv) specs[static_cast<size_t>(s.kv_source)].has_consumers = true;
    s.reads_rotated_keys = s.owns_kv || !pre;
  }
  for (LayerSpec& s : specs) s.shares_raw_keys = s.owns_kv && s.has_consumers && pre;
  return specs;
}

KvLayout kv_layout(const ModelConfig& cfg) {
  KvLayout k;
  k.n_head_kv = cfg.n_head_kv;
  k.head_dim = cfg.n_embd_head;
  for (const LayerSpec& s : layer_specs(cfg)) {
    k.layer_slot.push_back(s.kv_slot);
    if (s.owns_kv) k.slot_raw_keys.push_back(s.shares_raw_keys ? 1 : 0);
  }
  return k;
}

int64_t kv_cache_bytes(const ModelConfig& cfg, int n_seq, int n_ctx, KvCacheType type) {
  return KVCache::bytes_needed(kv_layout(cfg), n_seq, n_ctx, type);
}

}  // namespace mlkv
