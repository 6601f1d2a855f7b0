// libFuzzer target: arbitrary bytes through the shipped tokenizers (GPT-2 byte-level BPE,
// SentencePiece Llama-2, llama2.c tok512). Properties: encode never throws on any input; decode
// gives valid UTF-8; GPT-2 and llama2.c give back exactly the input with invalid UTF-8 replaced
// by U+FFFD; streamed decode equals whole decode. The shared data folder is $MLKV_SHARED_DIR, else
// the one next to the repository; without it the target does nothing.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

struct Tokenizers {
  std::vector<std::unique_ptr<mlkv::Tokenizer>> exact;  // decode(encode(x)) == sanitize(x)
  std::unique_ptr<mlkv::Tokenizer> sentencepiece;
};

const Tokenizers& tokenizers() {
  static Tokenizers t = [] {
    Tokenizers r;
    const char* env = std::getenv("MLKV_SHARED_DIR");
    std::string data = std::string(env != nullptr ? env : MLKV_DEFAULT_SHARED_DIR) + "/data/";
    if (!std::filesystem::exists(data + "tokenizers")) return r;
    r.exact.push_back(mlkv::load_tokenizer(data + "tokenizers/gpt2"));
    r.exact.push_back(mlkv::load_tokenizer(data + "models/aidreams260K/tok512.bin"));
    r.sentencepiece = mlkv::load_tokenizer(data + "tokenizers/llama2/tokenizer.model");
    return r;
  }();
  return t;
}

void check(const mlkv::Tokenizer& tok, std::string_view text, bool exact) {
  std::vector<int32_t> ids = tok.encode(text);
  std::string whole = tok.decode(ids);
  if (!mlkv::utf8::is_valid(whole)) std::abort();
  if (exact && whole != mlkv::utf8::sanitize(text)) std::abort();
  mlkv::StreamDecoder sd(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  streamed += sd.flush();
  if (streamed != whole) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizers& t = tokenizers();
  std::string_view text(reinterpret_cast<const char*>(data), std::min<size_t>(size, 4096));
  for (const auto& tok : t.exact) check(*tok, text, true);
  // SentencePiece: "<s>" and friends in the text decode to nothing, so no exactness there.
  if (t.sentencepiece) check(*t.sentencepiece, text, false);
  return 0;
}
