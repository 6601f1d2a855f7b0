// The KV cache: storage for owner layers only. A model with m owner layers of g KV heads holds
// exactly 2 * n_seq * n_ctx * m * g * d_head * sizeof(element) bytes, allocated once up front
// (pages are committed lazily by the OS as sequences grow) and never grown or copied.
// Layout per owner slot: K then V, each [n_seq][g][n_ctx][d_head], so one head's keys are
// contiguous for the attention loops. Layers that share read their owner's slot through
// slot_of_layer(). Sequence bookkeeping (lengths, free slots) lives here, apart from storage.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace mlkv {

class KVCache {
 public:
  // elem: DType::kF32 or DType::kF16. Throws mlkv::Error for impossible sizes.
  KVCache(const ModelConfig& cfg, int n_seq, int n_ctx, DType elem = DType::kF32);

  // The formula: 2 * n_seq * n_ctx * m * g * d_head * elem_size.
  static int64_t bytes_needed(const ModelConfig& cfg, int n_seq, int n_ctx, DType elem);
  int64_t bytes() const { return bytes_; }

  int n_seq() const { return n_seq_; }
  int n_ctx() const { return n_ctx_; }
  int n_slots() const { return n_slots_; }
  DType elem() const { return elem_; }
  size_t elem_size() const { return dtype_size(elem_); }

  // Owner slot holding the K/V that layer il attends with.
  int slot_of_layer(int il) const { return layer_slot_[static_cast<size_t>(il)]; }
  // Whether a slot stores keys after rotary (post sharing, or an owner nobody shares with) or
  // before rotary (pre sharing: consumers read raw keys; the owner rotates them when attending).
  bool slot_keys_rotated(int slot) const { return slot_rotated_[static_cast<size_t>(slot)] != 0; }

  // Base of [n_ctx][d_head] for (slot, sequence, kv head); elements of type elem().
  void* k_ptr(int slot, int seq, int head);
  void* v_ptr(int slot, int seq, int head);

  // --- sequences ---
  int seq_len(int seq) const { return len_[static_cast<size_t>(seq)]; }
  void set_seq_len(int seq, int len);
  // Takes a free sequence slot (length 0); -1 when all are in use.
  int acquire_seq();
  // Frees a slot for reuse; its contents are simply overwritten by the next user.
  void release_seq(int seq);
  bool seq_in_use(int seq) const { return in_use_[static_cast<size_t>(seq)] != 0; }
  // Makes dst hold the first n_tokens of src (every owner slot, K and V) and sets dst's length to
  // n_tokens: a shared prefix is computed once and forked into several sequences (evaluation
  // scores each answer of a question after one pass over the question). n_tokens <= seq_len(src);
  // src == dst only truncates.
  void copy_seq(int src, int dst, int n_tokens);

 private:
  int n_seq_, n_ctx_, n_slots_, n_head_kv_, d_head_;
  DType elem_;
  int64_t bytes_ = 0;
  std::vector<int> layer_slot_;
  std::vector<uint8_t> slot_rotated_;
  std::vector<int> len_;
  std::vector<uint8_t> in_use_;
  std::unique_ptr<void, AlignedFree> storage_;
};

}  // namespace mlkv
