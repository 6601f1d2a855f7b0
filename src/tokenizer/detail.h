// Internal helpers shared by the tokenizer implementations (not part of the public interface).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace mlkv::detail {

// decode() for every implementation: the concatenated token_bytes_at() of the ids with each
// invalid UTF-8 subpart replaced by U+FFFD (StreamDecoder produces the same text piecewise).
// at_start holds until the first id whose token_bytes() is not empty.
std::string decode_ids(const Tokenizer& tok, const std::vector<int32_t>& ids);

// Throws mlkv::Error unless 0 <= id < n_vocab.
void check_id(int32_t id, int32_t n_vocab);

// "<0x0A>" -> 10; -1 when piece is not a byte-fallback piece.
int byte_fallback_value(const std::string& piece);

// Loaders of the other formats (sentencepiece_tokenizer.cpp, llama2c_tokenizer.cpp).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path);
std::unique_ptr<Tokenizer> load_llama2c(const std::string& path);

}  // namespace mlkv::detail
