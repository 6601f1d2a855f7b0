#include "kv/kv_cache.h"

#include <cstring>

#include "core/check.h"

namespace mlkv {

int64_t KVCache::bytes_needed(const ModelConfig& cfg, int n_seq, int n_ctx, DType elem) {
  return int64_t{n_seq} * n_ctx * cfg.kv_bytes_per_token(dtype_size(elem));
}

KVCache::KVCache(const ModelConfig& cfg, int n_seq, int n_ctx, DType elem)
    : n_seq_(n_seq), n_ctx_(n_ctx), n_head_kv_(cfg.n_head_kv), d_head_(cfg.n_embd_head), elem_(elem) {
  MLKV_REQUIRE(elem == DType::kF32 || elem == DType::kF16, "KV cache elements must be f32 or f16");
  MLKV_REQUIRE(n_seq > 0, "KV cache: number of sequences must be positive (got ", n_seq, ")");
  MLKV_REQUIRE(n_ctx > 0, "KV cache: context length must be positive (got ", n_ctx, ")");
  bytes_ = bytes_needed(cfg, n_seq, n_ctx, elem);
  MLKV_REQUIRE(bytes_ <= (int64_t{1} << 40), "KV cache of ", bytes_, " bytes is too large");

  // Owner layers get consecutive slots; every layer maps to its owner's slot.
  std::vector<int> owner_slot(static_cast<size_t>(cfg.n_layer), -1);
  n_slots_ = 0;
  for (int il = 0; il < cfg.n_layer; ++il) {
    if (cfg.owns_kv(il)) owner_slot[static_cast<size_t>(il)] = n_slots_++;
  }
  slot_rotated_.assign(static_cast<size_t>(n_slots_), 1);
  for (int il = 0; il < cfg.n_layer; ++il) {
    const int src = cfg.kv_source[static_cast<size_t>(il)];
    layer_slot_.push_back(owner_slot[static_cast<size_t>(src)]);
    if (src != il && cfg.share_rope == KvShareRope::kPre) {
      slot_rotated_[static_cast<size_t>(owner_slot[static_cast<size_t>(src)])] = 0;
    }
  }
  storage_ = aligned_alloc_zeroed(static_cast<size_t>(bytes_));
  len_.assign(static_cast<size_t>(n_seq), 0);
  in_use_.assign(static_cast<size_t>(n_seq), 0);
}

void* KVCache::k_ptr(int slot, int seq, int head) {
  const int64_t per_tensor = int64_t{n_seq_} * n_head_kv_ * n_ctx_ * d_head_;
  const int64_t off = int64_t{slot} * 2 * per_tensor + (int64_t{seq} * n_head_kv_ + head) * n_ctx_ * d_head_;
  return static_cast<char*>(storage_.get()) + off * static_cast<int64_t>(elem_size());
}

void* KVCache::v_ptr(int slot, int seq, int head) {
  const int64_t per_tensor = int64_t{n_seq_} * n_head_kv_ * n_ctx_ * d_head_;
  const int64_t off = (int64_t{slot} * 2 + 1) * per_tensor + (int64_t{seq} * n_head_kv_ + head) * n_ctx_ * d_head_;
  return static_cast<char*>(storage_.get()) + off * static_cast<int64_t>(elem_size());
}

void KVCache::copy_seq(int src, int dst, int n_tokens) {
  MLKV_CHECK(src >= 0 && src < n_seq_ && dst >= 0 && dst < n_seq_);
  MLKV_CHECK(n_tokens >= 0 && n_tokens <= len_[static_cast<size_t>(src)]);
  if (src != dst) {
    const size_t n_bytes = static_cast<size_t>(n_tokens) * static_cast<size_t>(d_head_) * elem_size();
    for (int slot = 0; slot < n_slots_; ++slot) {
      for (int h = 0; h < n_head_kv_; ++h) {
        std::memcpy(k_ptr(slot, dst, h), k_ptr(slot, src, h), n_bytes);
        std::memcpy(v_ptr(slot, dst, h), v_ptr(slot, src, h), n_bytes);
      }
    }
  }
  len_[static_cast<size_t>(dst)] = n_tokens;
}

void KVCache::set_seq_len(int seq, int len) {
  MLKV_CHECK(seq >= 0 && seq < n_seq_ && len >= 0 && len <= n_ctx_);
  len_[static_cast<size_t>(seq)] = len;
}

int KVCache::acquire_seq() {
  for (int s = 0; s < n_seq_; ++s) {
    if (!in_use_[static_cast<size_t>(s)]) {
      in_use_[static_cast<size_t>(s)] = 1;
      len_[static_cast<size_t>(s)] = 0;
      return s;
    }
  }
  return -1;
}

void KVCache::release_seq(int seq) {
  MLKV_CHECK(seq >= 0 && seq < n_seq_);
  in_use_[static_cast<size_t>(seq)] = 0;
  len_[static_cast<size_t>(seq)] = 0;
}

}  // namespace mlkv
