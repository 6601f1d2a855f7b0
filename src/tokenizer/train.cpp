// Tokenizer training through SentencePieceTrainer (see train.h). Input lines are streamed to the
// trainer through a SentenceIterator, so JSONL text fields need no temporary file.
#include "tokenizer/train.h"

#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>

#include "core/check.h"
#include "core/mmap_file.h"
#include "core/timer.h"
#include "tokenizer/utf8.h"

namespace mlkv {

namespace {

// Yields every non-blank line of the inputs; for .jsonl files the lines of each record's text.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  LineIterator(const std::vector<std::string>& inputs, std::string field)
      : inputs_(inputs), field_(std::move(field)) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return status_; }
  void Next() override {
    while (true) {
      if (!pending_.empty() && take_pending_line()) return;
      if (in_.is_open()) {
        std::string line;
        if (std::getline(in_, line)) {
          ++line_no_;
          if (jsonl_) {
            auto j = nlohmann::json::parse(line, nullptr, false);
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            if (j.is_discarded() || !j.is_object() || !j.contains(field_) || !j[field_].is_string()) {
              fail_with(cat(inputs_[file_ - 1], ":", line_no_, ": not a JSON object with a string \"",
                            field_, "\""));
              return;
            }
            pending_ = j[field_].get<std::string>();
            pending_pos_ = 0;
          } else {
            pending_ = std::move(line);
            pending_pos_ = 0;
          }
          continue;
        }
        in_.close();
      }
      if (file_ >= inputs_.size()) {
        done_ = true;
        return;
      }
      const std::string& path = inputs_[file_++];
      in_.open(path, std::ios::binary);
      if (!in_) {
        fail_with(cat("cannot open '", path, "'"));
        return;
      }
      jsonl_ = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
      line_no_ = 0;
    }
  }
  uint64_t count() const { return count_; }

 private:
  // Moves the next non-blank line of pending_ into value_.
  bool take_pending_line() {
    while (pending_pos_ < pending_.size()) {
      size_t nl = pending_.find('\n', pending_pos_);
      size_t end = nl == std::string::npos ? pending_.size() : nl;
      std::string line = pending_.substr(pending_pos_, end - pending_pos_);
      pending_pos_ = end + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) {
        value_ = std::move(line);
        ++count_;
        return true;
      }
    }
    pending_.clear();
    return false;
  }
  void fail_with(const std::string& msg) {
    status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kInvalidArgument, msg);
    done_ = true;
  }

  const std::vector<std::string>& inputs_;
  std::string field_;
  size_t file_ = 0;
  std::ifstream in_;
  bool jsonl_ = false;
  size_t line_no_ = 0;
  std::string pending_;
  size_t pending_pos_ = 0;
  std::string value_;
  bool done_ = false;
  uint64_t count_ = 0;
  sentencepiece::util::Status status_;
};

// What the trainer will see of the corpus, counted the way SentencePiece counts it: the lines it
// keeps (non-blank, at most kMaxSentenceBytes) and their characters, with spaces as U+2581 and
// one more U+2581 per line (add_dummy_prefix).
struct Census {
  uint64_t lines = 0, bytes = 0, too_long = 0;
  std::unordered_map<uint32_t, uint64_t> chars;
};

constexpr size_t kMaxSentenceBytes = 16384;  // SentencePiece's max_sentence_length (below)
constexpr uint32_t kSpacePiece = 0x2581;

Census take_census(const TrainTokenizerOptions& opt) {
  Census c;
  LineIterator lines(opt.inputs, opt.text_field);
  for (; !lines.done(); lines.Next()) {
    const std::string& line = lines.value();
    if (line.size() > kMaxSentenceBytes) {
      ++c.too_long;
      continue;
    }
    ++c.lines;
    c.bytes += line.size();
    ++c.chars[kSpacePiece];
    for (size_t i = 0; i < line.size();) {
      size_t bad = 0;
      uint32_t cp = 0xFFFD;
      if (utf8::valid_length(line, i, &bad) > 0) {
        cp = utf8::next_code_point(line, i);
      } else {
        i += bad;
      }
      ++c.chars[cp == ' ' ? kSpacePiece : cp];
    }
  }
  MLKV_REQUIRE(lines.status().ok(), "tokenizer train: ", lines.status().message());
  return c;
}

// The characters the vocabulary must hold: SentencePiece's rule, the most frequent ones until
// their share of all characters reaches character_coverage.
size_t required_chars(const Census& c, double coverage) {
  std::vector<uint64_t> counts;
  uint64_t total = 0;
  for (const auto& [cp, n] : c.chars) {
    counts.push_back(n);
    total += n;
  }
  std::sort(counts.begin(), counts.end(), std::greater<>());
  size_t required = 0;
  uint64_t covered = 0;
  for (uint64_t n : counts) {
    if (static_cast<double>(covered) / static_cast<double>(total) >= coverage) break;
    covered += n;
    ++required;
  }
  return required;
}

std::string describe(const Census& c, const std::vector<std::string>& inputs) {
  return cat(c.lines, " line", c.lines == 1 ? "" : "s", ", ", c.bytes, " bytes, ", c.chars.size(),
             " distinct characters in ",
             inputs.size() == 1 ? inputs[0] : cat(inputs.size(), " files"));
}

}  // namespace

TrainTokenizerResult train_tokenizer(const TrainTokenizerOptions& opt) {
  MLKV_REQUIRE(!opt.inputs.empty(), "tokenizer train: no input files");
  MLKV_REQUIRE(opt.model_type == "bpe" || opt.model_type == "unigram",
               "tokenizer train: model type must be bpe or unigram, not '", opt.model_type, "'");
  MLKV_REQUIRE(opt.character_coverage > 0 && opt.character_coverage <= 1,
               "tokenizer train: --character-coverage ", opt.character_coverage,
               " must be in (0, 1]");
  std::error_code ec;
  for (const auto& in : opt.inputs) {
    MLKV_REQUIRE(std::filesystem::is_regular_file(in, ec), "tokenizer train: input '", in,
                 "' is not a readable file");
  }
  // Check the corpus before SentencePiece does, to say in our words what is missing.
  const Census census = take_census(opt);
  MLKV_REQUIRE(census.lines > 0, "tokenizer train: the corpus has no text to learn from: ",
               describe(census, opt.inputs),
               census.too_long > 0 ? cat(" (", census.too_long, " lines longer than ",
                                         kMaxSentenceBytes, " bytes are skipped)")
                                   : std::string(" (only blank lines)"));
  const int64_t min_vocab =
      kTrainFixedPieces + static_cast<int64_t>(required_chars(census, opt.character_coverage));
  MLKV_REQUIRE(opt.vocab_size >= min_vocab, "tokenizer train: --vocab ", opt.vocab_size,
               " is too small for this corpus (", describe(census, opt.inputs),
               "): the vocabulary holds ", kTrainFixedPieces,
               " fixed pieces (<unk>, <s>, </s>, 256 bytes)", " and the ",
               min_vocab - kTrainFixedPieces, " characters that make up --character-coverage ",
               opt.character_coverage, " of the text, so --vocab must be at least ", min_vocab,
               " (or lower --character-coverage)");
  std::filesystem::create_directories(opt.out_dir, ec);
  MLKV_REQUIRE(std::filesystem::is_directory(opt.out_dir, ec),
               "tokenizer train: cannot create output folder '", opt.out_dir, "'");
  int threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::thread::hardware_concurrency());
  std::unordered_map<std::string, std::string> args = {
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"character_coverage", std::to_string(opt.character_coverage)},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "true"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"max_sentence_length", std::to_string(kMaxSentenceBytes)},
      {"input_sentence_size", std::to_string(opt.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(std::max(1, threads))},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", opt.verbose ? "0" : "2"},
  };
  Timer timer;
  LineIterator lines(opt.inputs, opt.text_field);
  std::string model;
  auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  MLKV_REQUIRE(lines.status().ok(), "tokenizer train: ", lines.status().message());
  if (!status.ok()) {
    // "Vocabulary size too high (V). Please set it to a value <= M.": the text yields only M
    // pieces in all (the fixed ones included).
    const std::string msg = status.message();
    const char* kTooHigh = "Please set it to a value <= ";
    const size_t at = msg.find(kTooHigh);
    if (at == std::string::npos) fail("tokenizer train: SentencePiece failed: ", msg);
    const long most = std::strtol(msg.c_str() + at + std::strlen(kTooHigh), nullptr, 10);
    if (most < min_vocab) {
      fail("tokenizer train: the corpus is too small to train any vocabulary (",
           describe(census, opt.inputs), "): it yields ", most, " pieces, fewer than the ",
           min_vocab, " every vocabulary of this corpus holds; give more text");
    }
    fail("tokenizer train: --vocab ", opt.vocab_size, " is more than this corpus yields (",
         describe(census, opt.inputs), "): at most ", most, " pieces; give more text or --vocab ",
         most, " or less");
  }
  TrainTokenizerResult r;
  r.model_path = (std::filesystem::path(opt.out_dir) / "tokenizer.model").string();
  AtomicFileWriter w(r.model_path);
  w.write(model.data(), model.size());
  w.commit();
  r.sentences = lines.count();
  r.seconds = timer.seconds();
  return r;
}

}  // namespace mlkv
