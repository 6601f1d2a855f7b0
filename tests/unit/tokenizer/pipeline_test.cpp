// Unit tests of the tokenizer building blocks: UTF-8 replacement and streaming tails, Split
// delimiter behaviours (the Hugging Face documentation's examples), added-token options,
// normalizers, and how load_tokenizer() finds files.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"
#include "test_util.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mlkv {
namespace {

using nlohmann::json;
const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8, SanitizeReplacesMaximalSubparts) {
  EXPECT_EQ(utf8::sanitize("abc"), "abc");
  EXPECT_EQ(utf8::sanitize("a\xFF" "b"), "a" + kFffd + "b");
  EXPECT_EQ(utf8::sanitize("\xE2\x82"), kFffd);                      // truncated 3-byte: one
  EXPECT_EQ(utf8::sanitize("\xF0\x9F\x98" "x"), kFffd + "x");         // truncated 4-byte: one
  EXPECT_EQ(utf8::sanitize("\xED\xA0\x80"), kFffd + kFffd + kFffd);   // surrogate: per byte
  EXPECT_EQ(utf8::sanitize("\xC0\xAF"), kFffd + kFffd);               // overlong
  EXPECT_EQ(utf8::sanitize("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_TRUE(utf8::is_valid("héllo 日本 😀"));
  EXPECT_FALSE(utf8::is_valid("abcdefgh\x80"));
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(utf8::incomplete_tail("abc"), 0u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE2"), 1u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE2\x82"), 2u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE2\x82\xAC"), 0u);  // complete €
  EXPECT_EQ(utf8::incomplete_tail("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(utf8::incomplete_tail("\xE0\x80"), 0u);  // can never complete (overlong)
  EXPECT_EQ(utf8::incomplete_tail("\xFF"), 0u);
}

TEST(Utf8, ByteLevelAlphabetIsReversible) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::string back;
  ASSERT_TRUE(utf8::byte_level_to_bytes(utf8::bytes_to_byte_level(all), &back));
  EXPECT_EQ(back, all);
  EXPECT_EQ(utf8::bytes_to_byte_level(" the"), "\xC4\xA0the");  // "Ġthe"
}

std::vector<std::string> split_with(const json& pre, const std::string& text) {
  auto p = PreTokenizer::from_json(pre, "test");
  std::vector<PreTokenizer::Span> spans;
  p->split(text, spans);
  std::vector<std::string> out;
  for (auto [b, e] : spans) out.push_back(text.substr(b, e - b));
  return out;
}

json split_json(const std::string& behavior, bool invert = false) {
  return {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
}

TEST(PreTokenizer, SplitBehavioursMatchHuggingFaceDocs) {
  const std::string t = "the-final--countdown";
  using V = std::vector<std::string>;
  EXPECT_EQ(split_with(split_json("Removed"), t), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split_with(split_json("Isolated"), t), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split_with(split_json("MergedWithPrevious"), t), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split_with(split_json("MergedWithNext"), t), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split_with(split_json("Contiguous"), t), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split_with(split_json("Removed", true), t), (V{"-", "-", "-"}));
}

TEST(Regex, WhiteSpaceIsTheUnicodeProperty) {
  EXPECT_EQ(white_space_pattern(R"(\s+(?!\S))"), R"([\t-\r\x{85}\p{Z}]+(?![^\t-\r\x{85}\p{Z}]))");
  EXPECT_EQ(white_space_pattern(R"( ?[^\s\p{L}]+)"), R"( ?[^\t-\r\x{85}\p{Z}\p{L}]+)");
  EXPECT_EQ(white_space_pattern(R"(\\s[]\s][[:alpha:]\s])"), R"(\\s[]\t-\r\x{85}\p{Z}][[:alpha:]\t-\r\x{85}\p{Z}])");
  Regex ws(R"(\s+)");
  std::vector<std::pair<size_t, size_t>> m;
  // U+180E MONGOLIAN VOWEL SEPARATOR is not White_Space; U+0085 NEL and U+3000 are.
  ws.find_all("a\xE1\xA0\x8E" "b\xC2\x85\xE3\x80\x80" "c", m);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0], std::make_pair(size_t{5}, size_t{10}));
}

TEST(PreTokenizer, Gpt2RegexAndSequence) {
  using V = std::vector<std::string>;
  json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  EXPECT_EQ(split_with(bl, "I'm  fine, 123 ok"), (V{"I", "'m", " ", " fine", ",", " 123", " ok"}));
  // \s+(?!\S) leaves the last whitespace character to the next piece.
  EXPECT_EQ(split_with(bl, "a \n\nb"), (V{"a", " \n", "\n", "b"}));
  json seq = {{"type", "Sequence"},
              {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                              {{"type", "WhitespaceSplit"}}})}};
  EXPECT_EQ(split_with(seq, "ab 12 c"), (V{"ab", "1", "2", "c"}));
  EXPECT_EQ(split_with({{"type", "Whitespace"}}, "Hey, you!"), (V{"Hey", ",", "you", "!"}));
}

TEST(AddedTokens, LeftmostLongestAndStripOptions) {
  AddedTokenMatcher m;
  m.add({"<a>", 1, true});
  m.add({"<ab>", 2, true});
  AddedToken l{"[L]", 3, true};
  l.lstrip = true;
  l.rstrip = true;
  m.add(l);
  AddedToken w{"cat", 4, true};
  w.single_word = true;
  m.add(w);
  std::vector<AddedTokenMatcher::Part> parts;
  std::string s = "x<ab>y<a>  [L]  z cat concat";
  m.split(s, parts);
  std::vector<std::pair<std::string, int>> got;
  for (const auto& p : parts) got.emplace_back(s.substr(p.begin, p.end - p.begin), p.id);
  std::vector<std::pair<std::string, int>> want = {
      {"x", -1}, {"<ab>", 2}, {"y", -1}, {"<a>", 1}, {"[L]", 3}, {"z ", -1}, {"cat", 4}, {" concat", -1}};
  EXPECT_EQ(got, want);
}

TEST(Normalizer, UnicodeForms) {
  auto nfc = Normalizer::from_json({{"type", "NFC"}}, "t");
  std::string out;
  EXPECT_FALSE(nfc->apply("plain ascii", &out));
  ASSERT_TRUE(nfc->apply("cafe\xCC\x81", &out));  // e + combining acute
  EXPECT_EQ(out, "caf\xC3\xA9");
  auto seq = Normalizer::from_json(
      {{"type", "Sequence"},
       {"normalizers", json::array({{{"type", "NFKC"}}, {{"type", "Lowercase"}},
                                    {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "_"}},
                                    {{"type", "Prepend"}, {"prepend", ">"}}})}},
      "t");
  ASSERT_TRUE(seq->apply("\xEF\xAC\x81 ABC", &out));  // "ﬁ ABC"
  EXPECT_EQ(out, ">fi_abc");
}

TEST(LoadTokenizer, FindsFilesInFoldersAndBesideModels) {
  MLKV_REQUIRE_SHARED();
  EXPECT_EQ(load_tokenizer(test::shared_path("tokenizers/gpt-neox-20b"))->kind(), "bpe");
  EXPECT_EQ(load_tokenizer(test::shared_path("tokenizers/gpt2"))->n_vocab(), 50257);
  EXPECT_EQ(load_tokenizer(test::shared_path("tokenizers/gpt2/vocab.bpe"))->eos_id(), 50256);
  EXPECT_EQ(load_tokenizer(test::shared_path("tokenizers/llama2"))->kind(), "sentencepiece");
  EXPECT_EQ(load_tokenizer(test::shared_path("models/aidreams260K"))->kind(), "llama2c");
  // A model file: the tokenizer is looked for next to it.
  EXPECT_EQ(load_tokenizer(test::shared_path("models/aidreams260K/aidreams260K.bin"))->kind(), "llama2c");
  test::TempDir empty;
  try {
    load_tokenizer(empty.str());
    FAIL() << "expected mlkv::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tokenizer found"), std::string::npos) << e.what();
  }
}

TEST(LoadTokenizer, SentencePieceModelWinsOverANonByteLevelTokenizerJson) {
  MLKV_REQUIRE_SHARED();
  namespace fs = std::filesystem;
  test::TempDir dir;
  fs::copy_file(test::shared_path("tokenizers/llama2/tokenizer.model"), dir.file("tokenizer.model"));
  fs::copy_file(test::fixture_path("llama2-hf-legacy.tokenizer.json"), dir.file("tokenizer.json"));
  EXPECT_EQ(load_tokenizer(dir.str())->kind(), "sentencepiece");
  fs::remove(dir.file("tokenizer.json"));
  fs::copy_file(test::shared_path("tokenizers/gpt-neox-20b/tokenizer.json"), dir.file("tokenizer.json"));
  EXPECT_EQ(load_tokenizer(dir.str())->kind(), "bpe");
  EXPECT_EQ(load_tokenizer(test::fixture_path("llama2-hf-legacy.tokenizer.json"))->kind(), "bpe");
}

// Metaspace decoder: in the first token every "▁" is dropped (Hugging Face's rule), elsewhere "▁"
// is a space; Strip drops one leading space of the text.
TEST(BpeTokenizer, MetaspaceAndStripDecoders) {
  const std::string sp = "\xE2\x96\x81";
  json vocab = {{sp + sp + "a", 0}, {sp + "b", 1}, {"c", 2}, {sp, 3}};
  json j = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
            {"decoder", {{"type", "Metaspace"}, {"replacement", sp}, {"prepend_scheme", "always"}}}};
  auto meta = parse_hf_tokenizer_json(j.dump(), "meta");
  EXPECT_EQ(meta->decode({0, 1, 2}), "a bc");
  EXPECT_EQ(meta->decode({2, 0}), "c  a");
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", sp}}}, {"content", " "}},
                                            {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  auto strip = parse_hf_tokenizer_json(j.dump(), "strip");
  EXPECT_EQ(strip->decode({0, 1, 2}), " a bc");
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_THROW(parse_hf_tokenizer_json(j.dump(), "wp"), Error);
}

// A Llama-3-style tokenizer.json (Split regex + ByteLevel without regex, ignore_merges, BOS from
// the post-processor template), built small enough to reason about by hand.
TEST(BpeTokenizer, Llama3StyleSplitIgnoreMergesAndTemplateBos) {
  json vocab = json::object();
  std::vector<std::string> base = {"a", "b", "c", "\xC4\xA0"};  // Ġ = space
  int id = 0;
  for (const auto& p : base) vocab[p] = id++;
  vocab["ab"] = id++;  // 4
  vocab["abc"] = id++;  // 5
  vocab["\xC4\xA0" "a"] = id++;  // 6 "Ġa"
  vocab["bc"] = id++;  // 7 (no merge produces it)
  json j = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"a b", "ab c", "\xC4\xA0 a"})},
                 {"ignore_merges", true}}},
      {"added_tokens", json::array({{{"id", 8}, {"content", "<|begin_of_text|>"}, {"special", true}}})},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"}, {"pattern", {{"Regex", R"( ?\p{L}+|\s+)"}}}, {"behavior", "Isolated"}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}}},
      {"decoder", {{"type", "ByteLevel"}}}};
  auto tok = parse_hf_tokenizer_json(j.dump(), "llama3-like");
  EXPECT_EQ(tok->bos_id(), 8);
  // "abc" is a whole vocabulary word (ignore_merges); " ab" merges a+b first (rank 0), after which
  // "Ġ a" no longer applies; " bc" has no merge at all.
  EXPECT_EQ(tok->encode("abc ab bc", true), (std::vector<int32_t>{8, 5, 3, 4, 3, 1, 2}));
  EXPECT_EQ(tok->encode("bc"), (std::vector<int32_t>{7}));  // in the vocabulary, no merge needed
  EXPECT_EQ(tok->decode({8, 5, 3, 4, 3, 1, 2}), "<|begin_of_text|>abc ab bc");
}

}  // namespace
}  // namespace mlkv
