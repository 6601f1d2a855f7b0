// Bad input: truncated or corrupt tokenizer files, unsupported tokenizer.json components, bad ids.
// Every case must throw mlkv::Error whose message names the file and the problem; none may crash.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"
#include "test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace mlkv {
namespace {

using nlohmann::json;

void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream(path, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
}

// Loads path, expects mlkv::Error mentioning the file name and `what`.
void expect_load_error(const std::string& path, const std::string& what) {
  try {
    load_tokenizer(path);
    ADD_FAILURE() << "no error loading " << path;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(std::filesystem::path(path).filename().string()), std::string::npos)
        << "message does not name the file: " << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
  }
}

json small_bpe() {
  return {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}}},
          {"decoder", {{"type", "ByteLevel"}}}};
}

TEST(TokenizerBadInput, TokenizerJsonProblemsAreNamed) {
  test::TempDir dir;
  auto with = [&](const std::string& name, const json& j) {
    std::string p = dir.file(name);
    write_bytes(p, j.dump());
    return p;
  };
  json j = small_bpe();
  ASSERT_NO_THROW(parse_hf_tokenizer_json(j.dump(), "ok"));

  j = small_bpe();
  j["pre_tokenizer"] = {{"type", "FancySplitter"}};
  expect_load_error(with("unknown_pre.json", j), "unsupported pre_tokenizer type 'FancySplitter'");
  j = small_bpe();
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "xx"}};
  expect_load_error(with("unknown_norm.json", j), "unsupported normalizer type 'Precompiled'");
  j = small_bpe();
  j["model"]["type"] = "WordPiece";
  expect_load_error(with("wordpiece.json", j), "unsupported model type 'WordPiece'");
  j = small_bpe();
  j["model"]["merges"] = {"a c"};
  expect_load_error(with("bad_merge.json", j), "not in the vocabulary");
  j = small_bpe();
  j["model"]["merges"] = {"abc"};
  expect_load_error(with("bad_merge2.json", j), "merge 0");
  j = small_bpe();
  j["model"]["vocab"]["x"] = -5;
  expect_load_error(with("neg_id.json", j), "out of range");
  j = small_bpe();
  j["model"]["vocab"]["x"] = 2;
  expect_load_error(with("dup_id.json", j), "used by two pieces");
  j = small_bpe();
  j["model"]["vocab"] = json::array({1, 2});
  expect_load_error(with("vocab_array.json", j), "vocabulary must be an object");
  j = small_bpe();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_load_error(with("bad_regex.json", j), "cannot compile regex");
  j = small_bpe();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", "yes"}};
  expect_load_error(with("bad_type.json", j), "unexpected JSON structure");
  j = small_bpe();
  j.erase("model");
  expect_load_error(with("no_model.json", j), "missing \"model\"");
  write_bytes(dir.file("not_json.json"), "{\"model\": [1, 2,");
  expect_load_error(dir.file("not_json.json"), "not valid JSON");
  write_bytes(dir.file("empty.json"), "");
  expect_load_error(dir.file("empty.json"), "not valid JSON");
}

TEST(TokenizerBadInput, TruncatedRealFiles) {
  MLKV_REQUIRE_SHARED();
  test::TempDir dir;
  std::string neox = read_text_file(test::shared_path("tokenizers/gpt-neox-20b/tokenizer.json"));
  for (size_t cut : {size_t{0}, size_t{100}, neox.size() / 2, neox.size() - 3}) {
    std::string p = dir.file("tokenizer" + std::to_string(cut) + ".json");
    write_bytes(p, neox.substr(0, cut));
    expect_load_error(p, "not valid JSON");
  }
  std::string tok512 = read_text_file(test::shared_path("models/aidreams260K/tok512.bin"));
  write_bytes(dir.file("tok_a.bin"), tok512.substr(0, tok512.size() - 1));
  expect_load_error(dir.file("tok_a.bin"), "truncated");
  write_bytes(dir.file("tok_b.bin"), tok512.substr(0, 2));
  expect_load_error(dir.file("tok_b.bin"), "too short");
  std::string bad_len = tok512;
  bad_len[4 + 4] = static_cast<char>(0x7F);  // token 0's length -> huge
  write_bytes(dir.file("tok_c.bin"), bad_len);
  expect_load_error(dir.file("tok_c.bin"), "length");
  std::string sp = read_text_file(test::shared_path("tokenizers/llama2/tokenizer.model"));
  write_bytes(dir.file("trunc.model"), sp.substr(0, sp.size() / 3));
  expect_load_error(dir.file("trunc.model"), "not a valid SentencePiece model");
  write_bytes(dir.file("garbage.model"), "this is not a protobuf at all");
  expect_load_error(dir.file("garbage.model"), "not a valid SentencePiece model");
  // GPT-2 pair with a broken merges file.
  std::filesystem::create_directories(dir.file("gpt2"));
  std::filesystem::copy_file(test::shared_path("tokenizers/gpt2/encoder.json"), dir.file("gpt2/encoder.json"));
  write_bytes(dir.file("gpt2/vocab.bpe"), "#version: 0.2\n\xC4\xA0 t\nthree parts here\n");
  expect_load_error(dir.file("gpt2/vocab.bpe"), "vocab.bpe:3");
}

TEST(TokenizerBadInput, BadIdsAndPaths) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  EXPECT_THROW(tok->decode({1, 50257}), Error);
  EXPECT_THROW(tok->decode({-1}), Error);
  EXPECT_THROW(tok->token_piece(99999999), Error);
  StreamDecoder sd(*tok);
  EXPECT_THROW(sd.push(50257), Error);
  EXPECT_THROW(load_tokenizer("/nonexistent/tokenizer.json"), Error);
  auto l2c = load_tokenizer(test::shared_path("models/aidreams260K"));
  EXPECT_THROW(l2c->decode({512}), Error);
  auto sp = load_tokenizer(test::shared_path("tokenizers/llama2"));
  EXPECT_THROW(sp->decode({32000}), Error);
}

// A tokenizer the user names must be one (or a model file with one beside it): a text file is
// refused, and a model file without a tokenizer beside it says so, naming the file.
TEST(TokenizerBadInput, NamedTokenizerFiles) {
  test::TempDir dir;
  write_bytes(dir.file("vocab.txt"), "hello\n");
  write_bytes(dir.file("garbage.bin"), "junk");
  auto message = [](const std::string& path) {
    try {
      load_tokenizer_file(path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(loaded)");
  };
  EXPECT_NE(message(dir.file("vocab.txt")).find("vocab.txt' is not a tokenizer:"), std::string::npos)
      << message(dir.file("vocab.txt"));
  EXPECT_NE(message(dir.file("garbage.bin")).find("garbage.bin' is not a tokenizer, and none was found beside it"),
            std::string::npos)
      << message(dir.file("garbage.bin"));
  if (test::have_shared()) {
    EXPECT_EQ(load_tokenizer_file(test::shared_path("models/aidreams260K/aidreams260K.bin"))->n_vocab(), 512);
  }
}

// A model vocabulary padded past the tokenizer's (Pythia: 50304 rows for GPT-NeoX's 50277 ids):
// the padding ids decode to no text everywhere a generated id is decoded, ids past the model's
// vocabulary are still refused, and a vocabulary no larger than the tokenizer's changes nothing.
TEST(TokenizerBadInput, PaddedModelVocabulary) {
  MLKV_REQUIRE_SHARED();
  auto raw = load_tokenizer(test::shared_path("tokenizers/gpt-neox-20b"));
  const int32_t n = raw->n_vocab();
  const Tokenizer* same = raw.get();
  raw = pad_vocabulary(std::move(raw), n);
  EXPECT_EQ(raw.get(), same);
  auto tok = pad_vocabulary(load_tokenizer(test::shared_path("tokenizers/gpt-neox-20b")), n + 27);
  ASSERT_EQ(tok->n_vocab(), n + 27);
  const std::vector<int32_t> text = tok->encode("Hello there, world");
  std::vector<int32_t> padded = {n + 3};
  for (int32_t id : text) {
    padded.push_back(id);
    padded.push_back(n + 26);
  }
  EXPECT_EQ(tok->decode(padded), tok->decode(text));
  EXPECT_EQ(tok->decode(text), "Hello there, world");
  EXPECT_EQ(tok->token_bytes(n), "");
  EXPECT_EQ(tok->token_piece(n + 26), "");
  EXPECT_EQ(decode_continuation(*tok, {n + 1}, padded), "Hello there, world");
  StreamDecoder sd(*tok);
  std::string streamed;
  for (int32_t id : padded) streamed += sd.push(id);
  EXPECT_EQ(streamed + sd.flush(), "Hello there, world");
  EXPECT_TRUE(starts_text(*tok, {n, n + 5}));
  EXPECT_THROW(tok->decode({n + 27}), Error);
  EXPECT_THROW(tok->token_bytes(-1), Error);
  EXPECT_EQ(tok->encode("Hello"), raw->encode("Hello"));
}

}  // namespace
}  // namespace mlkv
