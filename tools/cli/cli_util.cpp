// Helpers shared by the subcommand files.
#include <cstdlib>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"

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

}  // namespace mlkv::cli
