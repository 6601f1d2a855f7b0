// Added-token matching (see added_tokens.h).
#include "tokenizer/added_tokens.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <cstring>

#include "tokenizer/utf8.h"

namespace mlkv {

namespace {

bool is_space_at(std::string_view s, size_t i, size_t* len) {
  size_t j = i;
  uint32_t cp = utf8::next_code_point(s, j);
  *len = j - i;
  return u_isUWhiteSpace(static_cast<UChar32>(cp));
}

bool is_word_cp(uint32_t cp) { return cp == '_' || u_isalnum(static_cast<UChar32>(cp)); }

// The code point that ends right before byte offset i (i > 0).
uint32_t code_point_before(std::string_view s, size_t i) {
  size_t j = i - 1;
  while (j > 0 && (static_cast<uint8_t>(s[j]) & 0xC0) == 0x80) --j;
  return utf8::next_code_point(s, j);
}

}  // namespace

void AddedTokenMatcher::add(const AddedToken& t) {
  if (t.content.empty()) return;  // can never match
  tokens_.push_back(t);
  const auto b0 = static_cast<uint8_t>(t.content[0]);
  if (t.content.size() == 1) {
    single_[b0] = true;
  } else {
    const auto b1 = static_cast<uint8_t>(t.content[1]);
    second_[b0][b1 >> 6] |= uint64_t{1} << (b1 & 63);
  }
  auto& list = by_first_byte_[b0];
  list.push_back(static_cast<uint32_t>(tokens_.size() - 1));
  std::stable_sort(list.begin(), list.end(), [&](uint32_t a, uint32_t b) {
    return tokens_[a].content.size() > tokens_[b].content.size();
  });
}

void AddedTokenMatcher::split(std::string_view s, std::vector<Part>& out) const {
  const size_t n = s.size();
  size_t plain_start = 0;  // start of the pending plain-text part
  size_t i = 0;
  while (i < n) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    const auto& cands = by_first_byte_[b0];
    if (cands.empty()) {
      ++i;
      continue;
    }
    if (!single_[b0]) {
      if (i + 1 >= n) break;
      const auto b1 = static_cast<uint8_t>(s[i + 1]);
      if (!((second_[b0][b1 >> 6] >> (b1 & 63)) & 1)) {
        ++i;
        continue;
      }
    }
    const AddedToken* hit = nullptr;
    for (uint32_t k : cands) {
      const AddedToken& t = tokens_[k];
      const size_t len = t.content.size();
      if (len > n - i) continue;
      if (len > 1 && s[i + 1] != t.content[1]) continue;  // cheap reject before memcmp
      if (std::memcmp(s.data() + i, t.content.data(), len) == 0) {
        hit = &t;  // the longest at this position (candidates are sorted by length)
        break;
      }
    }
    if (hit != nullptr && hit->single_word) {
      size_t end = i + hit->content.size();
      bool word_before = i > 0 && is_word_cp(code_point_before(s, i));
      size_t j = end;
      bool word_after = end < n && is_word_cp(utf8::next_code_point(s, j));
      if (word_before || word_after) hit = nullptr;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + hit->content.size();
    if (hit->lstrip) {
      while (begin > plain_start) {
        size_t b = begin - 1;
        while (b > plain_start && (static_cast<uint8_t>(s[b]) & 0xC0) == 0x80) --b;
        size_t len = 0;
        if (!is_space_at(s, b, &len)) break;
        begin = b;
      }
    }
    if (hit->rstrip) {
      size_t len = 0;
      while (end < n && is_space_at(s, end, &len)) end += len;
    }
    if (begin > plain_start) out.push_back({plain_start, begin, -1});
    out.push_back({i, i + hit->content.size(), hit->id});
    plain_start = i = end;
  }
  if (plain_start < n) out.push_back({plain_start, n, -1});
}

}  // namespace mlkv
