// Randomized round trips: decode(encode(x)) == x for random valid UTF-8 (NFC text for the NFC
// tokenizer), and StreamDecoder's pieces (all valid UTF-8) concatenate to decode(ids), for encoded
// text and for random id sequences that split multi-byte characters anywhere.
#include <gtest/gtest.h>

#include <random>

#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mlkv {
namespace {

// Random text from a pool of code point ranges. nfc_stable excludes combining marks and other
// characters that NFC would change, so NFC-normalizing tokenizers must reproduce the text.
std::string random_text(std::mt19937& rng, size_t max_cps, bool nfc_stable) {
  static const std::vector<std::pair<uint32_t, uint32_t>> stable = {
      {0x20, 0x7E}, {0x20, 0x7E}, {0x20, 0x7E}, {0x20, 0x20}, {0x0A, 0x0A}, {0x09, 0x0D},
      {0xA0, 0xFF}, {0x391, 0x3A1}, {0x3B1, 0x3C9}, {0x410, 0x44F}, {0x5D0, 0x5EA},
      {0x3041, 0x3096}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0x1F600, 0x1F64F}, {0x2002, 0x200A},  // U+2000, U+2001 are not NFC-stable
      {0x3000, 0x3000}, {0x0, 0x1F}};
  static const std::vector<std::pair<uint32_t, uint32_t>> any = {
      {0x0, 0x7F}, {0x80, 0x7FF}, {0x300, 0x36F}, {0x800, 0xD7FF}, {0xE000, 0xFFFF},
      {0x10000, 0x10FFFF}, {0x20, 0x7E}, {0x20, 0x20}};
  const auto& pool = nfc_stable ? stable : any;
  std::uniform_int_distribution<size_t> len_d(0, max_cps), pick(0, pool.size() - 1);
  size_t n = len_d(rng);
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    auto [lo, hi] = pool[pick(rng)];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
    // Runs of a repeated character exercise whitespace / digit / letter run handling.
    int reps = std::uniform_int_distribution<int>(0, 9)(rng) == 0 ? 5 : 1;
    for (int r = 0; r < reps; ++r) utf8::append_code_point(s, cp);
  }
  return s;
}

bool has_special_text(const std::string& s) {
  for (const char* t : {"<s>", "</s>", "<unk>", "<|endoftext|>", "<|padding|>"}) {
    if (s.find(t) != std::string::npos) return true;
  }
  return false;
}

void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids, const std::string& what) {
  StreamDecoder sd(tok);
  std::string streamed;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    ASSERT_TRUE(utf8::is_valid(piece)) << what << ": stream piece is not valid UTF-8";
    streamed += piece;
  }
  std::string tail = sd.flush();
  ASSERT_TRUE(utf8::is_valid(tail)) << what;
  streamed += tail;
  std::string whole = tok.decode(ids);
  ASSERT_TRUE(utf8::is_valid(whole)) << what;
  ASSERT_EQ(streamed, whole) << what << ": streamed text differs from decode()";
}

// ids split after k: the continuation decoded after ids[0, k) is what decode(ids) adds to
// decode(ids[0, k)), whenever that is a prefix (not a character cut in two at k). A SentencePiece
// continuation keeps the space of its first piece ("▁there" after "once upon a time").
int check_continuation(const Tokenizer& tok, const std::vector<int32_t>& ids, size_t k, const std::string& what) {
  const std::vector<int32_t> head(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k)),
      tail(ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end());
  const std::string whole = tok.decode(ids), before = tok.decode(head);
  if (whole.compare(0, before.size(), before) != 0) return 0;
  std::string joined = before;
  joined += decode_continuation(tok, head, tail);
  EXPECT_EQ(joined, whole) << what << ", split after " << k;
  return 1;
}

void round_trip(const std::string& rel, bool nfc_stable, int n_cases) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path(rel));
  std::mt19937 rng(12345);
  int done = 0, continued = 0;
  for (int i = 0; i < n_cases; ++i) {
    std::string text = random_text(rng, 120, nfc_stable);
    if (has_special_text(text)) continue;
    auto ids = tok->encode(text);
    ASSERT_EQ(tok->decode(ids), text) << rel << ": round trip failed for case " << i;
    check_stream(*tok, ids, rel + " text case " + std::to_string(i));
    continued += check_continuation(*tok, ids, rng() % (ids.size() + 1), rel + " text case " + std::to_string(i));
    ++done;
  }
  EXPECT_GT(done, n_cases * 9 / 10);
  EXPECT_GT(continued, n_cases / 3) << "continuations checked";
  // Random ids: byte pieces and multi-byte tokens cut characters anywhere.
  std::uniform_int_distribution<int32_t> any_id(0, tok->n_vocab() - 1), byte_id(0, 300);
  for (int i = 0; i < n_cases; ++i) {
    std::vector<int32_t> ids(std::uniform_int_distribution<int>(0, 40)(rng));
    for (auto& id : ids) id = (rng() & 1) ? any_id(rng) : std::min(byte_id(rng), tok->n_vocab() - 1);
    check_stream(*tok, ids, rel + " random ids case " + std::to_string(i));
  }
}

TEST(TokenizerRoundTrip, GptNeoxNfcText) { round_trip("tokenizers/gpt-neox-20b/tokenizer.json", true, 300); }
TEST(TokenizerRoundTrip, Gpt2AnyText) { round_trip("tokenizers/gpt2", false, 300); }
TEST(TokenizerRoundTrip, Llama2SentencePieceAnyText) { round_trip("tokenizers/llama2/tokenizer.model", false, 300); }
TEST(TokenizerRoundTrip, Llama2cAnyText) { round_trip("models/aidreams260K/tok512.bin", false, 300); }

// The case as a user meets it: a prompt, then the generated words.
TEST(TokenizerRoundTrip, ContinuationKeepsItsLeadingSpace) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path("tokenizers/llama2/tokenizer.model"));
  const auto prompt = tok->encode("Once upon a time", true), all = tok->encode("Once upon a time there was", true);
  ASSERT_EQ(std::vector<int32_t>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(prompt.size())), prompt);
  const std::vector<int32_t> gen(all.begin() + static_cast<std::ptrdiff_t>(prompt.size()), all.end());
  EXPECT_EQ(tok->decode(gen), "there was");  // a text of its own: no leading space
  EXPECT_EQ(decode_continuation(*tok, prompt, gen), " there was");
  EXPECT_EQ(decode_continuation(*tok, {tok->bos_id()}, gen), "there was");  // only BOS before it
  EXPECT_FALSE(starts_text(*tok, prompt));
}

TEST(TokenizerRoundTrip, StreamHoldsBackSplitCharacters) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  // "😀" is 4 bytes; GPT-2 encodes it as several byte tokens.
  auto ids = tok->encode("a😀b");
  ASSERT_GT(ids.size(), 3u);
  StreamDecoder sd(*tok);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(sd.push(id));
  EXPECT_EQ(pieces.front(), "a");
  std::string all;
  for (const auto& p : pieces) all += p;
  EXPECT_EQ(all, "a😀b");
  // An incomplete character left at the end becomes U+FFFD on flush.
  StreamDecoder sd2(*tok);
  EXPECT_EQ(sd2.push(ids[1]), "");
  EXPECT_EQ(sd2.flush(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace mlkv
