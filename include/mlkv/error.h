// mlkv::Error, the one exception type of the public API (and of the engine inside): a failure the
// caller can act on - a missing or corrupt file, a bad config, a token id outside the vocabulary,
// an impossible option. The message names the file, key, option or value. What this is not: a
// bug report; violated internal invariants abort with file and line (src/core/check.h).
#pragma once

#include <stdexcept>
#include <string>

namespace mlkv {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The Error of a file or folder that cannot be found, opened, read or written (not one whose
// contents are wrong: that is a plain Error). A catch of Error sees it too; the Python package
// raises OSError for it (FileNotFoundError when not_found()), ValueError for every other Error.
class FileError : public Error {
 public:
  explicit FileError(const std::string& what, bool not_found = false)
      : Error(what), not_found_(not_found) {}
  bool not_found() const noexcept { return not_found_; }  // the path does not exist

 private:
  bool not_found_;
};

}  // namespace mlkv
