// libFuzzer target: the safetensors header and layout validation (io/safetensors.h) on arbitrary
// bytes. Anything but success or mlkv::Error is a bug. A file that parses must keep the format's
// promises: every tensor inside the data buffer, the tensors tiling it exactly (sizes summing to
// the buffer, no two overlapping), each tensor's bytes matching its shape and dtype, and every
// floating-point tensor readable to its last element.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/check.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string kName = "fuzz.safetensors";
  mlkv::SafeTensorsLayout layout;
  try {
    layout = mlkv::parse_safetensors(data, size, kName);
  } catch (const mlkv::Error&) {
    return 0;
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, data, 8);
  const uint8_t* buffer = data + 8 + header_len;
  const uint64_t buffer_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  uint64_t total = 0;
  std::vector<float> values;
  for (const auto& [name, e] : layout.tensors) {
    if (e.data < buffer || e.data + e.n_bytes > buffer + buffer_size) std::abort();
    if (static_cast<uint64_t>(e.numel()) * mlkv::dtype_size(e.dtype) != e.n_bytes) std::abort();
    spans.emplace_back(static_cast<uint64_t>(e.data - buffer), e.n_bytes);
    total += e.n_bytes;
    const bool is_float = e.dtype == mlkv::DType::kF32 || e.dtype == mlkv::DType::kF16 ||
                          e.dtype == mlkv::DType::kBF16 || e.dtype == mlkv::DType::kF64;
    if (is_float) {
      values.resize(static_cast<size_t>(e.numel()));
      mlkv::entry_to_f32(e, values.data());
    } else {
      try {
        mlkv::entry_to_f32(e, values.data());  // integer tensors: an error, never a read
        std::abort();
      } catch (const mlkv::Error&) {
      }
    }
  }
  if (total != buffer_size) std::abort();
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].first + spans[i - 1].second) std::abort();
  }
  return 0;
}
