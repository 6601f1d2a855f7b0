// Training data: packed rows of ctx + 1 tokens over token shards (io/token_shard.h, written by
// `mlkv tokenize`: documents separated by EOS).
//
// The row rule (the MLKV authors' packing: documents concatenated with EOS between them and cut
// into fixed-length rows, no padding, documents may span rows):
//   the shards of a split are concatenated in order into one stream tok[0, n);
//   R = (n - 1) / ctx rows; row r = tok[r * ctx, r * ctx + ctx + 1): inputs its first ctx tokens,
//   targets its last ctx (consecutive rows share one boundary token, so every token but the first
//   is predicted once per epoch);
//   global row g (the g-th row the run consumes) is row perm_e(g mod R) of epoch e = g / R, where
//   perm_e is a seeded Fisher-Yates shuffle of [0, R) (SplitMix64 of seed and epoch), or the
//   identity with --no-shuffle (then g -> g mod R, exactly tests/reference/mlkv_ref.py's rows);
//   optimizer step s consumes global rows [s B, (s + 1) B) for a global batch of B rows.
// So the data position is a pure function of (seed, step, B): a checkpoint stores the step and the
// rest follows. Rank k of W with accumulation A and micro-batch b = B / (W A) reads rows
// s B + (k A + a) b + [0, b) for micro-step a: its own contiguous slice.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlkv {
class TokenShard;
}

namespace mlkv::train {

// Several shards read as one token stream.
class TokenStream {
 public:
  explicit TokenStream(const std::vector<std::string>& shard_paths);
  ~TokenStream();
  TokenStream(TokenStream&&) noexcept;

  int64_t n_tokens() const { return n_tokens_; }
  int32_t eos_id() const { return eos_id_; }
  uint32_t n_vocab() const { return n_vocab_; }  // the largest n_vocab any shard declares
  size_t n_shards() const { return shards_.size(); }
  // Copies tokens [start, start + n) into out (across shard boundaries); throws when out of range.
  void read(int64_t start, int64_t n, int32_t* out) const;

 private:
  std::vector<std::unique_ptr<TokenShard>> shards_;
  std::vector<int64_t> offset_;  // first stream position of each shard
  int64_t n_tokens_ = 0;
  int32_t eos_id_ = -1;
  uint32_t n_vocab_ = 0;
};

// What a checkpoint records of the data a run reads, so that a resume on other data is noticed:
// the size of a token range and a 64-bit hash of its token values (FNV-1a over the 32-bit values,
// then mixed; any change of content, order or length changes it with near certainty).
struct DataFingerprint {
  int64_t tokens = 0;
  int64_t rows = 0;  // full rows of the range at the run's ctx
  uint64_t hash = 0;
  bool same_data(const DataFingerprint& o) const { return tokens == o.tokens && hash == o.hash; }
  std::string hash_hex() const;
};

// Rows of a token range [begin, end) of a stream, in the order of the row rule above.
class RowSource {
 public:
  RowSource(const TokenStream& stream, int64_t begin, int64_t end, int ctx, uint64_t seed,
            bool shuffle);

  int64_t n_rows() const { return n_rows_; }
  int ctx() const { return ctx_; }
  // Row index (in [0, n_rows)) of the g-th row consumed.
  int64_t row_of(int64_t g) const;
  // Writes the ctx + 1 tokens of global row g to out.
  void fetch(int64_t g, int32_t* out) const;
  // Writes rows g0 .. g0 + count - 1 back to back ([count, ctx + 1]).
  void fetch_rows(int64_t g0, int count, int32_t* out) const;
  // The range's fingerprint: reads every token of it once.
  DataFingerprint fingerprint() const;

 private:
  const std::vector<int64_t>& perm(int64_t epoch) const;

  const TokenStream* stream_;
  int64_t begin_, end_, n_rows_;
  int ctx_;
  uint64_t seed_;
  bool shuffle_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> perm_;
};

// The shards of a data argument: a folder written by `mlkv tokenize` (its meta.json names the
// train and val shards; without meta.json, train_*.bin and val_*.bin), or a single shard file.
struct DataFiles {
  std::vector<std::string> train, val;
  std::string tokenizer;  // from meta.json, when known
};
DataFiles find_data_files(const std::string& path);

}  // namespace mlkv::train
