// Text normalizers of a Hugging Face tokenizer.json ("normalizer" field): NFC, NFD, NFKC, NFKD
// (ICU), Lowercase (ICU root locale), Strip, Replace, Prepend and Sequence of these. Anything else
// is rejected at load with the type named. Normalizers here map strings to strings; offsets are
// not tracked (mlkv never needs them).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mlkv {

class Regex;

class Normalizer {
 public:
  // Builds the pipeline from the JSON value (null: identity). `where` names the file for errors.
  static std::unique_ptr<Normalizer> from_json(const nlohmann::json& j, const std::string& where);
  Normalizer();
  ~Normalizer();

  bool is_identity() const { return steps_.empty(); }
  // Normalizes valid UTF-8 text. Returns false (and leaves out untouched) when nothing changed.
  bool apply(std::string_view in, std::string* out) const;

 private:
  struct Step;
  void add(const nlohmann::json& j, const std::string& where);
  std::vector<std::unique_ptr<Step>> steps_;
};

}  // namespace mlkv
