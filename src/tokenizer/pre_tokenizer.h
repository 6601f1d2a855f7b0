// Pre-tokenizers of a Hugging Face tokenizer.json ("pre_tokenizer" field): ByteLevel (GPT-2's
// split regex + the byte-level alphabet), Metaspace (SentencePiece-style "▁"), Split (regex or
// string, all five delimiter behaviours, invert), Digits, Whitespace, WhitespaceSplit, and
// Sequence of these. Unknown types are rejected
// at load with the type named. Pieces are byte ranges of the (normalized) text: the byte-level
// alphabet itself is applied to the vocabulary once at load, never to the text.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mlkv {

// GPT-2's split pattern (ByteLevel with use_regex, and GPT-2's own encoder.py).
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class PreTokenizer {
 public:
  using Span = std::pair<size_t, size_t>;  // [begin, end) in bytes

  // Builds the pipeline from the JSON value (null: the whole segment is one piece).
  static std::unique_ptr<PreTokenizer> from_json(const nlohmann::json& j, const std::string& where);
  // GPT-2's pre-tokenizer: ByteLevel, no prefix space.
  static std::unique_ptr<PreTokenizer> gpt2();
  PreTokenizer();
  ~PreTokenizer();

  // Whether some step is ByteLevel (then the vocabulary is in GPT-2's byte-level alphabet).
  bool byte_level() const { return byte_level_; }
  // ByteLevel's add_prefix_space: a space is prepended to every segment that does not start with one.
  bool add_prefix_space() const { return add_prefix_space_; }

  // Metaspace: spaces become `replacement`, which is also prepended to the segment (always, or
  // only to the segment at the start of the text, or never), before the split steps run.
  enum class Prepend { kAlways, kFirst, kNever };
  bool metaspace() const { return metaspace_; }
  const std::string& meta_replacement() const { return meta_replacement_; }
  Prepend meta_prepend() const { return meta_prepend_; }

  // Splits s into non-empty pieces, appended to out in text order.
  void split(std::string_view s, std::vector<Span>& out) const;

 private:
  struct Step;
  void add(const nlohmann::json& j, const std::string& where, bool first);
  std::vector<std::unique_ptr<Step>> steps_;
  bool byte_level_ = false;
  bool add_prefix_space_ = false;
  bool metaspace_ = false;
  std::string meta_replacement_;
  Prepend meta_prepend_ = Prepend::kAlways;
};

}  // namespace mlkv
