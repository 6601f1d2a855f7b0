#include "kv/block_pool.h"

#include "core/check.h"

namespace mlkv {

size_t BlockPool::KeyHash::operator()(const Key& k) const {
  // FNV-1a over the parent, its generation and the tokens.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(static_cast<uint32_t>(k.parent));
  mix(k.parent_gen);
  for (int32_t t : k.tokens) mix(static_cast<uint32_t>(t));
  return static_cast<size_t>(h);
}

BlockPool::BlockPool(int n_blocks, int block_size) : block_size_(block_size) {
  MLKV_REQUIRE(n_blocks > 0, "a paged KV cache needs at least one block (got ", n_blocks, ")");
  MLKV_REQUIRE(block_size > 0, "the KV block size must be positive (got ", block_size, ")");
  ref_.assign(static_cast<size_t>(n_blocks), 0);
  gen_.assign(static_cast<size_t>(n_blocks), 0);
  lru_pos_.resize(static_cast<size_t>(n_blocks));
  in_lru_.assign(static_cast<size_t>(n_blocks), 0);
  free_.reserve(static_cast<size_t>(n_blocks));
  for (int b = n_blocks; b-- > 0;) free_.push_back(b);  // block 0 first
}

BlockPool::Key BlockPool::key_for(const std::vector<int32_t>& tokens, int i,
                                  int32_t parent) const {
  Key k;
  k.parent = parent;
  k.parent_gen = parent >= 0 ? gen_[static_cast<size_t>(parent)] : 0;
  k.tokens.assign(tokens.begin() + static_cast<std::ptrdiff_t>(i) * block_size_,
                  tokens.begin() + static_cast<std::ptrdiff_t>(i + 1) * block_size_);
  return k;
}

void BlockPool::uncache(int block) {
  auto it = key_of_.find(block);
  if (it == key_of_.end()) return;
  cached_.erase(it->second);
  key_of_.erase(it);
}

int BlockPool::allocate() {
  int b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();
    lru_.pop_front();
    in_lru_[static_cast<size_t>(b)] = 0;
    uncache(b);
    ++evictions_;
  } else {
    return -1;
  }
  ref_[static_cast<size_t>(b)] = 1;
  ++gen_[static_cast<size_t>(b)];
  return b;
}

void BlockPool::release(int block) {
  MLKV_CHECK(block >= 0 && block < n_blocks() && ref_[static_cast<size_t>(block)] > 0);
  if (--ref_[static_cast<size_t>(block)] > 0) return;
  if (key_of_.count(block) != 0) {
    lru_.push_back(block);
    lru_pos_[static_cast<size_t>(block)] = std::prev(lru_.end());
    in_lru_[static_cast<size_t>(block)] = 1;
  } else {
    free_.push_back(block);
  }
}

int BlockPool::match_prefix(const std::vector<int32_t>& tokens, int max_blocks,
                            std::vector<int32_t>* out) {
  const int n_full = std::min(max_blocks, static_cast<int>(tokens.size()) / block_size_);
  int32_t parent = -1;
  int n = 0;
  for (int i = 0; i < n_full; ++i) {
    auto it = cached_.find(key_for(tokens, i, parent));
    if (it == cached_.end()) break;
    const int32_t b = it->second;
    if (in_lru_[static_cast<size_t>(b)]) {
      lru_.erase(lru_pos_[static_cast<size_t>(b)]);
      in_lru_[static_cast<size_t>(b)] = 0;
    }
    ++ref_[static_cast<size_t>(b)];
    out->push_back(b);
    parent = b;
    ++n;
  }
  hits_ += n;
  return n;
}

void BlockPool::register_prefix(const std::vector<int32_t>& tokens,
                                const std::vector<int32_t>& blocks, int n_full) {
  MLKV_CHECK(n_full <= static_cast<int>(blocks.size()) &&
             static_cast<size_t>(n_full) * block_size_ <= tokens.size());
  int32_t parent = -1;
  for (int i = 0; i < n_full; ++i) {
    const int32_t b = blocks[static_cast<size_t>(i)];
    if (key_of_.count(b) == 0) {
      Key k = key_for(tokens, i, parent);
      if (cached_.count(k) != 0) {
        // Another block already holds this content (two sequences prefilled the same prefix in
        // one step): the chain continues through ours, which is not cached, so stop here.
        return;
      }
      cached_.emplace(k, b);
      key_of_.emplace(b, std::move(k));
    }
    parent = b;
  }
}

}  // namespace mlkv
