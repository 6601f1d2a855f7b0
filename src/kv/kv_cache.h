// The KV cache: storage for owner layers only, apart from the bookkeeping of sequences.
//
// Storage: for each owner slot (a layer that computes K/V; KvLayout maps every layer to the slot it
// reads) a K region and a V region, each [n_head_kv][n_blocks][block_size] rows of head_dim values
// in the keys' and the values' element formats (kv/kv_codec.h; q8_0 and q4_0 rows carry their
// scales). Allocated once up front on the model's device (pages committed lazily by the OS as
// sequences grow), never grown or copied.
// Sequences: lengths, in-use flags and a block table per sequence (logical block i -> physical
// block) that serves every owner slot. The default gives sequence s the consecutive blocks
// [s * blocks_per_seq, (s + 1) * blocks_per_seq) with one block of n_ctx positions, so each head
// of each sequence is one contiguous [n_ctx][head_dim] array and the cache holds exactly
// n_seq * n_ctx * m * g * (k_row_bytes + v_row_bytes) bytes (row_bytes = head_dim * element size,
// or head_dim / 32 blocks of 34 (q8_0) or 18 (q4_0) bytes): 2 x tokens x m x g x d_head x element
// size when keys and values share a format. Each head's K or V region is rounded up to 4 bytes (so
// f32 rows stay aligned after a q4_0 region of an odd number of rows): at most 3 bytes per region
// more than the formula, and only for the block formats.
// A paged cache is the same storage with a smaller block size and a pool of n_blocks blocks (fewer
// than n_seq * blocks_per_seq: memory is promised to sequences as they grow), whose tables a block
// allocator fills (set_block_table); then the cache holds 2 * n_blocks * block_size * m * g *
// row_bytes bytes, and a sequence can only be written at positions its table maps.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/types.h"
#include "kv/kv_codec.h"

namespace mlkv {

// What the model says about its cache (model/layer_spec.h builds it from the config).
struct KvLayout {
  int n_head_kv = 0, head_dim = 0;
  std::vector<int> layer_slot;          // [n_layer] the owner slot each layer attends with
  std::vector<uint8_t> slot_raw_keys;   // [n_slots] 1: the slot stores keys before rotary
  int n_slots() const { return static_cast<int>(slot_raw_keys.size()); }
  // Bytes of one position of one sequence in every owner slot, K and V: m g (k_row + v_row).
  int64_t bytes_per_token(KvCacheType type) const;
};

class KVCache {
 public:
  // type: the keys' and values' formats (kv/kv_codec.h). block_size 0: one block of n_ctx
  // positions per sequence. n_blocks 0: a block for every position of every sequence, mapped in
  // order; fewer: a paged pool, every table empty until set_block_table maps blocks. Throws
  // mlkv::Error for impossible sizes, a format the head size does not fit (q8_0 / q4_0 need a
  // multiple of 32) or a device without a backend.
  KVCache(const KvLayout& layout, int n_seq, int n_ctx, KvCacheType type = {},
          Device device = Device::kCpu, int block_size = 0, int n_blocks = 0);

  // n_seq * n_ctx * layout.bytes_per_token(type): what the default layout allocates.
  static int64_t bytes_needed(const KvLayout& layout, int n_seq, int n_ctx, KvCacheType type);
  int64_t bytes() const { return static_cast<int64_t>(storage_.nbytes()); }
  // A cache that fills as sequences come and grow (the scheduler's, for generate and serve): its
  // host memory stays in 4 KiB pages (advise_small_pages), since each (layer, head) region would
  // otherwise commit a 2 MiB page at a sequence's first token. Call before the cache is written.
  void prefer_small_pages();

  int n_seq() const { return n_seq_; }
  int n_ctx() const { return n_ctx_; }
  int n_slots() const { return layout_.n_slots(); }
  int block_size() const { return block_size_; }
  KvCacheType type() const { return {k_codec_->dtype, v_codec_->dtype, k_hadamard_}; }
  Device device() const { return storage_.device(); }

  // Owner slot holding the K/V that layer il attends with.
  int slot_of_layer(int il) const { return layout_.layer_slot[static_cast<size_t>(il)]; }
  // Whether a slot stores keys after rotary (post sharing, or an owner nobody shares with) or
  // before it (pre sharing: consumers read raw keys; the owner rotates them when attending).
  bool slot_keys_rotated(int slot) const { return layout_.slot_raw_keys[static_cast<size_t>(slot)] == 0; }
  // The slot as the attention and store ops see it.
  ops::KvSlotView view(int slot) const;

  // --- sequences ---
  int blocks_per_seq() const { return blocks_per_seq_; }
  int n_blocks() const { return n_blocks_; }
  const std::vector<int32_t>& block_table(int seq) const { return block_tables_[static_cast<size_t>(seq)]; }
  // Points a sequence's logical blocks at physical blocks (a paged allocator's job; tests use it
  // to scatter a sequence): at most blocks_per_seq() distinct ids in [0, n_blocks()); the caller
  // keeps different sequences' blocks apart. Throws mlkv::Error otherwise.
  void set_block_table(int seq, std::vector<int32_t> blocks);
  // Positions of a sequence its block table maps: [0, mapped_positions(seq)) may be written.
  int mapped_positions(int seq) const;
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
  KvLayout layout_;
  int n_seq_, n_ctx_, block_size_, blocks_per_seq_, n_blocks_;
  const KvCodec* k_codec_;
  const KvCodec* v_codec_;
  bool k_hadamard_ = false;  // keys stored rotated (KvCacheType::k_hadamard)
  size_t k_row_bytes_, v_row_bytes_, k_head_stride_, v_head_stride_, slot_stride_;  // bytes
  Tensor storage_;  // U8 [n_slots][K, V][n_head_kv][n_blocks][block_size][row_bytes]
  // Sequences.
  std::vector<std::vector<int32_t>> block_tables_;  // [n_seq][blocks_per_seq]
  std::vector<int> len_;
  std::vector<uint8_t> in_use_;
};

}  // namespace mlkv
