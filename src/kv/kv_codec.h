// Element formats of the KV cache ("codecs"): how one position's head_dim values of one KV head
// are stored. f32 and f16 now; block-quantized formats (a scale per block of values along
// head_dim) plug in here with their own row size. The conversions themselves are the backend's
// (ops::kv_store writes rows, the attention ops read them); this file owns the names and sizes.
#pragma once

#include <cstddef>
#include <string>

#include "core/tensor.h"

namespace mlkv {

struct KvCodec {
  DType dtype;       // F32 or F16
  const char* name;  // "f32", "f16": the --cache-type spelling
  // Bytes of one row of head_dim values (element bytes + scales where a format has them).
  size_t row_bytes(int head_dim) const { return static_cast<size_t>(head_dim) * dtype_size(dtype); }
};

// The codec of a cache element type; throws mlkv::Error for one the cache cannot store.
const KvCodec& kv_codec(DType dtype);
// The codec named by a --cache-type value ("f32", "f16"); throws mlkv::Error listing the names.
const KvCodec& kv_codec(const std::string& name);

}  // namespace mlkv
