// Pre-tokenizer pipeline (see pre_tokenizer.h). Delimiter behaviours follow the Hugging Face
// definitions: a regex match is a "delimiter" (or a non-match is, with invert), and
//   Removed: delimiters dropped;  Isolated: delimiters are pieces of their own;
//   MergedWithPrevious / MergedWithNext: a delimiter joins the piece before / after it;
//   Contiguous: runs of consecutive delimiters become one piece.
#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "tokenizer/regex.h"

namespace mlkv {

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const std::string& s, const std::string& where) {
  if (s == "Removed") return Behavior::kRemoved;
  if (s == "Isolated") return Behavior::kIsolated;
  if (s == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::kMergedWithNext;
  if (s == "Contiguous") return Behavior::kContiguous;
  fail(where, ": unknown Split behavior '", s, "'");
}

struct Piece {
  size_t begin, end;
  bool delim;
};

}  // namespace

struct PreTokenizer::Step {
  std::unique_ptr<Regex> regex;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;

  // Splits s[b, e) and appends the resulting non-empty spans to out.
  void apply(std::string_view s, size_t b, size_t e, std::vector<Span>& out,
             std::vector<std::pair<size_t, size_t>>& matches, std::vector<Piece>& pieces) const {
    matches.clear();
    regex->find_all(s.substr(b, e - b), matches);
    // Cover [b, e) with match / non-match pieces.
    pieces.clear();
    size_t prev = 0;
    for (auto [ms, me] : matches) {
      if (ms > prev) pieces.push_back({b + prev, b + ms, invert});
      pieces.push_back({b + ms, b + me, !invert});
      prev = me;
    }
    if (b + prev < e) pieces.push_back({b + prev, e, invert});

    switch (behavior) {
      case Behavior::kIsolated:
        for (const auto& p : pieces) out.emplace_back(p.begin, p.end);
        break;
      case Behavior::kRemoved:
        for (const auto& p : pieces) {
          if (!p.delim) out.emplace_back(p.begin, p.end);
        }
        break;
      case Behavior::kMergedWithPrevious: {
        // A delimiter extends the previous piece unless that piece was itself a delimiter.
        size_t first = out.size();
        bool prev_delim = false;
        for (const auto& p : pieces) {
          if (p.delim && !prev_delim && out.size() > first) {
            out.back().second = p.end;
          } else {
            out.emplace_back(p.begin, p.end);
          }
          prev_delim = p.delim;
        }
        break;
      }
      case Behavior::kMergedWithNext: {
        // Mirror image of MergedWithPrevious, scanning from the end.
        std::vector<Span> rev;
        bool prev_delim = false;
        for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
          if (it->delim && !prev_delim && !rev.empty()) {
            rev.back().first = it->begin;
          } else {
            rev.emplace_back(it->begin, it->end);
          }
          prev_delim = it->delim;
        }
        out.insert(out.end(), rev.rbegin(), rev.rend());
        break;
      }
      case Behavior::kContiguous: {
        size_t first = out.size();
        bool prev_delim = false;
        for (const auto& p : pieces) {
          if (p.delim && prev_delim && out.size() > first) {
            out.back().second = p.end;
          } else {
            out.emplace_back(p.begin, p.end);
          }
          prev_delim = p.delim;
        }
        break;
      }
    }
  }
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;

std::unique_ptr<PreTokenizer> PreTokenizer::from_json(const nlohmann::json& j,
                                                      const std::string& where) {
  auto p = std::make_unique<PreTokenizer>();
  if (!j.is_null()) p->add(j, where, true);
  return p;
}

std::unique_ptr<PreTokenizer> PreTokenizer::gpt2() {
  nlohmann::json j = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  return from_json(j, "gpt2");
}

void PreTokenizer::add(const nlohmann::json& j, const std::string& where, bool first) {
  MLKV_REQUIRE(j.is_object() && j.contains("type") && j["type"].is_string(), where,
               ": pre_tokenizer must be an object with a string \"type\"");
  const std::string type = j["type"].get<std::string>();
  auto step = std::make_unique<Step>();
  if (type == "Sequence") {
    MLKV_REQUIRE(j.contains("pretokenizers") && j["pretokenizers"].is_array(), where,
                 ": Sequence pre_tokenizer without a \"pretokenizers\" array");
    for (const auto& sub : j["pretokenizers"]) {
      add(sub, where, first && steps_.empty());
    }
    return;
  } else if (type == "ByteLevel") {
    byte_level_ = true;
    if (j.value("add_prefix_space", false)) {
      // A prefix space is only well defined on a whole segment, i.e. before any split.
      MLKV_REQUIRE(first && steps_.empty(), where,
                   ": ByteLevel with add_prefix_space after another pre-tokenizer is not supported");
      add_prefix_space_ = true;
    }
    if (!j.value("use_regex", true)) return;  // only the byte-level alphabet
    step->regex = std::make_unique<Regex>(kGpt2SplitPattern);
    step->behavior = Behavior::kIsolated;
  } else if (type == "Metaspace") {
    // The text transform is only well defined on a whole segment, i.e. before any split.
    MLKV_REQUIRE(first && steps_.empty() && !metaspace_, where,
                 ": Metaspace after another pre-tokenizer is not supported");
    metaspace_ = true;
    meta_replacement_ = j.value("replacement", std::string("\xE2\x96\x81"));
    MLKV_REQUIRE(!meta_replacement_.empty(), where, ": Metaspace replacement is empty");
    std::string scheme = j.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    if (scheme == "always") {
      meta_prepend_ = Prepend::kAlways;
    } else if (scheme == "first") {
      meta_prepend_ = Prepend::kFirst;
    } else if (scheme == "never") {
      meta_prepend_ = Prepend::kNever;
    } else {
      fail(where, ": unknown Metaspace prepend_scheme '", scheme, "'");
    }
    if (!j.value("split", true)) return;
    step->regex = std::make_unique<Regex>(meta_replacement_, true);
    step->behavior = Behavior::kMergedWithNext;
  } else if (type == "Split") {
    MLKV_REQUIRE(j.contains("pattern") && j["pattern"].is_object(), where,
                 ": Split pre_tokenizer without a \"pattern\" object");
    const auto& pat = j["pattern"];
    if (pat.contains("Regex") && pat["Regex"].is_string()) {
      step->regex = std::make_unique<Regex>(pat["Regex"].get<std::string>(), false);
    } else if (pat.contains("String") && pat["String"].is_string()) {
      step->regex = std::make_unique<Regex>(pat["String"].get<std::string>(), true);
    } else {
      fail(where, ": Split pattern must be {\"Regex\": ...} or {\"String\": ...}");
    }
    MLKV_REQUIRE(j.contains("behavior") && j["behavior"].is_string(), where,
                 ": Split pre_tokenizer without a \"behavior\"");
    step->behavior = parse_behavior(j["behavior"].get<std::string>(), where);
    step->invert = j.value("invert", false);
  } else if (type == "Digits") {
    bool individual = j.value("individual_digits", false);
    step->regex = std::make_unique<Regex>(individual ? R"(\p{N})" : R"(\p{N}+)");
    step->behavior = Behavior::kIsolated;
  } else if (type == "Whitespace") {
    step->regex = std::make_unique<Regex>(R"(\w+|[^\w\s]+)");
    step->behavior = Behavior::kRemoved;
    step->invert = true;
  } else if (type == "WhitespaceSplit") {
    step->regex = std::make_unique<Regex>(R"(\s+)");
    step->behavior = Behavior::kRemoved;
  } else {
    fail(where, ": unsupported pre_tokenizer type '", type,
         "' (supported: ByteLevel, Metaspace, Split, Digits, Whitespace, WhitespaceSplit, "
         "Sequence)");
  }
  steps_.push_back(std::move(step));
}

void PreTokenizer::split(std::string_view s, std::vector<Span>& out) const {
  if (s.empty()) return;
  if (steps_.empty()) {
    out.emplace_back(0, s.size());
    return;
  }
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  thread_local std::vector<Piece> pieces;
  if (steps_.size() == 1) {
    steps_[0]->apply(s, 0, s.size(), out, matches, pieces);
    return;
  }
  std::vector<Span> cur{{0, s.size()}}, next;
  for (const auto& step : steps_) {
    next.clear();
    for (auto [b, e] : cur) step->apply(s, b, e, next, matches, pieces);
    cur.swap(next);
  }
  out.insert(out.end(), cur.begin(), cur.end());
}

}  // namespace mlkv
