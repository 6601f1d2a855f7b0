// Helpers for the tokenizer tests: paths of the shared data and fixtures, temp folders.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>

namespace mlkv::test {

inline std::string shared_path(const std::string& rel) {
  return std::string(MLKV_SHARED_DIR) + "/data/" + rel;
}
inline std::string fixture_path(const std::string& name) {
  return std::string(MLKV_SOURCE_DIR) + "/tests/tokenizer/fixtures/" + name;
}
inline bool have_shared() { return std::filesystem::exists(shared_path("tokenizers")); }

#define MLKV_REQUIRE_SHARED()                                                  \
  do {                                                                         \
    if (!::mlkv::test::have_shared()) GTEST_SKIP() << "shared data missing: " << MLKV_SHARED_DIR; \
  } while (0)

// A fresh empty folder under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("mlkv_tok_test_" + std::to_string(rd()) + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace mlkv::test
