// Read-only memory mapping of a whole file (checkpoints, token shards). Throws mlkv::Error naming
// the path when the file cannot be opened or mapped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace mlkv {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes a file atomically: the bytes go to "<path>.tmp.<pid>", are fsync'ed, then renamed over
// path, and the directory is fsync'ed. A crash at any point leaves either the old or the new file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();  // removes the temporary file unless commit() succeeded
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  void commit();

 private:
  std::string path_, tmp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Reads a whole (small) file into a string; throws mlkv::Error naming the path on failure.
std::string read_text_file(const std::string& path);
// Writes a small text file atomically.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace mlkv
