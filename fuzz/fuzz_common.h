// Pieces shared by the fuzz targets that drive the server without a model: a tokenizer whose ids
// are bytes, and the check that aborts (so libFuzzer records the input) when an invariant breaks.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "mlkv/tokenizer.h"

namespace mlkv::fuzz {

// Ids 0..255 are the bytes; ids 256..n_vocab-1 exist (the vocabulary is n_vocab) and decode to one
// byte too (id mod 256). BOS is id 1.
class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(int32_t n_vocab) : n_vocab_(n_vocab) {}
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(1);
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s += static_cast<char>(id);
    return s;
  }
  std::string token_piece(int32_t id) const override {
    return std::string(1, static_cast<char>(id));
  }
  std::string token_bytes(int32_t id) const override { return token_piece(id); }
  int32_t n_vocab() const override { return n_vocab_; }
  std::string kind() const override { return "bytes"; }

 private:
  int32_t n_vocab_;
};

// Aborts with `what` (and `context`, when given, printed first) unless ok.
inline void require(bool ok, const char* what, const std::string* context = nullptr) {
  if (!ok) {
    if (context != nullptr) std::fprintf(stderr, "server wrote:\n%s\n", context->c_str());
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

}  // namespace mlkv::fuzz
