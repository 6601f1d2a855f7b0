// Folders written atomically (atomic_dir.h).
#include "core/atomic_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/check.h"

namespace mlkv {

namespace fs = std::filesystem;

namespace {

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) fail_file("cannot open '", p.string(), "' to sync it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) fail_file("cannot fsync '", p.string(), "': ", std::strerror(err));
}

// True for ".<name>.<kind>.<pid>" where no process <pid> runs any more.
bool is_stale_sibling(const std::string& entry, const std::string& name, const char* kind) {
  const std::string prefix = "." + name + "." + kind + ".";
  if (entry.size() <= prefix.size() || entry.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string pid = entry.substr(prefix.size());
  if (pid.find_first_not_of("0123456789") != std::string::npos || pid.size() > 9) return false;
  return ::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH;
}

}  // namespace

AtomicDirWriter::AtomicDirWriter(const std::string& dst) {
  MLKV_REQUIRE(!dst.empty(), "the output folder path is empty");
  fs::path d = fs::absolute(dst).lexically_normal();
  if (!d.has_filename()) d = d.parent_path();  // "out/" -> "out"
  dst_ = d.string();
  const fs::path parent = d.parent_path();
  const std::string name = d.filename().string();
  fs::create_directories(parent);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string entry = e.path().filename().string();
    if (is_stale_sibling(entry, name, "tmp") || is_stale_sibling(entry, name, "old"))
      fs::remove_all(e.path(), ec);
  }
  tmp_ = (parent / cat(".", name, ".tmp.", ::getpid())).string();
  fs::remove_all(tmp_);
  fs::create_directory(tmp_);
}

AtomicDirWriter::~AtomicDirWriter() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

void AtomicDirWriter::commit() {
  MLKV_CHECK(!committed_);
  for (const auto& e : fs::recursive_directory_iterator(tmp_)) {
    if (e.is_regular_file()) fsync_path(e.path(), false);
  }
  fsync_path(tmp_, true);
  std::error_code ec;
  if (!fs::exists(dst_, ec)) {
    if (::rename(tmp_.c_str(), dst_.c_str()) != 0)
      fail_file("cannot rename '", tmp_, "' to '", dst_, "': ", std::strerror(errno));
  } else {
    MLKV_REQUIRE(fs::is_directory(dst_, ec), "'", dst_, "' exists and is not a folder");
    // Swap the new folder in; the old one ends up under the temporary name.
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, dst_.c_str(), RENAME_EXCHANGE) != 0) {
      if (errno != EINVAL && errno != ENOSYS)
        fail_file("cannot move '", tmp_, "' to '", dst_, "': ", std::strerror(errno));
      // A filesystem without RENAME_EXCHANGE: two renames, with a moment without dst.
      const fs::path old = fs::path(dst_).parent_path() /
                           cat(".", fs::path(dst_).filename().string(), ".old.", ::getpid());
      fs::remove_all(old, ec);
      if (::rename(dst_.c_str(), old.c_str()) != 0 || ::rename(tmp_.c_str(), dst_.c_str()) != 0)
        fail_file("cannot replace '", dst_, "': ", std::strerror(errno));
      fs::remove_all(old, ec);
    }
  }
  committed_ = true;
  fsync_path(fs::path(dst_).parent_path(), true);
  fs::remove_all(tmp_, ec);  // the previous folder, after an exchange
}

}  // namespace mlkv
