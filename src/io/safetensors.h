// Safetensors: reader (memory-mapped, every header field validated against the file) and writer
// (atomic, converts f32 tensors to the requested file dtype). Sharded checkpoints
// (model.safetensors.index.json) are read through SafeTensorsSet.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data buffer; offsets are relative to the buffer start.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mmap_file.h"
#include "core/tensor.h"

namespace mlkv {

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapped file
  size_t n_bytes = 0;
  const std::string* file = nullptr;

  int64_t numel() const;
  std::string shape_str() const;
};

// The validated contents of a safetensors image: tensors (pointing into the image) and metadata.
struct SafeTensorsLayout {
  std::map<std::string, TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
};

// Validates a safetensors image of `size` bytes at `data`: the header (length, JSON, every
// tensor's dtype, shape and offsets, metadata strings; "__metadata__": null counts as none) and
// the layout: the tensors must tile the data buffer exactly, as the reference reader requires -
// no two share a byte, none lies outside it, no byte is left over. Throws mlkv::Error naming
// `path` and the tensors. The entries point into `data` and at `path`, which must outlive them.
SafeTensorsLayout parse_safetensors(const uint8_t* data, size_t size, const std::string& path);

class SafeTensorsFile {
 public:
  // Maps and validates the file (parse_safetensors); throws mlkv::Error naming the file and the
  // problem.
  explicit SafeTensorsFile(const std::string& path);

  const TensorEntry* find(const std::string& name) const;
  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  std::map<std::string, TensorEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One or more safetensors files seen as one name space.
class SafeTensorsSet {
 public:
  // dir/model.safetensors, or every shard named in dir/model.safetensors.index.json.
  static SafeTensorsSet open_dir(const std::string& dir);
  static SafeTensorsSet open_file(const std::string& path);

  const TensorEntry* find(const std::string& name) const;
  std::vector<std::string> names() const;
  std::map<std::string, std::string> metadata() const;  // merged from all files

 private:
  std::vector<std::unique_ptr<SafeTensorsFile>> files_;
};

// Copies a tensor of any float dtype into f32 (dst has entry.numel() elements).
void entry_to_f32(const TensorEntry& entry, float* dst);

// A tensor to write: f32 data converted to `dtype` (F32, F16 or BF16) on the way out.
struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  DType dtype = DType::kF32;
};

// Writes a safetensors file atomically (temp file, fsync, rename).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mlkv
