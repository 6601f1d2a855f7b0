// Tokenizer training: a small SentencePiece vocabulary trained on a corpus slice loads back through
// load_tokenizer() and round-trips text exactly (including text it never saw).
#include <gtest/gtest.h>

#include <fstream>

#include "core/check.h"
#include "core/mmap_file.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/train.h"

namespace mlkv {
namespace {

TEST(TokenizerTrain, TrainedModelLoadsBackAndRoundTrips) {
  MLKV_REQUIRE_SHARED();
  test::TempDir dir;
  std::string corpus = read_text_file(test::shared_path("text/tinyshakespeare.txt")).substr(0, 200000);
  std::ofstream(dir.file("c.txt"), std::ios::binary) << corpus;
  std::ofstream(dir.file("d.jsonl"), std::ios::binary) << "{\"text\": \"json line one\\nline two\"}\n";
  TrainTokenizerOptions opt;
  opt.inputs = {dir.file("c.txt"), dir.file("d.jsonl")};
  opt.out_dir = dir.file("tok");
  opt.vocab_size = 800;  // 259 of them are <unk>, <s>, </s> and the 256 byte pieces
  TrainTokenizerResult r = train_tokenizer(opt);
  EXPECT_GT(r.sentences, 1000u);
  auto tok = load_tokenizer(opt.out_dir);
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->n_vocab(), 800);
  EXPECT_EQ(tok->eos_id(), 2);
  for (std::string s : {std::string("ROMEO: what light through yonder window breaks?"),
                        std::string("  two  spaces\tand tab\nnew line"), std::string("日本語 😀 ümlaut")}) {
    auto ids = tok->encode(s);
    EXPECT_EQ(tok->decode(ids), s);
  }
  // Training compresses: far fewer tokens than bytes on in-domain text.
  auto ids = tok->encode(corpus.substr(0, 5000));
  EXPECT_LT(ids.size(), 5000u / 2);
}

TEST(TokenizerTrain, BadSettingsAreErrors) {
  test::TempDir dir;
  TrainTokenizerOptions opt;
  opt.out_dir = dir.file("tok");
  opt.inputs = {dir.file("missing.txt")};
  EXPECT_THROW(train_tokenizer(opt), Error);
  std::ofstream(dir.file("tiny.txt")) << "a b c\n";
  opt.inputs = {dir.file("tiny.txt")};
  opt.vocab_size = 5000;  // far more than a 3-letter corpus can give
  EXPECT_THROW(train_tokenizer(opt), Error);
  opt.model_type = "wordpiece";
  EXPECT_THROW(train_tokenizer(opt), Error);
}

std::string error_of(const TrainTokenizerOptions& opt) {
  try {
    train_tokenizer(opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The number after `key` in a message (the bound it names).
int number_after(const std::string& msg, const std::string& key) {
  const size_t at = msg.find(key);
  return at == std::string::npos ? -1 : std::atoi(msg.c_str() + at + key.size());
}

// A tiny corpus: the messages say in mlkv's words what the corpus allows, and the bounds they give
// are exact - the smallest and the largest vocabulary named both train (SentencePiece itself
// says "set it to a value <= 38" for a corpus whose smallest vocabulary is 281).
TEST(TokenizerTrain, TinyCorpusBoundsAreExactAndExplained) {
  test::TempDir dir;
  std::ofstream(dir.file("tiny.txt")) << "the cat sat on the mat\nthe dog sat on the log\n"
                                         "and then they all went home\n";
  for (const char* type : {"bpe", "unigram"}) {
    TrainTokenizerOptions opt;
    opt.inputs = {dir.file("tiny.txt")};
    opt.model_type = type;
    opt.threads = 1;
    opt.out_dir = dir.file(std::string("tok_") + type);
    opt.vocab_size = kMinTrainVocab;
    const std::string small = error_of(opt);
    // 15 characters: a-z letters of the text and the space marker.
    EXPECT_NE(small.find("15 characters"), std::string::npos) << small;
    const int lo = number_after(small, "must be at least ");
    EXPECT_EQ(lo, kTrainFixedPieces + 15) << small;
    opt.vocab_size = lo;
    EXPECT_EQ(error_of(opt), "") << type << " at the smallest vocabulary named";
    opt.vocab_size = 2000;
    const std::string big = error_of(opt);
    EXPECT_NE(big.find("more than this corpus yields"), std::string::npos) << big;
    const int hi = number_after(big, "at most ");
    EXPECT_GE(hi, lo) << big;
    opt.vocab_size = hi;
    EXPECT_EQ(error_of(opt), "") << type << " at the largest vocabulary named";
    EXPECT_EQ(load_tokenizer(opt.out_dir)->n_vocab(), hi);
  }
  // No text at all: said so, not an assertion of SentencePiece's.
  std::ofstream(dir.file("empty.txt")) << "\n  \n";
  TrainTokenizerOptions opt;
  opt.inputs = {dir.file("empty.txt")};
  opt.out_dir = dir.file("tok_empty");
  opt.vocab_size = 300;
  const std::string empty = error_of(opt);
  EXPECT_NE(empty.find("the corpus has no text"), std::string::npos) << empty;
}

}  // namespace
}  // namespace mlkv
