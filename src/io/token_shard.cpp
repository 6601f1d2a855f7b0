// Token shard reading and writing (see token_shard.h, layout in docs/TOKENIZERS.md).
#include "io/token_shard.h"

#include <cstring>

#include "core/check.h"
#include "core/mmap_file.h"

namespace mlkv {

namespace {

template <typename T>
T load_le(const uint8_t* p) {  // mlkv targets little-endian hosts only
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void store_le(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

}  // namespace

TokenDtype dtype_for_vocab(int64_t n_vocab) {
  return n_vocab <= 65536 ? TokenDtype::kU16 : TokenDtype::kU32;
}

const char* dtype_name(TokenDtype dtype) {
  return dtype == TokenDtype::kU16 ? "uint16" : "uint32";
}

ShardHeader parse_shard_header(const uint8_t* data, size_t size, const std::string& name) {
  MLKV_REQUIRE(size >= kShardHeaderBytes, name, ": not a token shard (", size,
               " bytes, shorter than the ", kShardHeaderBytes, "-byte header)");
  MLKV_REQUIRE(std::memcmp(data, kShardMagic, sizeof kShardMagic) == 0, name,
               ": not a token shard (wrong magic; expected \"MLKVTOKS\")");
  ShardHeader h;
  h.version = load_le<uint32_t>(data + 8);
  MLKV_REQUIRE(h.version == kShardVersion, name, ": unsupported token shard version ", h.version,
               " (this mlkv reads version ", kShardVersion, ")");
  uint32_t bytes = load_le<uint32_t>(data + 12);
  MLKV_REQUIRE(bytes == 2 || bytes == 4, name, ": bad token size ", bytes, " (expected 2 or 4)");
  h.dtype = static_cast<TokenDtype>(bytes);
  h.n_tokens = load_le<uint64_t>(data + 16);
  h.n_docs = load_le<uint64_t>(data + 24);
  h.n_vocab = load_le<uint32_t>(data + 32);
  h.eos_id = load_le<int32_t>(data + 36);
  const size_t payload = size - kShardHeaderBytes;
  MLKV_REQUIRE(h.n_tokens <= payload / bytes && h.n_tokens * bytes == payload, name,
               ": length mismatch: the header says ", h.n_tokens, " tokens (",
               h.n_tokens <= payload / bytes ? std::to_string(h.n_tokens * bytes) : "too many",
               " bytes) but the file holds ", payload, " bytes after the header (truncated?)");
  MLKV_REQUIRE(h.n_vocab > 0, name, ": n_vocab is 0");
  MLKV_REQUIRE(bytes == 4 || h.n_vocab <= 65536, name, ": n_vocab ", h.n_vocab,
               " does not fit uint16 tokens");
  MLKV_REQUIRE(h.eos_id >= -1 && h.eos_id < static_cast<int64_t>(h.n_vocab), name, ": eos_id ",
               h.eos_id, " is out of range");
  return h;
}

TokenShardView::TokenShardView(const uint8_t* data, size_t size, std::string name)
    : name_(std::move(name)), header_(parse_shard_header(data, size, name_)),
      tokens_(data + kShardHeaderBytes) {}

uint32_t TokenShardView::at(uint64_t i) const {
  MLKV_REQUIRE(i < header_.n_tokens, name_, ": token index ", i, " is out of range (",
               header_.n_tokens, " tokens)");
  if (header_.dtype == TokenDtype::kU16) return load_le<uint16_t>(tokens_ + 2 * i);
  return load_le<uint32_t>(tokens_ + 4 * i);
}

void TokenShardView::read(uint64_t start, size_t n, int32_t* out) const {
  MLKV_REQUIRE(start <= header_.n_tokens && n <= header_.n_tokens - start, name_,
               ": reading tokens [", start, ", ", start + n, ") past the end (", header_.n_tokens,
               " tokens)");
  if (header_.dtype == TokenDtype::kU16) {
    for (size_t k = 0; k < n; ++k) out[k] = load_le<uint16_t>(tokens_ + 2 * (start + k));
  } else {
    for (size_t k = 0; k < n; ++k) {
      out[k] = static_cast<int32_t>(load_le<uint32_t>(tokens_ + 4 * (start + k)));
    }
  }
}

void TokenShardView::validate_tokens() const {
  for (uint64_t i = 0; i < header_.n_tokens; ++i) {
    uint32_t t = header_.dtype == TokenDtype::kU16 ? load_le<uint16_t>(tokens_ + 2 * i)
                                                   : load_le<uint32_t>(tokens_ + 4 * i);
    MLKV_REQUIRE(t < header_.n_vocab, name_, ": token ", i, " is ", t, ", not below n_vocab ",
                 header_.n_vocab);
  }
}

TokenShard::TokenShard(const std::string& path)
    : TokenShard(std::make_unique<MappedFile>(path)) {}

TokenShard::TokenShard(std::unique_ptr<MappedFile> file)
    : TokenShardView(file->data(), file->size(), file->path()), file_(std::move(file)) {}

TokenShard::~TokenShard() = default;

TokenShardWriter::TokenShardWriter(std::string path, TokenDtype dtype, int32_t n_vocab,
                                   int32_t eos_id)
    : path_(std::move(path)) {
  MLKV_REQUIRE(n_vocab > 0, path_, ": n_vocab must be positive");
  MLKV_REQUIRE(dtype == TokenDtype::kU32 || n_vocab <= 65536, path_, ": n_vocab ", n_vocab,
               " does not fit uint16 tokens");
  MLKV_REQUIRE(eos_id >= -1 && eos_id < n_vocab, path_, ": eos_id ", eos_id, " is out of range");
  header_.dtype = dtype;
  header_.n_vocab = static_cast<uint32_t>(n_vocab);
  header_.eos_id = eos_id;
}

void TokenShardWriter::append(const int32_t* ids, size_t n, bool add_eos) {
  const size_t bytes = static_cast<size_t>(header_.dtype);
  MLKV_REQUIRE(!add_eos || header_.eos_id >= 0, path_, ": no EOS id to end a document with");
  for (size_t k = 0; k < n; ++k) {  // validate first so that a bad id leaves the shard unchanged
    MLKV_REQUIRE(ids[k] >= 0 && static_cast<uint32_t>(ids[k]) < header_.n_vocab, path_,
                 ": token id ", ids[k], " is out of range [0, ", header_.n_vocab, ")");
  }
  size_t old = data_.size();
  data_.resize(old + (n + (add_eos ? 1 : 0)) * bytes);
  uint8_t* p = data_.data() + old;
  auto put = [&](int32_t id) {
    if (bytes == 2) {
      store_le(p, static_cast<uint16_t>(id));
    } else {
      store_le(p, static_cast<uint32_t>(id));
    }
    p += bytes;
  };
  for (size_t k = 0; k < n; ++k) put(ids[k]);
  if (add_eos) {
    put(header_.eos_id);
    ++header_.n_docs;
  }
  header_.n_tokens += n + (add_eos ? 1 : 0);
}

void TokenShardWriter::finish() {
  uint8_t h[kShardHeaderBytes] = {};
  std::memcpy(h, kShardMagic, sizeof kShardMagic);
  store_le(h + 8, header_.version);
  store_le(h + 12, static_cast<uint32_t>(header_.dtype));
  store_le(h + 16, header_.n_tokens);
  store_le(h + 24, header_.n_docs);
  store_le(h + 32, header_.n_vocab);
  store_le(h + 36, header_.eos_id);
  AtomicFileWriter w(path_);
  w.write(h, sizeof h);
  w.write(data_.data(), data_.size());
  w.commit();
  data_.clear();
  header_.n_tokens = header_.n_docs = 0;
}

}  // namespace mlkv
