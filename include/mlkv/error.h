// mlkv::Error, the one exception type of the public API (and of the engine inside): a failure the
// caller can act on - a missing or corrupt file, a bad config, a token id outside the vocabulary,
// an impossible option. The message names the file, key, option or value. What this is not: a
// bug report; violated internal invariants abort with file and line (src/core/check.h).
#pragma once

#include <stdexcept>

namespace mlkv {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace mlkv
