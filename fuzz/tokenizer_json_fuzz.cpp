// libFuzzer target: parse_hf_tokenizer_json() on arbitrary bytes. Anything but success or
// mlkv::Error (a crash, a sanitizer report, another exception type) is a bug. A tokenizer that
// loads then encodes its own input text and a fixed sample, and decodes (whole and streamed) the
// result: decode must give valid UTF-8 and the stream must equal the whole decode.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/check.h"
#include "tokenizer/bpe.h"
#include "tokenizer/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<mlkv::BpeTokenizer> tok;
  try {
    tok = mlkv::parse_hf_tokenizer_json(text, "fuzz.json");
  } catch (const mlkv::Error&) {
    return 0;
  }
  for (std::string_view sample : {text.substr(0, 256), std::string_view("Hello  world! 123 <|x|> é\xff")}) {
    try {
      auto ids = tok->encode(sample, true);
      std::string whole = tok->decode(ids);
      if (!mlkv::utf8::is_valid(whole)) std::abort();
      mlkv::StreamDecoder sd(*tok);
      std::string streamed;
      for (int32_t id : ids) streamed += sd.push(id);
      streamed += sd.flush();
      if (streamed != whole) std::abort();
    } catch (const mlkv::Error&) {
      // e.g. a regex that exceeds PCRE2's match limit on this input
    }
  }
  return 0;
}
