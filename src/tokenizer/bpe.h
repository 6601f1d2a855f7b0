// Byte-pair-encoding tokenizer in the Hugging Face / GPT-2 sense: added tokens are cut out first,
// the rest is normalized, pre-tokenized into words, and each word is merged by rank. Byte-level
// vocabularies (GPT-2, GPT-NeoX, Llama-3) are stored as raw bytes at load, so encoding never maps
// text into the byte-level alphabet. Words are cached per thread (no locks), which is what makes
// encoding fast on natural text. Loaders: load_hf_tokenizer_json (tokenizer.json) and load_gpt2_bpe
// (encoder.json + vocab.bpe).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace mlkv {

// Everything a BpeTokenizer is built from; the loaders fill it.
struct BpeSpec {
  std::string source;                                // file name, for messages
  std::vector<std::pair<std::string, int32_t>> vocab;  // piece as stored -> id
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::vector<AddedToken> added;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::string unk_token;  // empty: none
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  int32_t bos_id = -1, eos_id = -1;
  // Decoder of a non-byte-level vocabulary: string replacements applied to each piece ("▁" -> " ")
  // and what happens to the first piece: a Strip decoder drops one leading space, a Metaspace
  // decoder every space that came from "▁" (Hugging Face's rule for its first token).
  enum class FirstPiece { kKeep, kStripOneSpace, kDropSpaces };
  std::vector<std::pair<std::string, std::string>> decode_replace;
  FirstPiece decode_first = FirstPiece::kKeep;
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeSpec spec);
  ~BpeTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string token_piece(int32_t id) const override;
  std::string token_bytes(int32_t id) const override;
  std::string token_bytes_at(int32_t id, bool at_start) const override;
  int32_t n_vocab() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  std::string kind() const override { return "bpe"; }

  // The id of a piece as stored in the vocabulary or added tokens, -1 if none.
  int32_t piece_to_id(std::string_view piece) const;
  // Whether the vocabulary is in GPT-2's byte-level alphabet.
  bool byte_level() const { return byte_level_; }

 private:
  class WordCache;
  // at_start: the segment begins at the start of the text (Metaspace's "first" prepend scheme).
  void encode_raw(std::string_view s, std::vector<int32_t>& ids) const;
  void encode_normalized(std::string_view s, bool at_start, std::vector<int32_t>& ids) const;
  void encode_plain(std::string_view s, bool at_start, std::vector<int32_t>& ids) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void bpe(std::string_view word, std::vector<int32_t>& ids) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& syms) const;
  int32_t checked(int32_t id) const;

  std::string source_;
  std::vector<std::string> pieces_;  // id -> piece as stored
  std::vector<std::string> bytes_;   // id -> bytes it decodes to
  std::unordered_map<std::string, int32_t> piece_ids_;  // piece as stored -> id
  std::unordered_map<std::string, int32_t> text_ids_;   // the text a token stands for -> id
  // (left id, right id) -> (rank, merged id): open addressing, linear probing, power-of-two size.
  struct MergeSlot {
    uint64_t key = kEmptyKey;
    int32_t rank = 0, id = 0;
  };
  static constexpr uint64_t kEmptyKey = ~uint64_t{0};
  const MergeSlot* find_merge(int32_t left, int32_t right) const;
  std::vector<MergeSlot> merges_;
  int merge_shift_ = 64;
  int32_t byte_ids_[256];            // byte-level: the id of each single byte (-1 if missing)
  int32_t byte_fallback_ids_[256];   // "<0xXX>" pieces (-1 if missing)
  AddedTokenMatcher raw_added_, normalized_added_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  bool byte_level_ = false, byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  BpeSpec::FirstPiece decode_first_ = BpeSpec::FirstPiece::kKeep;
  int32_t unk_id_ = -1, bos_id_ = -1, eos_id_ = -1;
  uint64_t instance_;  // keys the per-thread word caches
};

// Loads a Hugging Face tokenizer.json with a BPE model. Throws mlkv::Error naming the file and the
// problem (bad JSON, unsupported model / normalizer / pre-tokenizer type, merge not in vocab, ...).
std::unique_ptr<BpeTokenizer> load_hf_tokenizer_json(const std::string& path);
// The same from the file's text (`name` is used in messages): what the fuzzer drives.
std::unique_ptr<BpeTokenizer> parse_hf_tokenizer_json(std::string_view json, const std::string& name);
// Loads GPT-2's encoder.json + vocab.bpe (<|endoftext|> is the special / EOS token).
std::unique_ptr<BpeTokenizer> load_gpt2_bpe(const std::string& encoder_json,
                                            const std::string& vocab_bpe);

}  // namespace mlkv
