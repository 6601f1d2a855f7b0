// Helpers shared by the subcommand files.
#include <charconv>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "core/device.h"
#include "runtime/options.h"

namespace mlkv::cli {

std::vector<int32_t> parse_id_list(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',' || s[i] == '\t' || s[i] == '\n')) ++i;
    if (i >= s.size()) break;
    size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != ',' && s[j] != '\t' && s[j] != '\n') ++j;
    const std::string item = s.substr(i, j - i);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    MLKV_REQUIRE(end != nullptr && *end == '\0' && !item.empty(), "'", item,
                 "' is not a token id (expected integers separated by spaces or commas)");
    MLKV_REQUIRE(v >= 0 && v <= INT32_MAX, "token id ", item, " is out of range");
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

int64_t parse_byte_size(const std::string& s, const char* what) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  MLKV_REQUIRE(end != s.c_str() && std::isfinite(v) && v > 0, what, ": '", s,
               "' is not a positive size (e.g. 512M, 2GiB, 1000000)");
  std::string unit(end);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  double scale = 0;
  const std::string prefixes = "KMGT";
  if (unit.empty() || unit == "B") {
    scale = 1;
  } else if (const size_t p = prefixes.find(unit[0]); p != std::string::npos) {
    const std::string rest = unit.substr(1);
    if (rest.empty() || rest == "iB") scale = std::pow(1024.0, double(p + 1));
    if (rest == "B") scale = std::pow(1000.0, double(p + 1));
  }
  MLKV_REQUIRE(scale > 0, what, ": unknown unit '", unit, "' in '", s,
               "' (K, M, G, T, KiB.., KB.., B)");
  const double bytes = v * scale;
  MLKV_REQUIRE(bytes >= 1 && bytes < 9.0e18, what, ": '", s, "' is out of range");
  return static_cast<int64_t>(bytes);
}

namespace {

CLI::Validator number_range(double lo, double hi, bool lo_open, bool hi_open) {
  std::string desc;
  if (std::isinf(hi)) {
    desc = cat(lo_open ? "> " : ">= ", lo);
  } else {
    desc = cat("in ", lo_open ? "(" : "[", lo, ", ", hi, hi_open ? ")" : "]");
  }
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        const bool number = end != s.c_str() && *end == '\0';
        const bool ok = number && std::isfinite(v) && (lo_open ? v > lo : v >= lo) &&
                        (hi_open ? v < hi : v <= hi);
        if (ok) return {};
        return cat(s, number ? " is out of range" : " is not a number", " (allowed: ", desc, ")");
      },
      desc, "RANGE");
}

}  // namespace

CLI::Validator at_least(double lo) {
  return number_range(lo, std::numeric_limits<double>::infinity(), false, false);
}

CLI::Validator seed_value() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        uint64_t v = 0;
        const char* end = s.data() + s.size();
        const auto [p, ec] = std::from_chars(s.data(), end, v);
        if (s.empty() || ec != std::errc() || p != end) {
          return s + " is out of range (allowed: a whole number in [0, 18446744073709551615])";
        }
        return {};
      },
      "in [0, 2^64 - 1]");
}

CLI::Validator above(double lo) {
  return number_range(lo, std::numeric_limits<double>::infinity(), true, false);
}

CLI::Validator interval(double lo, double hi, bool lo_open, bool hi_open) {
  return number_range(lo, hi, lo_open, hi_open);
}

int sequences_in_budget(int64_t budget, int64_t bytes_per_token, int ctx) {
  const int64_t per_seq = bytes_per_token * ctx;
  MLKV_REQUIRE(per_seq > 0 && budget >= per_seq, "--kv-budget of ", budget,
               " bytes holds no sequence of ", ctx, " tokens (one needs ", per_seq, " bytes)");
  return static_cast<int>(std::min<int64_t>(budget / per_seq, int64_t{1} << 20));
}

CLI::Validator parsed_by(std::function<void(const std::string&)> parse) {
  return CLI::Validator(
      [parse = std::move(parse)](std::string& s) -> std::string {
        if (s.empty()) return "empty: give a value";
        try {
          parse(s);
          return {};
        } catch (const Error& e) {
          // CLI11 puts the option's name in front: drop the parser's own ("--x must be ...").
          std::string m = e.what();
          if (m.rfind("--", 0) == 0 && m.find(' ') != std::string::npos) m.erase(0, m.find(' ') + 1);
          return m;
        }
      },
      "");
}

CLI::Validator cache_format(const char* what) {
  return parsed_by([what](const std::string& s) { parse_cache_type(s, what); });
}

CLI::Validator one_of(const char* what, std::vector<std::string> names) {
  return parsed_by([what, names = std::move(names)](const std::string& s) {
    if (std::find(names.begin(), names.end(), s) != names.end()) return;
    std::string list;
    for (size_t i = 0; i < names.size(); ++i) {
      list += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
    }
    fail(what, " must be ", list, " (got '", s, "')");
  });
}

CLI::Validator weight_format() {
  return parsed_by([](const std::string& s) { parse_weight_type(s, "--weights"); });
}

CLI::Validator device_name() {
  return parsed_by([](const std::string& s) {
    try {
      parse_device(s);
    } catch (const Error&) {
      fail("--device must be cpu, cuda or cuda:N (got '", s, "')");
    }
  });
}

void add_cache_type_options(CLI::App* cmd, std::string* both, std::string* k, std::string* v) {
  // An empty value would read as "not given" (f32): refused instead (parsed_by).
  cmd->add_option("--cache-type", *both,
                  "KV cache element type of keys and values: f32, f16, bf16, q8_0 or q4_0 "
                  "(q8_0/q4_0: blocks of 32 along the head, CPU), or KEYS/VALUES such as q8_0/f16")
      ->capture_default_str()
      ->check(cache_format("--cache-type"));
  cmd->add_option("--cache-type-k", *k,
                  "KV cache type of the keys (overrides --cache-type); q8_0+hadamard / q4_0+hadamard rotate "
                  "each block of 32 by a Hadamard matrix before quantizing")
      ->check(parsed_by([](const std::string& s) { cache_type_arg("", s, ""); }));
  cmd->add_option("--cache-type-v", *v, "KV cache type of the values (overrides --cache-type)")
      ->check(parsed_by([](const std::string& s) { cache_type_arg("", "", s); }));
}

}  // namespace mlkv::cli
