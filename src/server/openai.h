// The OpenAI wire format of `mlkv serve`: parsing and validating /v1/completions and
// /v1/chat/completions bodies into generation requests, the stop-sequence matcher, the chat
// templates mlkv can apply, and the reply objects. No I/O here (server.cpp does the HTTP and the
// batching), so every rule is testable from a string.
//
// Rules: every field is either honoured or refused by name (400); numbers are range-checked
// (integers must be integral JSON numbers within their range, never cast); unknown fields are
// refused. Units: token counts are tokens, log-probs natural logs.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mlkv/generation.h"
#include "mlkv/tokenizer.h"

namespace mlkv::openai {

using json = nlohmann::json;

// A client error: an HTTP status (400, 401, 404, 413, 429, 503) and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status_, std::string message, std::string param_ = "", std::string type_ = "")
      : std::runtime_error(message), status(status_), param(std::move(param_)),
        type(std::move(type_)) {}
  int status;
  std::string param;
  std::string type;  // "" : derived from the status
};
json error_body(int status, const std::string& message, const std::string& param = "",
                const std::string& type = "");

// What the server knows when it parses a request.
struct Limits {
  int n_ctx = 0;              // tokens per sequence (prompt + generated)
  int n_vocab = 0;
  int max_prompt_tokens = 0;  // <= n_ctx
  int max_tokens = 0;         // cap of max_tokens
  int max_choices = 128;      // prompts x n per request
  std::string model_id;       // the served model's name ("model" must match when given)
};

// A chat template family mlkv can apply (the model's tokenizer_config.json chat_template is
// recognised by its markers; mlkv does not run Jinja).
enum class ChatTemplate { kNone, kChatML, kLlama3, kLlama2, kZephyr };
// "chatml", "llama-3", "llama-2", "zephyr"; kNone for anything else.
ChatTemplate chat_template_from_name(const std::string& name);
const char* chat_template_name(ChatTemplate t);
// The family of a Jinja chat template by its markers; kNone when it is none of the above.
ChatTemplate detect_chat_template(const std::string& jinja);
// The prompt text of a conversation ([{role, content}], roles system/user/assistant), ending with
// the opening of the assistant's turn. Throws ApiError(400) for a bad message.
std::string apply_chat_template(ChatTemplate t, const json& messages);

// One parsed request: prompts x n sequences to generate.
struct Completion {
  bool chat = false;
  std::vector<std::vector<int32_t>> prompts;  // token ids, one per prompt
  int n = 1;                                  // choices per prompt
  int max_tokens = 16;
  SamplerParams sampling;  // seed: the first choice's; choice i uses seed + i
  bool seed_given = false;
  bool stop_at_eos = true;
  std::vector<std::string> stop;  // up to 4 non-empty strings; not returned in the text
  int logprobs = -1;              // -1: none; N: the token's own and the top N
  bool echo = false;              // completions: the prompt (and its log-probs) first
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
};

// Parses and validates a /v1/completions (chat = false) or /v1/chat/completions body. tok may be
// null (token-id prompts only); chat needs a tokenizer and a template (tmpl != kNone). Throws
// ApiError with the status and the field at fault.
Completion parse_completion(const std::string& body, bool chat, const Tokenizer* tok,
                            ChatTemplate tmpl, const Limits& lim);

// Finds the stop strings in text as it grows: push() appends decoded text and returns what may be
// sent now (never a part that could begin a stop string); once a stop string is complete,
// stopped() is true and nothing at or after it is ever returned. finish() returns what was held
// back (the generation ended without a stop).
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string push(const std::string& text);
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string text_;   // everything decoded so far
  size_t sent_ = 0;    // bytes of text_ returned so far
  bool stopped_ = false;
};

// The legacy completions `logprobs` object of one choice: tokens (their text), token_logprobs,
// top_logprobs ({text: logprob}) and text_offset; entries with no log-prob (the first prompt
// token) are null. Token text is the token's bytes as they stand in the text, so that the tokens
// join to the choice's text (a SentencePiece text's first piece without its leading space); the id
// as a string without a tokenizer.
json completion_logprobs(const std::vector<int32_t>& prompt, const Generation& g, bool echo,
                         size_t n_generated, const Tokenizer* tok, size_t text_offset0);
// The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}.
json chat_logprobs(const std::vector<TokenLogprob>& lps, size_t n, const Tokenizer* tok);
// The text of one token for logprobs ("" and the id when no tokenizer).
std::string token_text(int32_t id, const Tokenizer* tok);
// OpenAI's finish_reason for mlkv's: eos/stop -> "stop", length/context -> "length".
const char* finish_reason(const std::string& mlkv_reason, bool stopped);

}  // namespace mlkv::openai
