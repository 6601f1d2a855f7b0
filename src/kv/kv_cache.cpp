#include "kv/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace mlkv {

int64_t KvLayout::bytes_per_token(KvCacheType type) const {
  return int64_t{n_slots()} * n_head_kv * static_cast<int64_t>(type.pair_bytes(head_dim));
}

namespace {

// Bytes of one KV head's region of n positions, rounded up to 4 so that every region (and so every
// f32 row) starts 4-byte aligned whatever formats come before it (q4_0 rows are 18 bytes per
// block: an odd number of rows leaves a region 2 bytes short of alignment).
size_t region_bytes(int64_t positions, size_t row_bytes) {
  const size_t b = static_cast<size_t>(positions) * row_bytes;
  return (b + 3) / 4 * 4;
}

}  // namespace

int64_t KVCache::bytes_needed(const KvLayout& layout, int n_seq, int n_ctx, KvCacheType type) {
  type.check_fits(layout.head_dim);
  const int64_t n = int64_t{n_seq} * n_ctx;
  const size_t k_row = kv_codec(type.k).row_bytes(layout.head_dim), v_row = kv_codec(type.v).row_bytes(layout.head_dim);
  // In long double first: n_seq x n_ctx x the bytes of a position can pass 2^63 (int32 sizes).
  const long double want = static_cast<long double>(layout.n_slots()) * layout.n_head_kv * n *
                           static_cast<long double>(k_row + v_row);
  MLKV_REQUIRE(want < 0x1p62L, "a KV cache of ", n_seq, " sequences x ", n_ctx, " positions would take ",
               static_cast<double>(want), " bytes, more than can be addressed");
  return int64_t{layout.n_slots()} * layout.n_head_kv *
         static_cast<int64_t>(region_bytes(n, k_row) + region_bytes(n, v_row));
}

KVCache::KVCache(const KvLayout& layout, int n_seq, int n_ctx, KvCacheType type, Device device,
                 int block_size, int n_blocks)
    : layout_(layout), n_seq_(n_seq), n_ctx_(n_ctx), k_codec_(&kv_codec(type.k)),
      v_codec_(&kv_codec(type.v)), k_hadamard_(type.k_hadamard) {
  type.check_fits(layout.head_dim);
  MLKV_REQUIRE(n_seq > 0, "KV cache: number of sequences must be positive (got ", n_seq, ")");
  MLKV_REQUIRE(n_ctx > 0, "KV cache: context length must be positive (got ", n_ctx, ")");
  MLKV_REQUIRE(block_size >= 0, "KV cache: block size must not be negative (got ", block_size, ")");
  MLKV_REQUIRE(n_blocks >= 0, "KV cache: number of blocks must not be negative (got ", n_blocks, ")");
  block_size_ = block_size == 0 ? n_ctx : block_size;
  blocks_per_seq_ = (n_ctx + block_size_ - 1) / block_size_;
  const bool paged = n_blocks > 0 && n_blocks < n_seq * blocks_per_seq_;
  n_blocks_ = n_blocks > 0 ? n_blocks : n_seq * blocks_per_seq_;
  k_row_bytes_ = k_codec_->row_bytes(layout.head_dim);
  v_row_bytes_ = v_codec_->row_bytes(layout.head_dim);
  k_head_stride_ = region_bytes(int64_t{n_blocks_} * block_size_, k_row_bytes_);
  v_head_stride_ = region_bytes(int64_t{n_blocks_} * block_size_, v_row_bytes_);
  slot_stride_ = static_cast<size_t>(layout.n_head_kv) * (k_head_stride_ + v_head_stride_);
  const int64_t total = static_cast<int64_t>(slot_stride_) * layout.n_slots();
  MLKV_REQUIRE(total <= (int64_t{1} << 40), "KV cache of ", total, " bytes is too large");
  storage_ = Tensor({total}, DType::kU8, device);
  block_tables_.resize(static_cast<size_t>(n_seq));
  for (int s = 0; s < n_seq && !paged; ++s) {
    auto& t = block_tables_[static_cast<size_t>(s)];
    for (int b = 0; b < blocks_per_seq_; ++b) t.push_back(s * blocks_per_seq_ + b);
  }
  len_.assign(static_cast<size_t>(n_seq), 0);
  in_use_.assign(static_cast<size_t>(n_seq), 0);
}

void KVCache::prefer_small_pages() {
  if (storage_.device() == Device::kCpu) advise_small_pages(storage_.raw(), storage_.nbytes());
}

ops::KvSlotView KVCache::view(int slot) const {
  MLKV_CHECK(slot >= 0 && slot < n_slots());
  ops::KvSlotView v;
  v.k_dtype = k_codec_->dtype;
  v.v_dtype = v_codec_->dtype;
  v.n_head_kv = layout_.n_head_kv;
  v.head_dim = layout_.head_dim;
  v.block_size = block_size_;
  v.k_row_bytes = k_row_bytes_;
  v.v_row_bytes = v_row_bytes_;
  v.k_head_stride = k_head_stride_;
  v.v_head_stride = v_head_stride_;
  char* base = const_cast<char*>(static_cast<const char*>(storage_.raw())) + slot * slot_stride_;
  v.k = base;
  v.v = base + static_cast<size_t>(layout_.n_head_kv) * k_head_stride_;
  v.block_tables = block_tables_.data();
  v.keys_rotated = slot_keys_rotated(slot);
  v.k_hadamard = k_hadamard_;
  return v;
}

void KVCache::copy_seq(int src, int dst, int n_tokens) {
  MLKV_CHECK(src >= 0 && src < n_seq_ && dst >= 0 && dst < n_seq_);
  MLKV_CHECK(n_tokens >= 0 && n_tokens <= len_[static_cast<size_t>(src)]);
  MLKV_REQUIRE(n_tokens <= mapped_positions(dst), "KV cache: sequence ", dst, " maps ",
               mapped_positions(dst), " positions, too few to copy ", n_tokens, " into");
  if (src != dst && n_tokens > 0) {
    DeviceAllocator& mem = device_allocator(storage_.device());
    for (int slot = 0; slot < n_slots(); ++slot) {
      const ops::KvSlotView v = view(slot);
      for (int h = 0; h < layout_.n_head_kv; ++h) {
        // Block by block: the two sequences' tables may differ.
        for (int p = 0; p < n_tokens;) {
          const int n = std::min(block_size_ - p % block_size_, n_tokens - p);
          mem.copy(v.k_row(dst, h, p), v.k_row(src, h, p), static_cast<size_t>(n) * k_row_bytes_);
          mem.copy(v.v_row(dst, h, p), v.v_row(src, h, p), static_cast<size_t>(n) * v_row_bytes_);
          p += n;
        }
      }
    }
  }
  len_[static_cast<size_t>(dst)] = n_tokens;
}

void KVCache::set_block_table(int seq, std::vector<int32_t> blocks) {
  MLKV_CHECK(seq >= 0 && seq < n_seq_);
  MLKV_REQUIRE(static_cast<int>(blocks.size()) <= blocks_per_seq_, "block table of ", blocks.size(),
               " blocks for a cache of ", blocks_per_seq_, " blocks per sequence");
  std::vector<int32_t> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    MLKV_REQUIRE(sorted[i] >= 0 && sorted[i] < n_blocks_, "block ", sorted[i],
                 " is not a block of this cache (", n_blocks_, " blocks)");
    MLKV_REQUIRE(i == 0 || sorted[i] != sorted[i - 1], "block ", sorted[i],
                 " appears twice in one block table");
  }
  block_tables_[static_cast<size_t>(seq)] = std::move(blocks);
}

int KVCache::mapped_positions(int seq) const {
  return std::min(n_ctx_, static_cast<int>(block_tables_[static_cast<size_t>(seq)].size()) * block_size_);
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
