// PCRE2 wrapper (see regex.h). Each thread keeps one match context with a JIT stack that is large
// enough for long whitespace or letter runs.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include "core/check.h"

namespace mlkv {

namespace {

// Per-thread PCRE2 scratch: match data (one ovector pair is all find_all needs), a match context
// and a JIT stack of up to 8 MiB (the default 32 KiB overflows on very long runs).
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    MLKV_CHECK(data != nullptr && context != nullptr && jit_stack != nullptr);
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

// The Unicode White_Space property as PCRE2 classes: tab..CR, NEL and the separators (Z).
constexpr std::string_view kWhiteSpaceBody = R"(\t-\r\x{85}\p{Z})";

}  // namespace

std::string white_space_pattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[++i];
      if (n == 's') {
        out += in_class ? std::string(kWhiteSpaceBody) : "[" + std::string(kWhiteSpaceBody) + "]";
      } else if (n == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpaceBody) + "]";
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a literal ']' first in the class
      continue;
    }
    if (c == '[' && in_class && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:] inside a class
      size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(std::string_view pattern, bool literal) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  std::string compiled = literal ? std::string(pattern) : white_space_pattern(pattern);
  // PCRE2_LITERAL allows no UCP (and needs none).
  uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(), options,
                        &err, &err_offset, nullptr);
  if (code_ == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("cannot compile regex '", pattern, "': ", reinterpret_cast<const char*>(msg),
         " at offset ", err_offset);
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  MatchScratch& sc = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  const size_t n = s.size();
  size_t pos = 0;
  while (pos <= n) {
    int rc = jit_ ? pcre2_jit_match(code_, subject, n, pos, PCRE2_NO_UTF_CHECK, sc.data, sc.context)
                  : pcre2_match(code_, subject, n, pos, PCRE2_NO_UTF_CHECK, sc.data, sc.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("regex '", pattern_, "' failed on a ", n, "-byte input: ",
           reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(sc.data);
    size_t start = ov[0], end = ov[1];
    if (end > start) {
      out.emplace_back(start, end);
      pos = end;
    } else {
      // Empty match: step over one code point so the scan makes progress.
      if (start >= n) break;
      pos = start + 1;
      while (pos < n && (static_cast<uint8_t>(s[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
}

std::string Regex::replace_all(std::string_view s, std::string_view with) const {
  std::vector<std::pair<size_t, size_t>> m;
  find_all(s, m);
  if (m.empty()) return std::string(s);
  std::string out;
  size_t prev = 0;
  for (auto [a, b] : m) {
    out.append(s.substr(prev, a - prev));
    out.append(with);
    prev = b;
  }
  out.append(s.substr(prev));
  return out;
}

}  // namespace mlkv
