// The physical blocks of a paged KV cache (kv_cache.h: fixed-size token blocks, one block table
// per sequence serving every owner layer): which are free, how many sequences hold each, and a
// prefix cache of full blocks of tokens that requests with the same prompt prefix reuse instead
// of prefilling it again.
//
// Prefix cache: a block holding tokens [i * B, (i + 1) * B) of some sequence, once written, is
// identified by those B tokens and the block before it (its id and the generation of that id, so
// a reused id never matches a stale child). Blocks no sequence holds stay cached until a block is
// needed and none is free; then the least recently used is evicted. Blocks are only ever shared
// whole, and a sequence never writes into a block it shares (it shares full blocks of its prompt
// and writes from the end of the prompt on), so shared blocks stay immutable.
//
// Not thread-safe: one scheduler thread owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace mlkv {

class BlockPool {
 public:
  // n_blocks > 0 blocks of block_size > 0 tokens. Throws mlkv::Error otherwise.
  BlockPool(int n_blocks, int block_size);

  int n_blocks() const { return static_cast<int>(ref_.size()); }
  int block_size() const { return block_size_; }
  // Blocks a new sequence could take now: free ones plus cached ones no sequence holds.
  int n_available() const { return static_cast<int>(free_.size() + lru_.size()); }
  // Blocks held by at least one sequence.
  int n_used() const { return n_blocks() - n_available(); }
  // Blocks in the prefix cache (held or not).
  int n_cached() const { return static_cast<int>(key_of_.size()); }

  // A block to write (held once): a free one, else the least recently used unheld cached block
  // (evicted). -1 when every block is held.
  int allocate();
  // Drops one hold. An unheld cached block stays cached (evictable); any other becomes free.
  void release(int block);
  // The longest run of cached full blocks that starts tokens, at most max_blocks: their ids are
  // appended to out, each held once more. Returns how many.
  int match_prefix(const std::vector<int32_t>& tokens, int max_blocks, std::vector<int32_t>* out);
  // Puts blocks[0, n_full) (a sequence's table, already written with tokens[0, n_full * B)) in
  // the prefix cache; blocks already cached, or whose content another cached block already has,
  // are left as they are.
  void register_prefix(const std::vector<int32_t>& tokens, const std::vector<int32_t>& blocks,
                       int n_full);

  // Lookups and evictions so far (prefix hits are blocks matched).
  int64_t prefix_hits() const { return hits_; }
  int64_t evictions() const { return evictions_; }

 private:
  struct Key {
    int32_t parent;         // the block before (-1: none)
    uint32_t parent_gen;    // its generation when this block was cached
    std::vector<int32_t> tokens;
    bool operator==(const Key& o) const {
      return parent == o.parent && parent_gen == o.parent_gen && tokens == o.tokens;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  Key key_for(const std::vector<int32_t>& tokens, int i, int32_t parent) const;
  void uncache(int block);

  int block_size_;
  std::vector<int> ref_;         // [n_blocks] holds
  std::vector<uint32_t> gen_;    // [n_blocks] bumped whenever a block is (re)allocated
  std::vector<int32_t> free_;    // free blocks (a stack)
  std::unordered_map<Key, int32_t, KeyHash> cached_;  // key -> block
  std::unordered_map<int32_t, Key> key_of_;           // block -> key (cached blocks)
  std::list<int32_t> lru_;                            // unheld cached blocks, oldest first
  std::vector<std::list<int32_t>::iterator> lru_pos_;  // [n_blocks] valid when in lru_
  std::vector<uint8_t> in_lru_;
  int64_t hits_ = 0, evictions_ = 0;
};

}  // namespace mlkv
