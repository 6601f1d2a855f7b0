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

}  // namespace
}  // namespace mlkv
