#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/check.h"
#include "core/half.h"

namespace mlkv {

using json = nlohmann::json;

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorEntry::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {

// Upper bound on the JSON header: real headers are well under a few MB even for huge models (the
// reference reader's limit too).
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

std::string span_str(uint64_t begin, uint64_t end) {
  return cat("[", begin, ", ", end, ")");
}

// The reference reader's layout rule: sorted by offset, the tensors tile the data buffer exactly -
// each starts where the previous one ended, the first at 0, the last at the end of the buffer.
// So no two tensors share a byte (an output head aliasing the embedding, say) and no byte is
// unaccounted for.
void check_tiling(const std::map<std::string, TensorEntry>& tensors, const uint8_t* buffer,
                  uint64_t buffer_size, const std::string& path) {
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  spans.reserve(tensors.size());
  for (const auto& [name, e] : tensors) {
    const auto begin = static_cast<uint64_t>(e.data - buffer);
    spans.push_back({begin, begin + e.n_bytes, &name});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    return a.end != b.end ? a.end < b.end : *a.name < *b.name;  // names: deterministic messages
  });
  uint64_t at = 0;
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    if (s.begin < at) {
      fail("'", path, "': tensors '", *prev->name, "' (bytes ", span_str(prev->begin, prev->end),
           ") and '", *s.name, "' (bytes ", span_str(s.begin, s.end),
           ") overlap in the data buffer: every byte must belong to one tensor");
    }
    MLKV_REQUIRE(s.begin == at, "'", path, "': bytes ", span_str(at, s.begin),
                 " of the data buffer belong to no tensor (a hole ",
                 prev != nullptr ? cat("between '", *prev->name, "' and '") : std::string("before '"),
                 *s.name, "'): the tensors must tile the buffer exactly");
    at = s.end;
    prev = &s;
  }
  MLKV_REQUIRE(at == buffer_size, "'", path, "': bytes ", span_str(at, buffer_size),
               " of the data buffer belong to no tensor (",
               prev != nullptr ? cat("after '", *prev->name, "'") : std::string("the file has no tensors"),
               "): the tensors must tile the buffer exactly");
}

}  // namespace

SafeTensorsLayout parse_safetensors(const uint8_t* base, size_t size, const std::string& path) {
  MLKV_REQUIRE(size >= 8, "'", path, "' is not a safetensors file: only ", size,
               " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian host (x86_64)
  MLKV_REQUIRE(header_len <= kMaxHeaderBytes, "'", path, "': header length ", header_len,
               " is implausible (corrupt or not a safetensors file)");
  MLKV_REQUIRE(header_len <= size - 8, "'", path, "' is truncated: header says ", header_len,
               " bytes of JSON but the file has only ", size - 8, " after the length field");
  json header;
  try {
    header = json::parse(base + 8, base + 8 + header_len);
  } catch (const json::exception& e) {
    fail("'", path, "': header is not valid JSON: ", e.what());
  }
  MLKV_REQUIRE(header.is_object(), "'", path, "': header is not a JSON object");
  const uint8_t* buffer = base + 8 + header_len;
  const uint64_t buffer_size = size - 8 - header_len;

  SafeTensorsLayout out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      // null is "no metadata", as the reference reader has it (an optional map).
      if (it.value().is_null()) continue;
      MLKV_REQUIRE(it.value().is_object(), "'", path, "': __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        MLKV_REQUIRE(m.value().is_string(), "'", path, "': __metadata__ value for '", m.key(),
                     "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string& name = it.key();
    const json& v = it.value();
    MLKV_REQUIRE(v.is_object() && v.contains("dtype") && v.contains("shape") &&
                     v.contains("data_offsets"),
                 "'", path, "': tensor '", name, "' lacks dtype, shape or data_offsets");
    TensorEntry e;
    e.name = name;
    e.file = &path;
    MLKV_REQUIRE(v["dtype"].is_string(), "'", path, "': tensor '", name, "' dtype is not a string");
    const std::string dt = v["dtype"].get<std::string>();
    MLKV_REQUIRE(dtype_from_name(dt, &e.dtype), "'", path, "': tensor '", name,
                 "' has unknown dtype '", dt, "' (supported: F32, F16, BF16, F64, I32, I64, U8)");
    MLKV_REQUIRE(v["shape"].is_array(), "'", path, "': tensor '", name, "' shape is not a list");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      MLKV_REQUIRE(d.is_number_integer() && d.get<int64_t>() >= 0, "'", path, "': tensor '", name,
                   "' has a bad dimension in its shape");
      const auto dim = d.get<uint64_t>();
      MLKV_REQUIRE(dim == 0 || numel <= (uint64_t{1} << 48) / dim, "'", path, "': tensor '",
                   name, "' shape is implausibly large");
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const json& off = v["data_offsets"];
    MLKV_REQUIRE(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                     off[1].is_number_unsigned(),
                 "'", path, "': tensor '", name, "' data_offsets is not a pair of offsets");
    const auto begin = off[0].get<uint64_t>();
    const auto end = off[1].get<uint64_t>();
    MLKV_REQUIRE(begin <= end && end <= buffer_size, "'", path, "': tensor '", name,
                 "' data_offsets [", begin, ", ", end, "] lie outside the data buffer (",
                 buffer_size, " bytes): the file is truncated or its header is corrupt");
    const uint64_t expected = numel * dtype_size(e.dtype);
    MLKV_REQUIRE(end - begin == expected, "'", path, "': tensor '", name, "' data_offsets span ",
                 end - begin, " bytes but shape ", e.shape_str(), " of ", dt, " needs ", expected);
    e.data = buffer + begin;
    e.n_bytes = end - begin;
    out.tensors.emplace(name, std::move(e));
  }
  check_tiling(out.tensors, buffer, buffer_size, path);
  return out;
}

SafeTensorsFile::SafeTensorsFile(const std::string& path) : file_(path) {
  SafeTensorsLayout layout = parse_safetensors(file_.data(), file_.size(), file_.path());
  tensors_ = std::move(layout.tensors);
  metadata_ = std::move(layout.metadata);
}

const TensorEntry* SafeTensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

SafeTensorsSet SafeTensorsSet::open_file(const std::string& path) {
  SafeTensorsSet set;
  set.files_.push_back(std::make_unique<SafeTensorsFile>(path));
  return set;
}

SafeTensorsSet SafeTensorsSet::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  SafeTensorsSet set;
  if (fs::exists(single)) {
    set.files_.push_back(std::make_unique<SafeTensorsFile>(single.string()));
    return set;
  }
  if (!fs::exists(index))
    fail_missing("no model.safetensors or model.safetensors.index.json in '", dir, "'");
  json j;
  try {
    j = json::parse(read_text_file(index.string()));
  } catch (const json::exception& e) {
    fail("'", index.string(), "' is not valid JSON: ", e.what());
  }
  MLKV_REQUIRE(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), "'",
               index.string(), "' has no weight_map object");
  std::set<std::string> shards;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    MLKV_REQUIRE(it.value().is_string(), "'", index.string(), "': weight_map entry for '",
                 it.key(), "' is not a file name");
    const std::string shard = it.value().get<std::string>();
    MLKV_REQUIRE(shard.find('/') == std::string::npos && shard != ".." && !shard.empty(), "'",
                 index.string(), "': shard name '", shard, "' is not a plain file name");
    shards.insert(shard);
  }
  for (const auto& s : shards) {
    set.files_.push_back(std::make_unique<SafeTensorsFile>((fs::path(dir) / s).string()));
  }
  // Every tensor the index names must be in the shard it names.
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    MLKV_REQUIRE(set.find(it.key()) != nullptr, "'", index.string(), "' names tensor '", it.key(),
                 "' in shard '", it.value().get<std::string>(), "' but that shard lacks it");
  }
  return set;
}

const TensorEntry* SafeTensorsSet::find(const std::string& name) const {
  for (const auto& f : files_) {
    if (const TensorEntry* e = f->find(name)) return e;
  }
  return nullptr;
}

std::vector<std::string> SafeTensorsSet::names() const {
  std::vector<std::string> out;
  for (const auto& f : files_) {
    for (const auto& kv : f->tensors()) out.push_back(kv.first);
  }
  return out;
}

std::map<std::string, std::string> SafeTensorsSet::metadata() const {
  std::map<std::string, std::string> out;
  for (const auto& f : files_) out.insert(f->metadata().begin(), f->metadata().end());
  return out;
}

void entry_to_f32(const TensorEntry& e, float* dst) {
  const size_t n = static_cast<size_t>(e.numel());
  switch (e.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(dst, e.data, n * 4);  // an empty tensor's dst may be null
      return;
    case DType::kF16:
    case DType::kBF16: {
      // The mapped data may be unaligned for uint16_t access; copy through a small buffer.
      constexpr size_t kChunk = 4096;
      uint16_t tmp[kChunk];
      for (size_t i = 0; i < n; i += kChunk) {
        const size_t m = std::min(kChunk, n - i);
        std::memcpy(tmp, e.data + i * 2, m * 2);
        if (e.dtype == DType::kF16) {
          f16_to_f32_n(tmp, dst + i, m);
        } else {
          bf16_to_f32_n(tmp, dst + i, m);
        }
      }
      return;
    }
    case DType::kF64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, e.data + i * 8, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    default:
      fail("tensor '", e.name, "' in '", *e.file, "' has dtype ", dtype_name(e.dtype),
           ", which is not a floating-point type");
  }
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    MLKV_CHECK(t.dtype == DType::kF32 || t.dtype == DType::kF16 || t.dtype == DType::kBF16);
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    const uint64_t n_bytes = numel * dtype_size(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + n_bytes}}};
    offset += n_bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data buffer 8-byte aligned
  const uint64_t header_len = text.size();

  AtomicFileWriter w(path);
  w.write(&header_len, 8);
  w.write(text.data(), text.size());
  std::vector<uint16_t> half;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    if (t.dtype == DType::kF32) {
      w.write(t.data, numel * 4);
      continue;
    }
    constexpr size_t kChunk = size_t{1} << 16;
    half.resize(kChunk);
    for (uint64_t i = 0; i < numel; i += kChunk) {
      const size_t m = static_cast<size_t>(std::min<uint64_t>(kChunk, numel - i));
      if (t.dtype == DType::kF16) {
        f32_to_f16_n(t.data + i, half.data(), m);
      } else {
        f32_to_bf16_n(t.data + i, half.data(), m);
      }
      w.write(half.data(), m * 2);
    }
  }
  w.commit();
}

}  // namespace mlkv
