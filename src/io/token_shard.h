// Binary token shards: what `mlkv tokenize` writes and training / evaluation read. One file holds
// a 64-byte little-endian header and then the token array (uint16 or uint32), documents separated
// by the EOS id. The byte layout is in docs/TOKENIZERS.md. This file knows nothing about
// tokenizers, so mlkv_core (the trainer) can read shards without linking mlkv_tokenizer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlkv {

class MappedFile;

// Bytes per token.
enum class TokenDtype : uint32_t { kU16 = 2, kU32 = 4 };

inline constexpr char kShardMagic[8] = {'M', 'L', 'K', 'V', 'T', 'O', 'K', 'S'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 64;

struct ShardHeader {
  uint32_t version = kShardVersion;
  TokenDtype dtype = TokenDtype::kU16;
  uint64_t n_tokens = 0;
  uint64_t n_docs = 0;   // documents that end in this shard (EOS count when eos_id >= 0)
  uint32_t n_vocab = 0;  // every token is < n_vocab
  int32_t eos_id = -1;   // the document separator, -1 when none
};

// uint16 when every id of the vocabulary fits, else uint32.
TokenDtype dtype_for_vocab(int64_t n_vocab);
const char* dtype_name(TokenDtype dtype);  // "uint16" / "uint32"

// Checks and decodes a shard held in memory (size = the whole file). Throws mlkv::Error naming
// `name` and the problem: short header, wrong magic, unknown version or dtype, or a size that does
// not match the token count.
ShardHeader parse_shard_header(const uint8_t* data, size_t size, const std::string& name);

// Read access to a shard in memory (not owning it).
class TokenShardView {
 public:
  TokenShardView(const uint8_t* data, size_t size, std::string name);

  const ShardHeader& header() const { return header_; }
  uint64_t n_tokens() const { return header_.n_tokens; }
  TokenDtype dtype() const { return header_.dtype; }
  int32_t eos_id() const { return header_.eos_id; }
  uint32_t n_vocab() const { return header_.n_vocab; }
  const std::string& name() const { return name_; }

  // The raw token array (n_tokens elements of dtype); aligned when the shard is mmapped.
  const void* tokens() const { return tokens_; }
  uint32_t at(uint64_t i) const;  // bounds-checked (throws mlkv::Error)
  // Copies tokens [start, start + n) to out; throws mlkv::Error when out of range.
  void read(uint64_t start, size_t n, int32_t* out) const;
  // Throws mlkv::Error naming the first token >= n_vocab (an O(n) scan).
  void validate_tokens() const;

 private:
  std::string name_;
  ShardHeader header_;
  const uint8_t* tokens_ = nullptr;
};

// A shard file, memory-mapped.
class TokenShard : public TokenShardView {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();

 private:
  TokenShard(std::unique_ptr<MappedFile> file);
  std::unique_ptr<MappedFile> file_;
};

// Builds a shard in memory and writes it atomically on finish().
class TokenShardWriter {
 public:
  TokenShardWriter(std::string path, TokenDtype dtype, int32_t n_vocab, int32_t eos_id);

  // Appends ids (each checked against n_vocab); add_eos then appends the EOS id and counts a
  // document end.
  void append(const int32_t* ids, size_t n, bool add_eos = false);
  void append(const std::vector<int32_t>& ids, bool add_eos = false) {
    append(ids.data(), ids.size(), add_eos);
  }
  uint64_t n_tokens() const { return header_.n_tokens; }
  uint64_t n_docs() const { return header_.n_docs; }
  const std::string& path() const { return path_; }
  void finish();  // writes the file; the writer is empty afterwards

 private:
  std::string path_;
  ShardHeader header_;
  std::vector<uint8_t> data_;
};

}  // namespace mlkv
