// Error handling in two tiers (see docs/ARCHITECTURE.md):
//  - MLKV_CHECK(cond): an always-on invariant of the program itself. A failure is a bug in mlkv:
//    it prints file, line and the condition, then aborts.
//  - mlkv::Error: a recoverable failure caused by the outside world (a corrupt file, a bad config,
//    a token id out of range). Thrown with MLKV_REQUIRE / mlkv::fail and turned into a clear
//    message and a non-zero exit code (or a 4xx status) at the CLI / server boundary.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "mlkv/error.h"  // mlkv::Error: a failure the user can act on (public)

namespace mlkv {

// Concatenates any streamable values into one string: cat("layer ", 3, " has ", 2.5).
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

// Throws mlkv::FileError: a file that cannot be found or accessed. fail_missing: it does not exist.
template <typename... Args>
[[noreturn]] void fail_file(const Args&... args) {
  throw FileError(cat(args...), false);
}
template <typename... Args>
[[noreturn]] void fail_missing(const Args&... args) {
  throw FileError(cat(args...), true);
}
// The FileError of a failed system call on path (errno): not_found for ENOENT.
[[noreturn]] void fail_errno(const char* what, const std::string& path, int err);

[[noreturn]] inline void check_failed(const char* file, int line, const char* cond) {
  std::fprintf(stderr, "mlkv: internal check failed at %s:%d: %s\n", file, line, cond);
  std::abort();
}

}  // namespace mlkv

#define MLKV_CHECK(cond)                                              \
  do {                                                                \
    if (!(cond)) ::mlkv::check_failed(__FILE__, __LINE__, #cond);     \
  } while (0)

// Throws mlkv::Error with the remaining arguments concatenated when cond is false.
#define MLKV_REQUIRE(cond, ...)                    \
  do {                                             \
    if (!(cond)) ::mlkv::fail(__VA_ARGS__);        \
  } while (0)
