#include "openai.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mlkv::openai {

namespace {

const char* type_of(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string show(const json& v) {
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

// An integer field: an integral JSON number within [lo, hi] (2.0 is 2; 2.9, 1e10 beyond hi,
// strings and booleans are refused by name; nothing is cast).
int64_t get_int(const json& j, const char* key, int64_t lo, int64_t hi, int64_t def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  const std::string range = std::to_string(lo) + " to " + std::to_string(hi);
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi) || (lo > 0 && u < static_cast<uint64_t>(lo)))
      throw ApiError(400, std::string("'") + key + "' must be an integer from " + range +
                              " (got " + show(v) + ")", key);
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi)
      throw ApiError(400, std::string("'") + key + "' must be an integer from " + range +
                              " (got " + show(v) + ")", key);
    return x;
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d))
      throw ApiError(400, std::string("'") + key + "' must be an integer (got " + show(v) + ")",
                     key);
    if (d < static_cast<double>(lo) || d > static_cast<double>(hi))
      throw ApiError(400, std::string("'") + key + "' must be an integer from " + range +
                              " (got " + show(v) + ")", key);
    return static_cast<int64_t>(d);
  }
  throw ApiError(400, std::string("'") + key + "' must be an integer (got " + show(v) + ")", key);
}

// A real field: a finite JSON number within [lo, hi] (lo_open: lo itself excluded).
double get_real(const json& j, const char* key, double lo, double hi, bool lo_open, double def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  if (!v.is_number())
    throw ApiError(400, std::string("'") + key + "' must be a number (got " + show(v) + ")", key);
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi || (lo_open && d == lo)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "'%s' must be a number in %c%g, %g] (got %s)", key,
                  lo_open ? '(' : '[', lo, hi, show(v).c_str());
    throw ApiError(400, buf, key);
  }
  return d;
}

bool get_bool(const json& j, const char* key, bool def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean())
    throw ApiError(400, std::string("'") + key + "' must be true or false (got " + show(j[key]) +
                            ")", key);
  return j[key].get<bool>();
}

std::vector<int32_t> token_ids(const json& arr, int n_vocab, const char* what) {
  std::vector<int32_t> ids;
  ids.reserve(arr.size());
  for (const json& t : arr) {
    if (!t.is_number_integer() && !t.is_number_unsigned())
      throw ApiError(400, std::string("'prompt' ") + what + " must hold token ids (integers), got " +
                              show(t), "prompt");
    const bool neg = t.is_number_integer() && !t.is_number_unsigned() && t.get<int64_t>() < 0;
    if (neg || t.get<uint64_t>() >= static_cast<uint64_t>(n_vocab))
      throw ApiError(400, "token id " + show(t) + " is outside the vocabulary (" +
                              std::to_string(n_vocab) + " ids)", "prompt");
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  return ids;
}

std::vector<int32_t> encode(const std::string& text, const Tokenizer* tok, bool add_bos) {
  if (tok == nullptr)
    throw ApiError(400, "this server has no tokenizer: send the prompt as token ids", "prompt");
  return tok->encode(text, add_bos);
}

// Fields every endpoint takes, and those of each endpoint; anything else is refused by name.
const char* const kCommon[] = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed",
                               "stream", "stream_options", "user", "top_k", "ignore_eos",
                               "presence_penalty", "frequency_penalty"};
const char* const kCompletionOnly[] = {"prompt", "logprobs", "echo", "add_bos"};
const char* const kChatOnly[] = {"messages", "logprobs", "top_logprobs", "max_completion_tokens"};

bool known(const std::string& k, bool chat) {
  for (const char* f : kCommon)
    if (k == f) return true;
  if (chat) {
    for (const char* f : kChatOnly)
      if (k == f) return true;
  } else {
    for (const char* f : kCompletionOnly)
      if (k == f) return true;
  }
  return false;
}

}  // namespace

json error_body(int status, const std::string& message, const std::string& param,
                const std::string& type) {
  return {{"error",
           {{"message", message},
            {"type", type.empty() ? type_of(status) : type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", status}}}};
}

ChatTemplate chat_template_from_name(const std::string& name) {
  if (name == "chatml") return ChatTemplate::kChatML;
  if (name == "llama-3") return ChatTemplate::kLlama3;
  if (name == "llama-2") return ChatTemplate::kLlama2;
  if (name == "zephyr") return ChatTemplate::kZephyr;
  return ChatTemplate::kNone;
}

const char* chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kChatML: return "chatml";
    case ChatTemplate::kLlama3: return "llama-3";
    case ChatTemplate::kLlama2: return "llama-2";
    case ChatTemplate::kZephyr: return "zephyr";
    default: return "none";
  }
}

ChatTemplate detect_chat_template(const std::string& s) {
  if (s.find("<|im_start|>") != std::string::npos) return ChatTemplate::kChatML;
  if (s.find("<|start_header_id|>") != std::string::npos) return ChatTemplate::kLlama3;
  if (s.find("[INST]") != std::string::npos) return ChatTemplate::kLlama2;
  if (s.find("<|user|>") != std::string::npos && s.find("<|assistant|>") != std::string::npos)
    return ChatTemplate::kZephyr;
  return ChatTemplate::kNone;
}

std::string apply_chat_template(ChatTemplate t, const json& messages) {
  if (!messages.is_array() || messages.empty())
    throw ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages");
  struct Msg {
    std::string role, content;
  };
  std::vector<Msg> msgs;
  for (const json& m : messages) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw ApiError(400, "each message needs a 'role' string", "messages");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant")
      throw ApiError(400, "message role '" + role + "' is not supported (system, user, assistant)",
                     "messages");
    for (auto it = m.begin(); it != m.end(); ++it) {
      if (it.key() != "role" && it.key() != "content" && it.key() != "name")
        throw ApiError(400, "message field '" + it.key() + "' is not supported", "messages");
    }
    if (!m.contains("content") || !m["content"].is_string())
      throw ApiError(400, "each message's 'content' must be a string", "messages");
    msgs.push_back({role, m["content"].get<std::string>()});
  }
  std::string out;
  switch (t) {
    case ChatTemplate::kChatML:
      for (const Msg& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      return out + "<|im_start|>assistant\n";
    case ChatTemplate::kLlama3:
      out = "<|begin_of_text|>";
      for (const Msg& m : msgs)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
      return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatTemplate::kLlama2: {
      // <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
      std::string system;
      size_t i = 0;
      if (msgs[0].role == "system") system = msgs[i++].content;
      bool expect_user = true;
      for (; i < msgs.size(); ++i) {
        const Msg& m = msgs[i];
        if ((m.role == "user") != expect_user)
          throw ApiError(400, "the llama-2 chat template needs user and assistant turns to "
                              "alternate, starting with the user (after an optional system)",
                         "messages");
        if (m.role == "user") {
          std::string content = m.content;
          if (!system.empty()) {
            content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
            system.clear();
          }
          out += "<s>[INST] " + content + " [/INST]";
        } else {
          out += " " + m.content + " </s>";
        }
        expect_user = !expect_user;
      }
      if (expect_user)
        throw ApiError(400, "the conversation must end with a user message", "messages");
      return out;
    }
    case ChatTemplate::kZephyr:
      for (const Msg& m : msgs) out += "<|" + m.role + "|>\n" + m.content + "</s>\n";
      return out + "<|assistant|>\n";
    default:
      throw ApiError(400, "this model has no chat template mlkv can apply", "messages");
  }
}

Completion parse_completion(const std::string& body, bool chat, const Tokenizer* tok,
                            ChatTemplate tmpl, const Limits& lim) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(400, "the body must be a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!known(it.key(), chat))
      throw ApiError(400, "field '" + it.key() + "' is not supported by mlkv serve", it.key());
  }
  if (j.contains("model") && !j["model"].is_null()) {
    if (!j["model"].is_string()) throw ApiError(400, "'model' must be a string", "model");
    const std::string m = j["model"].get<std::string>();
    if (m != lim.model_id)
      throw ApiError(404, "the model '" + m + "' does not exist (this server has '" +
                              lim.model_id + "')", "model");
  }
  for (const char* pen : {"presence_penalty", "frequency_penalty"}) {
    if (get_real(j, pen, -2.0, 2.0, false, 0.0) != 0.0)
      throw ApiError(400, std::string("'") + pen + "' is not supported (only 0)", pen);
  }
  if (j.contains("user") && !j["user"].is_null() && !j["user"].is_string())
    throw ApiError(400, "'user' must be a string", "user");

  Completion c;
  c.chat = chat;
  const bool add_bos = get_bool(j, "add_bos", false);
  if (chat) {
    if (!j.contains("messages")) throw ApiError(400, "'messages' is required", "messages");
    if (tok == nullptr)
      throw ApiError(400, "this server has no tokenizer, which chat needs", "messages");
    if (tmpl == ChatTemplate::kNone)
      throw ApiError(400,
                     "this model has no chat template mlkv can apply (its tokenizer_config.json "
                     "has none, or one of another family; mlkv applies chatml, llama-3, llama-2 "
                     "and zephyr; serve --chat-template NAME chooses one)",
                     "messages");
    c.prompts.push_back(encode(apply_chat_template(tmpl, j["messages"]), tok, false));
  } else {
    if (!j.contains("prompt") || j["prompt"].is_null())
      throw ApiError(400, "'prompt' is required", "prompt");
    const json& p = j["prompt"];
    if (p.is_string()) {
      c.prompts.push_back(encode(p.get<std::string>(), tok, add_bos));
    } else if (p.is_array() && !p.empty() && p[0].is_number()) {
      c.prompts.push_back(token_ids(p, lim.n_vocab, "as a list"));
    } else if (p.is_array() && !p.empty()) {
      for (const json& e : p) {
        if (e.is_string()) {
          c.prompts.push_back(encode(e.get<std::string>(), tok, add_bos));
        } else if (e.is_array()) {
          c.prompts.push_back(token_ids(e, lim.n_vocab, "as a list of lists"));
        } else {
          throw ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids "
                              "or a list of lists of token ids", "prompt");
        }
      }
    } else {
      throw ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or "
                          "a list of lists of token ids (and not empty)", "prompt");
    }
  }
  for (const auto& pr : c.prompts) {
    if (pr.empty()) throw ApiError(400, "a prompt is empty (no tokens)", chat ? "messages" : "prompt");
    if (static_cast<int>(pr.size()) > lim.max_prompt_tokens)
      throw ApiError(400, "a prompt has " + std::to_string(pr.size()) +
                              " tokens; this server takes at most " +
                              std::to_string(lim.max_prompt_tokens), chat ? "messages" : "prompt");
  }

  c.n = static_cast<int>(get_int(j, "n", 1, lim.max_choices, 1));
  if (static_cast<int64_t>(c.n) * static_cast<int64_t>(c.prompts.size()) > lim.max_choices)
    throw ApiError(400, "prompts x n = " + std::to_string(c.prompts.size() * c.n) +
                            " sequences; this server takes at most " +
                            std::to_string(lim.max_choices) + " per request", "n");
  size_t longest = 0;
  for (const auto& pr : c.prompts) longest = std::max(longest, pr.size());
  const char* mt_key = chat && j.contains("max_completion_tokens") ? "max_completion_tokens"
                                                                    : "max_tokens";
  const bool mt_given = j.contains(mt_key) && !j[mt_key].is_null();
  // Completions default to 16 tokens (OpenAI's default); chat to the rest of the context.
  const int64_t room = std::max<int64_t>(0, lim.n_ctx - static_cast<int64_t>(longest));
  c.max_tokens = static_cast<int>(get_int(j, mt_key, 0, lim.max_tokens,
                                          chat ? std::min<int64_t>(room, lim.max_tokens) : 16));
  if (mt_given || !chat) {
    if (static_cast<int64_t>(longest) + c.max_tokens > lim.n_ctx)
      throw ApiError(400, "the prompt (" + std::to_string(longest) + " tokens) + " + mt_key +
                              " (" + std::to_string(c.max_tokens) +
                              ") exceed the context of " + std::to_string(lim.n_ctx) + " tokens",
                     mt_key);
  }
  c.sampling.temperature = static_cast<float>(get_real(j, "temperature", 0.0, 1e6, false, 1.0));
  c.sampling.top_p = static_cast<float>(get_real(j, "top_p", 0.0, 1.0, true, 1.0));
  c.sampling.top_k = static_cast<int>(get_int(j, "top_k", -1, lim.n_vocab, 0));
  if (c.sampling.top_k < 0) c.sampling.top_k = 0;  // -1: no cut (vLLM's spelling)
  c.seed_given = j.contains("seed") && !j["seed"].is_null();
  if (c.seed_given) {
    // Any 64-bit integer, signed or not, taken modulo 2^64 (-1 is the seed 2^64 - 1); choice i
    // samples with seed + i modulo 2^64.
    const json& s = j["seed"];
    if (s.is_number_unsigned()) {
      c.sampling.seed = s.get<uint64_t>();
    } else if (s.is_number_integer()) {
      c.sampling.seed = static_cast<uint64_t>(s.get<int64_t>());
    } else {
      throw ApiError(400, "'seed' must be an integer from -9223372036854775808 to "
                          "18446744073709551615 (got " + show(s) + ")", "seed");
    }
  }
  c.stop_at_eos = !get_bool(j, "ignore_eos", false);
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& s = j["stop"];
    if (s.is_string()) {
      c.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (const json& e : s) {
        if (!e.is_string()) throw ApiError(400, "'stop' must hold strings", "stop");
        c.stop.push_back(e.get<std::string>());
      }
    } else {
      throw ApiError(400, "'stop' must be a string or a list of up to 4 strings", "stop");
    }
    for (const auto& s2 : c.stop) {
      if (s2.empty()) throw ApiError(400, "a 'stop' string is empty", "stop");
    }
    if (!c.stop.empty() && tok == nullptr)
      throw ApiError(400, "'stop' needs a tokenizer, and this server has none", "stop");
  }
  if (chat) {
    const bool lp = get_bool(j, "logprobs", false);
    const int top = static_cast<int>(get_int(j, "top_logprobs", 0, 20, 0));
    if (j.contains("top_logprobs") && !j["top_logprobs"].is_null() && !lp)
      throw ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs");
    c.logprobs = lp ? top : -1;
  } else {
    c.logprobs = j.contains("logprobs") && !j["logprobs"].is_null()
                     ? static_cast<int>(get_int(j, "logprobs", 0, 20, 0))
                     : -1;
    c.echo = get_bool(j, "echo", false);
  }
  c.stream = get_bool(j, "stream", false);
  if (!chat && c.echo && c.stream) throw ApiError(400, "'echo' with 'stream' is not supported", "echo");
  if (j.contains("stream_options") && !j["stream_options"].is_null()) {
    const json& so = j["stream_options"];
    if (!so.is_object()) throw ApiError(400, "'stream_options' must be an object", "stream_options");
    if (!c.stream) throw ApiError(400, "'stream_options' needs 'stream': true", "stream_options");
    for (auto it = so.begin(); it != so.end(); ++it) {
      if (it.key() != "include_usage")
        throw ApiError(400, "stream_options field '" + it.key() + "' is not supported",
                       "stream_options");
    }
    c.include_usage = get_bool(so, "include_usage", false);
  }
  return c;
}

std::string StopMatcher::push(const std::string& text) {
  if (stopped_) return "";
  const size_t from = text_.size();
  text_ += text;
  size_t longest = 0;
  for (const auto& s : stops_) longest = std::max(longest, s.size());
  // The earliest complete stop string that ends in the new text.
  size_t cut = std::string::npos;
  const size_t search = from >= longest ? from - longest + 1 : 0;
  for (const auto& s : stops_) {
    const size_t at = text_.find(s, std::min(search, text_.size()));
    if (at != std::string::npos && at >= sent_) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = text_.substr(sent_, cut - sent_);
    sent_ = cut;
    return out;
  }
  // Hold back the longest tail that could begin a stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t k = std::min(s.size() - 1, text_.size() - sent_); k > hold; --k) {
      if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  const size_t upto = text_.size() - hold;
  std::string out = text_.substr(sent_, upto - sent_);
  sent_ = upto;
  return out;
}

std::string StopMatcher::finish() {
  if (stopped_) return "";
  std::string out = text_.substr(sent_);
  sent_ = text_.size();
  return out;
}

std::string token_text(int32_t id, const Tokenizer* tok) {
  return tok != nullptr ? tok->token_bytes(id) : std::to_string(id);
}

json completion_logprobs(const std::vector<int32_t>& prompt, const Generation& g, bool echo,
                         size_t n_generated, const Tokenizer* tok, size_t text_offset0) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  size_t off = text_offset0;
  // The strings of the tokens as they stand in the text (joined: the echoed prompt and the
  // completion), so a SentencePiece text's first piece has no leading space there.
  bool at_start = echo || tok == nullptr || starts_text(*tok, prompt);
  auto text_of = [&](int32_t id) {
    return tok != nullptr ? tok->token_bytes_at(id, at_start) : std::to_string(id);
  };
  auto add = [&](int32_t id, const TokenLogprob* lp) {
    const std::string t = text_of(id);
    tokens.push_back(t);
    offs.push_back(off);
    off += tok != nullptr ? t.size() : 0;
    const bool was_at_start = at_start;
    if (tok != nullptr && !tok->token_bytes(id).empty()) at_start = false;
    if (lp == nullptr) {
      lps.push_back(nullptr);
      tops.push_back(nullptr);
      return;
    }
    lps.push_back(lp->logprob);
    json top = json::object();
    for (const auto& [tid, v] : lp->top) {
      const std::string key = tok != nullptr ? tok->token_bytes_at(tid, was_at_start) : std::to_string(tid);
      if (!top.contains(key)) top[key] = v;
    }
    tops.push_back(top);
  };
  if (echo) {
    for (size_t i = 0; i < prompt.size(); ++i) {
      add(prompt[i], i == 0 || i - 1 >= g.prompt_logprobs.size() ? nullptr
                                                                 : &g.prompt_logprobs[i - 1]);
    }
  }
  for (size_t i = 0; i < n_generated && i < g.tokens.size(); ++i)
    add(g.tokens[i], i < g.logprobs.size() ? &g.logprobs[i] : nullptr);
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops},
          {"text_offset", offs}};
}

json chat_logprobs(const std::vector<TokenLogprob>& lps, size_t n, const Tokenizer* tok) {
  auto bytes_of = [](const std::string& s) {
    json b = json::array();
    for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
    return b;
  };
  json content = json::array();
  for (size_t i = 0; i < n && i < lps.size(); ++i) {
    const std::string t = token_text(lps[i].token, tok);
    json top = json::array();
    for (const auto& [tid, v] : lps[i].top) {
      const std::string tt = token_text(tid, tok);
      top.push_back({{"token", tt}, {"logprob", v}, {"bytes", bytes_of(tt)}});
    }
    content.push_back(
        {{"token", t}, {"logprob", lps[i].logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

const char* finish_reason(const std::string& r, bool stopped) {
  if (stopped || r == "eos") return "stop";
  if (r == "length" || r == "context") return "length";
  return "stop";
}

}  // namespace mlkv::openai
