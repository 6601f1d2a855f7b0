// Normalizer pipeline (see normalizer.h). Unicode normalization and case mapping are ICU's; pure
// ASCII text skips them (it is NFC/NFD/NFKC/NFKD-invariant already).
#include "tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace mlkv {

namespace {

bool is_ascii(std::string_view s) {
  for (char c : s) {
    if (static_cast<uint8_t>(c) >= 0x80) return false;
  }
  return true;
}

enum class Kind { kUnicode, kLowercase, kStrip, kReplace, kPrepend };

}  // namespace

struct Normalizer::Step {
  Kind kind;
  const icu::Normalizer2* unicode = nullptr;  // kUnicode
  bool strip_left = false, strip_right = false;
  std::unique_ptr<Regex> pattern;  // kReplace
  std::string content;             // kReplace: replacement; kPrepend: prefix

  bool apply(std::string_view in, std::string* out) const {
    switch (kind) {
      case Kind::kUnicode: {
        if (is_ascii(in)) return false;
        UErrorCode err = U_ZERO_ERROR;
        icu::StringPiece piece(in.data(), static_cast<int32_t>(in.size()));
        if (unicode->isNormalizedUTF8(piece, err) && U_SUCCESS(err)) return false;
        err = U_ZERO_ERROR;
        std::string res;
        icu::StringByteSink<std::string> sink(&res, static_cast<int32_t>(in.size()));
        unicode->normalizeUTF8(0, piece, sink, nullptr, err);
        MLKV_REQUIRE(U_SUCCESS(err), "unicode normalization failed: ", u_errorName(err));
        *out = std::move(res);
        return true;
      }
      case Kind::kLowercase: {
        bool has_upper_or_non_ascii = false;
        for (char c : in) {
          auto u = static_cast<uint8_t>(c);
          if (u >= 0x80 || (u >= 'A' && u <= 'Z')) {
            has_upper_or_non_ascii = true;
            break;
          }
        }
        if (!has_upper_or_non_ascii) return false;
        UErrorCode err = U_ZERO_ERROR;
        std::string res;
        icu::StringByteSink<std::string> sink(&res, static_cast<int32_t>(in.size()));
        icu::CaseMap::utf8ToLower("", 0, icu::StringPiece(in.data(), static_cast<int32_t>(in.size())),
                                  sink, nullptr, err);
        MLKV_REQUIRE(U_SUCCESS(err), "lowercasing failed: ", u_errorName(err));
        if (res == in) return false;
        *out = std::move(res);
        return true;
      }
      case Kind::kStrip: {
        size_t a = 0, b = in.size();
        if (strip_left) {
          while (a < b) {
            size_t i = a;
            uint32_t cp = utf8::next_code_point(in, i);
            if (!u_isUWhiteSpace(static_cast<UChar32>(cp))) break;
            a = i;
          }
        }
        if (strip_right) {
          while (b > a) {
            size_t i = b - 1;
            while (i > a && (static_cast<uint8_t>(in[i]) & 0xC0) == 0x80) --i;
            size_t j = i;
            uint32_t cp = utf8::next_code_point(in, j);
            if (!u_isUWhiteSpace(static_cast<UChar32>(cp))) break;
            b = i;
          }
        }
        if (a == 0 && b == in.size()) return false;
        *out = std::string(in.substr(a, b - a));
        return true;
      }
      case Kind::kReplace: {
        std::string res = pattern->replace_all(in, content);
        if (res == in) return false;
        *out = std::move(res);
        return true;
      }
      case Kind::kPrepend:
        if (in.empty()) return false;
        *out = content + std::string(in);
        return true;
    }
    return false;
  }
};

Normalizer::Normalizer() = default;
Normalizer::~Normalizer() = default;

std::unique_ptr<Normalizer> Normalizer::from_json(const nlohmann::json& j,
                                                  const std::string& where) {
  auto n = std::make_unique<Normalizer>();
  if (!j.is_null()) n->add(j, where);
  return n;
}

void Normalizer::add(const nlohmann::json& j, const std::string& where) {
  MLKV_REQUIRE(j.is_object() && j.contains("type") && j["type"].is_string(), where,
               ": normalizer must be an object with a string \"type\"");
  const std::string type = j["type"].get<std::string>();
  auto step = std::make_unique<Step>();
  UErrorCode err = U_ZERO_ERROR;
  if (type == "Sequence") {
    MLKV_REQUIRE(j.contains("normalizers") && j["normalizers"].is_array(), where,
                 ": Sequence normalizer without a \"normalizers\" array");
    for (const auto& sub : j["normalizers"]) add(sub, where);
    return;
  } else if (type == "NFC") {
    step->kind = Kind::kUnicode;
    step->unicode = icu::Normalizer2::getNFCInstance(err);
  } else if (type == "NFD") {
    step->kind = Kind::kUnicode;
    step->unicode = icu::Normalizer2::getNFDInstance(err);
  } else if (type == "NFKC") {
    step->kind = Kind::kUnicode;
    step->unicode = icu::Normalizer2::getNFKCInstance(err);
  } else if (type == "NFKD") {
    step->kind = Kind::kUnicode;
    step->unicode = icu::Normalizer2::getNFKDInstance(err);
  } else if (type == "Lowercase") {
    step->kind = Kind::kLowercase;
  } else if (type == "Strip") {
    step->kind = Kind::kStrip;
    step->strip_left = j.value("strip_left", true);
    step->strip_right = j.value("strip_right", true);
  } else if (type == "Prepend") {
    step->kind = Kind::kPrepend;
    MLKV_REQUIRE(j.contains("prepend") && j["prepend"].is_string(), where,
                 ": Prepend normalizer without a \"prepend\" string");
    step->content = j["prepend"].get<std::string>();
  } else if (type == "Replace") {
    step->kind = Kind::kReplace;
    MLKV_REQUIRE(j.contains("pattern") && j["pattern"].is_object() && j.contains("content") &&
                     j["content"].is_string(),
                 where, ": Replace normalizer needs \"pattern\" and \"content\"");
    const auto& p = j["pattern"];
    if (p.contains("String") && p["String"].is_string()) {
      step->pattern = std::make_unique<Regex>(p["String"].get<std::string>(), true);
    } else if (p.contains("Regex") && p["Regex"].is_string()) {
      step->pattern = std::make_unique<Regex>(p["Regex"].get<std::string>(), false);
    } else {
      fail(where, ": Replace normalizer pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
    step->content = j["content"].get<std::string>();
  } else {
    fail(where, ": unsupported normalizer type '", type,
         "' (supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, Replace, Prepend, Sequence)");
  }
  MLKV_REQUIRE(U_SUCCESS(err), where, ": ICU normalizer unavailable: ", u_errorName(err));
  steps_.push_back(std::move(step));
}

bool Normalizer::apply(std::string_view in, std::string* out) const {
  bool changed = false;
  std::string cur, next;
  for (const auto& s : steps_) {
    std::string_view src = changed ? std::string_view(cur) : in;
    if (s->apply(src, &next)) {
      cur.swap(next);
      changed = true;
    }
  }
  if (changed) *out = std::move(cur);
  return changed;
}

}  // namespace mlkv
