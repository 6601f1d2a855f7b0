// AtomicDirWriter (core/atomic_dir.h): the destination appears whole on commit, replaces an
// earlier folder in one step, is untouched when the writer is abandoned, and temporary folders of
// dead processes are cleaned up by the next writer.
#include "core/atomic_dir.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace mlkv {
namespace {

namespace fs = std::filesystem;

struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("mlkv_atomic_dir_" + std::to_string(::getpid()));
  Scratch() {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Scratch() { fs::remove_all(dir); }
  size_t entries() const {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    return n;
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(AtomicDir, AppearsOnCommitAndReplacesWhole) {
  Scratch s;
  const fs::path dst = s.dir / "out";
  {
    AtomicDirWriter w((dst / "").string());  // a trailing slash names the same folder
    EXPECT_EQ(w.destination(), dst.string());
    std::ofstream(fs::path(w.path()) / "a.txt") << "first";
    std::ofstream(fs::path(w.path()) / "old_only.txt") << "x";
    EXPECT_FALSE(fs::exists(dst));  // nothing before commit
    w.commit();
  }
  EXPECT_EQ(slurp(dst / "a.txt"), "first");
  {
    AtomicDirWriter w(dst.string());
    std::ofstream(fs::path(w.path()) / "a.txt") << "second";
    EXPECT_EQ(slurp(dst / "a.txt"), "first");  // the old folder stays until commit
    w.commit();
  }
  EXPECT_EQ(slurp(dst / "a.txt"), "second");
  EXPECT_FALSE(fs::exists(dst / "old_only.txt"));  // replaced whole, not merged
  EXPECT_EQ(s.entries(), 1u);                      // no temporary folder left
}

TEST(AtomicDir, AbandonedWriterLeavesNothingAndStaleTemporariesAreRemoved) {
  Scratch s;
  const fs::path dst = s.dir / "out";
  {
    AtomicDirWriter w(dst.string());
    std::ofstream(fs::path(w.path()) / "a.txt") << "never committed";
  }
  EXPECT_EQ(s.entries(), 0u);
  // A temporary folder of a process that does not run (pid 2^22 + 1: Linux's pids are at most
  // 2^22) is removed; another destination's is left alone.
  fs::create_directories(s.dir / ".out.tmp.4194305");
  fs::create_directories(s.dir / ".other.tmp.4194305");
  {
    AtomicDirWriter w(dst.string());
    EXPECT_FALSE(fs::exists(s.dir / ".out.tmp.4194305"));
    EXPECT_TRUE(fs::exists(s.dir / ".other.tmp.4194305"));  // another destination's
    EXPECT_TRUE(fs::exists(w.path()));
  }
}

}  // namespace
}  // namespace mlkv
