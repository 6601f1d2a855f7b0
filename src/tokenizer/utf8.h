// UTF-8 helpers shared by the tokenizers: validation with U+FFFD replacement (the "maximal subpart"
// rule of Unicode ch. 3, the same as Python's errors="replace", WHATWG TextDecoder and Rust's
// from_utf8_lossy), detection of an incomplete sequence at the end of a buffer (for streaming
// decode), code point iteration, and GPT-2's byte <-> printable-unicode table.
// Not a Unicode database: character classes come from PCRE2 (UCP), normalization from ICU.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mlkv::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there do not start one
// (then `bad` is the length of the maximal invalid subpart to replace by one U+FFFD, >= 1).
size_t valid_length(std::string_view s, size_t i, size_t* bad);

// True when s is entirely valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF).
bool is_valid(std::string_view s);

// s with each maximal invalid subpart replaced by U+FFFD. Returns s unchanged when valid.
std::string sanitize(std::string_view s);

// The number of bytes at the end of s that form a prefix of a valid multi-byte sequence that is not
// yet complete (0..3). Those bytes may still become valid when more bytes arrive.
size_t incomplete_tail(std::string_view s);

// Decodes the code point at s[i] (s must be valid UTF-8 there); advances i.
uint32_t next_code_point(std::string_view s, size_t& i);

// Appends the UTF-8 encoding of cp to out.
void append_code_point(std::string& out, uint32_t cp);

// GPT-2's reversible map from bytes to printable code points ("Ġ" is the space byte 0x20).
const std::array<uint32_t, 256>& byte_to_unicode();

// Maps a byte-level string (each code point one of the 256 above) back to bytes. Returns false when
// some code point is not in the table.
bool byte_level_to_bytes(std::string_view s, std::string* out);

// Maps raw bytes to their byte-level string ("Ġthe" for " the").
std::string bytes_to_byte_level(std::string_view bytes);

}  // namespace mlkv::utf8
