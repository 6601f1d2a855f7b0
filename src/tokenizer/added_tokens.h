// Added / special tokens (tokenizer.json "added_tokens", GPT-2's <|endoftext|>): found in the text
// before any BPE, leftmost-longest first (the Hugging Face rule), with the lstrip / rstrip /
// single_word options. Matching is by first byte then memcmp: vocabularies have at most a few
// hundred added tokens.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlkv {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;       // swallow whitespace on the left of a match
  bool rstrip = false;       // swallow whitespace on the right of a match
  bool single_word = false;  // only match when not inside a word
  bool normalized = false;   // matched in normalized text (else in the raw input)
};

class AddedTokenMatcher {
 public:
  struct Part {
    size_t begin, end;  // byte range in the input
    int32_t id;         // the added token's id, or -1 for plain text
  };

  void add(const AddedToken& t);
  bool empty() const { return tokens_.empty(); }

  // Cuts s into plain-text parts and added-token matches, appended to out in order. Plain parts
  // are non-empty; whitespace swallowed by lstrip / rstrip belongs to no part.
  void split(std::string_view s, std::vector<Part>& out) const;

 private:
  std::vector<AddedToken> tokens_;
  std::array<std::vector<uint32_t>, 256> by_first_byte_;  // indices, longest content first
  // second_[b] bit c: some token starts with byte b then byte c (or is the single byte b, c = 0
  // bit is then kept in single_), a cheap filter before the candidate loop.
  std::array<std::array<uint64_t, 4>, 256> second_{};
  std::array<bool, 256> single_{};
};

}  // namespace mlkv
