// A compiled PCRE2 pattern (UTF + UCP, JIT when available) for pre-tokenizer splits and normalizer
// replacements. Unicode classes (\p{L}, \p{N}, \s) come from PCRE2's tables, not from mlkv.
// Inputs must be valid UTF-8 (the tokenizers sanitize text first); matching skips PCRE2's UTF check.
// One correction: in UCP mode PCRE2's \s also matches U+180E (no longer White_Space since Unicode
// 6.3), while the regex engines behind Hugging Face tokenizers (Oniguruma) and OpenAI's encoders
// use the White_Space property; patterns are compiled with \s and \S spelled as that property.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace mlkv {

class Regex {
 public:
  // literal: the pattern is a plain string, not a regular expression. Throws mlkv::Error with
  // PCRE2's message and the offset when the pattern does not compile.
  explicit Regex(std::string_view pattern, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [start, end) byte ranges of all non-overlapping, non-empty matches of s, left to
  // right (an empty match advances the search by one code point).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;
  // s with every match replaced by `with`.
  std::string replace_all(std::string_view s, std::string_view with) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

// pattern with \s / \S rewritten as the White_Space property (exposed for tests).
std::string white_space_pattern(std::string_view pattern);

}  // namespace mlkv
