// libFuzzer target: the request validation of `mlkv serve` (src/server/openai.h) on arbitrary
// bodies, as /v1/completions and as /v1/chat/completions under every chat template, plus the stop
// matcher fed the input in pieces. Anything but success or openai::ApiError is a bug. A request
// that parses must be within the limits it was parsed under (every prompt non-empty, ids in the
// vocabulary, prompt + max_tokens within the context, n x prompts within max_choices); the stop
// matcher must never return text that contains a stop string, and what it returns must be a
// prefix of what it was given.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "server/openai.h"

using mlkv::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mlkv::openai;
  static const mlkv::fuzz::ByteTokenizer tok(300);
  const std::string body(reinterpret_cast<const char*>(data), size);
  Limits lim;
  lim.n_ctx = 64;
  lim.n_vocab = 300;
  lim.max_prompt_tokens = 48;
  lim.max_tokens = 40;
  lim.max_choices = 8;
  lim.model_id = "m";
  const ChatTemplate tmpls[] = {ChatTemplate::kNone, ChatTemplate::kChatML, ChatTemplate::kLlama3,
                                ChatTemplate::kLlama2, ChatTemplate::kZephyr};
  for (int chat = 0; chat < 2; ++chat) {
    for (ChatTemplate t : tmpls) {
      if (!chat && t != ChatTemplate::kNone) break;
      for (const mlkv::Tokenizer* tk : {static_cast<const mlkv::Tokenizer*>(&tok),
                                        static_cast<const mlkv::Tokenizer*>(nullptr)}) {
        try {
          const Completion c = parse_completion(body, chat != 0, tk, t, lim);
          require(!c.prompts.empty(), "no prompt");
          require(c.n >= 1 && c.prompts.size() * static_cast<size_t>(c.n) <= 8, "choices");
          for (const auto& p : c.prompts) {
            require(!p.empty() && static_cast<int>(p.size()) <= lim.max_prompt_tokens, "prompt size");
            require(static_cast<int>(p.size()) + c.max_tokens <= lim.n_ctx, "context");
            for (int32_t id : p) require(id >= 0 && id < lim.n_vocab, "token id");
          }
          require(c.max_tokens >= 0 && c.max_tokens <= lim.max_tokens, "max_tokens");
          require(c.logprobs >= -1 && c.logprobs <= 20, "logprobs");
          require(c.stop.size() <= 4, "stop count");
          for (const auto& s : c.stop) require(!s.empty(), "empty stop");
        } catch (const ApiError& e) {
          require(e.status >= 400 && e.status < 500, "status");
        }
      }
    }
  }
  // The stop matcher: the first two bytes choose a split of the rest into a stop string and a
  // text fed in chunks of 1..8 bytes.
  if (size >= 2) {
    const size_t stop_len = 1 + data[0] % 6;
    const size_t chunk = 1 + data[1] % 8;
    if (size >= 2 + stop_len) {
      const std::string stop = body.substr(2, stop_len);
      const std::string text = body.substr(2 + stop_len);
      StopMatcher m({stop});
      std::string out;
      for (size_t i = 0; i < text.size(); i += chunk) out += m.push(text.substr(i, chunk));
      out += m.finish();
      require(out.find(stop) == std::string::npos, "stop string returned");
      require(text.compare(0, out.size(), out) == 0, "not a prefix");
      const size_t at = text.find(stop);
      require(at == std::string::npos ? out == text : out == text.substr(0, at),
              "cut at the first stop");
    }
  }
  return 0;
}
