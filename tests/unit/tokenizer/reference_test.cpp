// Token ids and decoded text against the independent implementations, through the fixtures made by
// gen_fixtures.py: Hugging Face tokenizers (GPT-NeoX tokenizer.json, GPT-2 files), Python
// sentencepiece (Llama-2 tokenizer.model) and a Python port of llama2.c (tok512.bin). Cases: hard
// text (whitespace, contractions, digits, CJK, emoji, invalid UTF-8, special tokens) and a sample
// of every corpus.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/mmap_file.h"
#include "test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace mlkv {
namespace {

using nlohmann::json;

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return out;
}

struct Case {
  std::string name;
  std::string input;  // bytes to encode
  std::string text;   // the input with invalid UTF-8 replaced by U+FFFD
};

std::vector<Case> load_cases() {
  json j = json::parse(read_text_file(test::fixture_path("cases.json")));
  std::vector<Case> cases;
  for (const auto& c : j["cases"]) {
    std::string text = c["text"].get<std::string>();
    std::string input = c.contains("hex") ? from_hex(c["hex"].get<std::string>()) : text;
    cases.push_back({c["name"].get<std::string>(), input, text});
  }
  return cases;
}

std::string ids_str(const std::vector<int32_t>& v, size_t from, size_t n) {
  std::string s;
  for (size_t i = from; i < v.size() && i < from + n; ++i) s += std::to_string(v[i]) + " ";
  return s;
}

void check_against_fixture(const std::string& fixture, const Tokenizer& tok_ref) {
  const Tokenizer* tok = &tok_ref;
  json fx = json::parse(read_text_file(test::fixture_path(fixture)));
  auto cases = load_cases();
  ASSERT_GT(cases.size(), 40u);
  size_t ids_ok = 0, decode_ok = 0;
  for (const auto& c : cases) {
    ASSERT_TRUE(fx["ids"].contains(c.name)) << fixture << " lacks case " << c.name;
    auto expected = fx["ids"][c.name].get<std::vector<int32_t>>();
    auto got = tok->encode(c.input);
    if (got == expected) {
      ++ids_ok;
    } else {
      size_t k = 0;
      while (k < got.size() && k < expected.size() && got[k] == expected[k]) ++k;
      ADD_FAILURE() << fixture << " case '" << c.name << "': ids differ at position " << k
                    << " (" << expected.size() << " expected, " << got.size() << " got)"
                    << "\n  expected: " << ids_str(expected, k, 12)
                    << "\n  got:      " << ids_str(got, k, 12);
    }
    // decode() of the reference ids equals the reference's own decode.
    std::string want = fx["decoded"].contains(c.name) ? fx["decoded"][c.name].get<std::string>() : c.text;
    std::string dec = tok->decode(expected);
    EXPECT_EQ(dec, want) << fixture << " case '" << c.name << "': decode differs";
    decode_ok += dec == want;
  }
  EXPECT_EQ(ids_ok, cases.size());
  EXPECT_EQ(decode_ok, cases.size());
}

void check_against_fixture(const std::string& fixture, const std::string& tokenizer_rel) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path(tokenizer_rel));
  check_against_fixture(fixture, *tok);
}

// The "llama3-like" tokenizer.json of gen_fixtures.py: GPT-2's vocabulary and merges behind
// Llama-3's pre-tokenizer (Split regex + ByteLevel without regex), ignore_merges, BOS template.
std::string llama3_like_json() {
  json vocab = json::parse(read_text_file(test::shared_path("tokenizers/gpt2/encoder.json")));
  json merges = json::array();
  std::string bpe = read_text_file(test::shared_path("tokenizers/gpt2/vocab.bpe"));
  size_t pos = 0;
  while (pos < bpe.size()) {
    size_t nl = bpe.find('\n', pos);
    if (nl == std::string::npos) nl = bpe.size();
    std::string line = bpe.substr(pos, nl - pos);
    pos = nl + 1;
    if (!line.empty() && line.rfind("#version", 0) != 0) merges.push_back(line);
  }
  auto special = [](int id, const char* s) {
    return json{{"id", id}, {"content", s}, {"special", true}, {"normalized", false}};
  };
  const char* split =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json j = {
      {"added_tokens", json::array({special(50256, "<|endoftext|>"), special(50257, "<|begin_of_text|>"),
                                    special(50258, "<|eot_id|>")})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"}, {"pattern", {{"Regex", split}}}, {"behavior", "Isolated"}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"ignore_merges", true}}}};
  return j.dump();
}

TEST(TokenizerReference, Llama3StyleTokenizerJsonMatchesHuggingFace) {
  MLKV_REQUIRE_SHARED();
  auto tok = parse_hf_tokenizer_json(llama3_like_json(), "llama3-like");
  EXPECT_EQ(tok->bos_id(), 50257);
  EXPECT_EQ(tok->eos_id(), 50256);
  check_against_fixture("llama3-like.json", *tok);
}

// Llama-2-style tokenizer.json files (character BPE, byte fallback; Prepend + Replace normalizers,
// or the Metaspace pre-tokenizer; Replace / ByteFallback / Fuse / Strip decoders), committed in
// fixtures/ because they are small cuts of the Llama-2 vocabulary.
void check_committed_tokenizer(const std::string& key) {
  MLKV_REQUIRE_SHARED();  // the corpus samples in the cases come from the shared data
  auto tok = load_tokenizer(test::fixture_path(key + ".tokenizer.json"));
  EXPECT_EQ(tok->kind(), "bpe");
  check_against_fixture(key + ".json", *tok);
}

TEST(TokenizerReference, Llama2HfLegacyTokenizerJsonMatchesHuggingFace) {
  check_committed_tokenizer("llama2-hf-legacy");
}
TEST(TokenizerReference, Llama2HfMetaspaceTokenizerJsonMatchesHuggingFace) {
  check_committed_tokenizer("llama2-hf-metaspace");
}
TEST(TokenizerReference, Llama2HfMetaspaceSplitTokenizerJsonMatchesHuggingFace) {
  check_committed_tokenizer("llama2-hf-metaspace-split");
}

TEST(TokenizerReference, GptNeoxTokenizerJsonMatchesHuggingFace) {
  check_against_fixture("gpt-neox-20b.json", "tokenizers/gpt-neox-20b/tokenizer.json");
}

TEST(TokenizerReference, Gpt2EncoderJsonVocabBpeMatchesHuggingFace) {
  check_against_fixture("gpt2.json", "tokenizers/gpt2");
}

TEST(TokenizerReference, Llama2SentencePieceMatchesPythonSentencepiece) {
  check_against_fixture("llama2.json", "tokenizers/llama2/tokenizer.model");
}

TEST(TokenizerReference, Llama2cTok512MatchesPythonPortOfLlama2c) {
  check_against_fixture("tok512.json", "models/aidreams260K/tok512.bin");
}

// The ids with BOS are the same ids with the BOS id in front.
TEST(TokenizerReference, AddBosPrependsBosWhereThereIsOne) {
  MLKV_REQUIRE_SHARED();
  auto sp = load_tokenizer(test::shared_path("tokenizers/llama2"));
  auto a = sp->encode("Hello", false), b = sp->encode("Hello", true);
  ASSERT_EQ(b.size(), a.size() + 1);
  EXPECT_EQ(b[0], 1);
  auto neox = load_tokenizer(test::shared_path("tokenizers/gpt-neox-20b"));
  EXPECT_EQ(neox->bos_id(), -1);
  EXPECT_EQ(neox->eos_id(), 0);
  EXPECT_EQ(neox->encode("Hello", true), neox->encode("Hello", false));
  auto l2c = load_tokenizer(test::shared_path("models/aidreams260K"));
  EXPECT_EQ(l2c->kind(), "llama2c");
  EXPECT_EQ(l2c->n_vocab(), 512);
  EXPECT_EQ(l2c->encode("a b", true)[0], 1);
}

}  // namespace
}  // namespace mlkv
