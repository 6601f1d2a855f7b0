// A folder that appears whole or not at all (the folder counterpart of AtomicFileWriter in
// mmap_file.h), for commands whose output is several files: `mlkv convert` (a model folder) and
// `mlkv tokenize` (shards + meta.json).
//
// AtomicDirWriter creates a temporary sibling of the destination, ".<name>.tmp.<pid>"; the caller
// writes the files there; commit() fsyncs them and the folder, then moves the folder into place
// with one rename - renameat2(RENAME_EXCHANGE) when it replaces an existing folder, so there is no
// moment without a complete destination - and fsyncs the parent. A process killed at any point
// leaves the destination as it was (absent, or the previous folder) or complete, never half
// written. Temporary siblings left by killed processes (their pid no longer running) are removed
// by the next writer of the same destination.
//
// What it is not: a policy on what may be replaced; callers check the destination first.
#pragma once

#include <string>

namespace mlkv {

class AtomicDirWriter {
 public:
  // Creates the temporary folder next to dst (and dst's parent when missing).
  explicit AtomicDirWriter(const std::string& dst);
  ~AtomicDirWriter();  // removes the temporary folder unless commit() succeeded
  AtomicDirWriter(const AtomicDirWriter&) = delete;
  AtomicDirWriter& operator=(const AtomicDirWriter&) = delete;

  const std::string& path() const { return tmp_; }         // write the contents here
  const std::string& destination() const { return dst_; }  // absolute, normalised

  // Moves the folder into place, replacing an existing destination folder (removed afterwards).
  void commit();

 private:
  std::string dst_, tmp_;
  bool committed_ = false;
};

}  // namespace mlkv
