// Training a tokenizer on a corpus (`mlkv tokenizer train`), with SentencePiece's trainer as the
// engine. The result is out_dir/tokenizer.model, which load_tokenizer() opens as a SentencePiece
// tokenizer. Settings are chosen so that decode(encode(x)) == x: no text normalization, no
// whitespace squeezing, byte fallback for characters outside the vocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mlkv {

// Pieces every trained vocabulary holds besides the corpus's characters and the learnt pieces:
// <unk>, <s>, </s> and the 256 byte-fallback pieces. A vocabulary also holds at least one
// character (the U+2581 space marker), hence the smallest --vocab.
inline constexpr int kTrainFixedPieces = 259;
inline constexpr int kMinTrainVocab = kTrainFixedPieces + 1;

struct TrainTokenizerOptions {
  std::vector<std::string> inputs;  // .txt (one sentence per non-blank line) or .jsonl (text field)
  std::string out_dir;
  int vocab_size = 8000;
  std::string model_type = "bpe";  // "bpe" or "unigram"
  double character_coverage = 0.9995;
  std::string text_field = "text";
  uint64_t max_sentences = 2'000'000;  // SentencePiece samples this many lines at most
  int threads = 0;                     // 0: all cores
  bool verbose = false;                // SentencePiece's own log on stderr
};

struct TrainTokenizerResult {
  std::string model_path;
  uint64_t sentences = 0;
  double seconds = 0;
};

// Checks the corpus first (some text; a vocabulary large enough for its characters) and throws
// mlkv::Error saying what is missing: unreadable inputs, no text, a vocabulary smaller than the
// fixed pieces plus the characters to cover, or larger than the corpus yields.
TrainTokenizerResult train_tokenizer(const TrainTokenizerOptions& opt);

}  // namespace mlkv
