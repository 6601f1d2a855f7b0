// Element formats of the KV cache ("codecs"): how one position's head_dim values of one KV head
// are stored. f32, f16, bf16, and the block-quantized q8_0 and q4_0 (core/quant.h: 32 values with
// one f16 scale per block along head_dim, llama.cpp's layouts). Keys and values may use different
// formats (KvCacheType). The conversions are the backend's (ops::kv_store writes rows, the
// attention ops read them); this file owns the names, the sizes and which head sizes a format can
// hold.
#pragma once

#include <cstddef>
#include <string>

#include "core/tensor.h"

namespace mlkv {

struct KvCodec {
  DType dtype;       // F32, F16, BF16, Q8_0 or Q4_0
  const char* name;  // "f32", "f16", "bf16", "q8_0", "q4_0": the --cache-type spelling
  // Bytes of one row of head_dim values (element bytes + scales where the format has them).
  size_t row_bytes(int head_dim) const { return dtype_row_bytes(dtype, head_dim); }
  // Whether rows of head_dim values fit the format (blocks of 32 for q8_0 / q4_0).
  bool fits(int head_dim) const { return head_dim % dtype_block_values(dtype) == 0; }
};

// The codec of a cache element type; throws mlkv::Error for one the cache cannot store.
const KvCodec& kv_codec(DType dtype);
// The codec named by a --cache-type value; throws mlkv::Error listing the names.
const KvCodec& kv_codec(const std::string& name);
// "f32, f16, bf16, q8_0, q4_0"
const char* kv_codec_names();

// The formats of a cache's keys and of its values (--cache-type-k / --cache-type-v); one DType
// gives both. k_hadamard: q8_0 / q4_0 keys are stored rotated by core/quant.h's hadamard32 (the
// "+hadamard" suffix of a key type, "q4_0+hadamard"); the CPU attention rotates the query to match.
struct KvCacheType {
  DType k = DType::kF32, v = DType::kF32;
  bool k_hadamard = false;
  KvCacheType() = default;
  KvCacheType(DType both) : k(both), v(both) {}  // NOLINT: implicit on purpose
  KvCacheType(DType k_, DType v_, bool k_hadamard_ = false) : k(k_), v(v_), k_hadamard(k_hadamard_) {}
  bool operator==(const KvCacheType& o) const {
    return k == o.k && v == o.v && k_hadamard == o.k_hadamard;
  }
  // As parse_cache_type reads it back: "f16", "q8_0/f16" when keys and values differ,
  // "q4_0+hadamard" with rotated keys ("q4_0+hadamard/f16").
  std::string name() const;
  // Bytes of one position of one KV head, K and V: row_bytes(k) + row_bytes(v).
  // Throws mlkv::Error when a block format does not divide head_dim.
  size_t pair_bytes(int head_dim) const;
  void check_fits(int head_dim) const;
};

// Parses --cache-type style values: "f16" for both, or the two of --cache-type-k / -v (empty:
// the other's, or f32). "q8_0+hadamard" / "q4_0+hadamard" in --cache-type or --cache-type-k rotate
// the keys (only keys, and only of those two formats). Throws mlkv::Error naming the option and the
// valid names.
// Removes a trailing "+hadamard" from a key type's name; true when there was one.
bool strip_hadamard_suffix(std::string* name);
// Throws mlkv::Error (naming option) unless a Hadamard rotation may apply: to keys (keys true) of
// q8_0 or q4_0.
void check_hadamard(DType t, bool keys, const std::string& option);

KvCacheType parse_kv_cache_type(const std::string& both, const std::string& k = "",
                                const std::string& v = "");

// One format name as the options take it: a codec's name, keys (keys true) of q8_0 / q4_0 may add
// "+hadamard". Returns the format and whether the keys are rotated. Throws mlkv::Error naming
// option: "OPTION must be one of NAMES (q8_0 / q4_0 keys may add +hadamard)ALTERNATIVES (got
// 'GIVEN')", where given is the value as the user wrote it (default: name) and alternatives what
// else the option takes (", or KEYS/VALUES ..."), or check_hadamard's error.
struct KvFormat {
  DType dtype = DType::kF32;
  bool hadamard = false;
};
KvFormat parse_kv_format(std::string name, bool keys, const std::string& option,
                         const std::string& alternatives = "", const std::string& given = "");

}  // namespace mlkv
