// The spellings of the run-time element types, shared by the command line and the public API:
// the KV cache's (f32, f16, bf16, q8_0, q4_0: kv/kv_codec.h) and the in-memory projection
// weights' (f32, f16, bf16, q8_0). `what` names the option or field in the error ("--cache-type",
// "cache_type").
#pragma once

#include <string>

#include "core/tensor.h"
#include "model/model.h"

namespace mlkv {

// A cache type: one format for keys and values ("q8_0"), or KEYS/VALUES ("q8_0/f16"); a key
// format of q8_0 / q4_0 may add "+hadamard" (KvCacheType::k_hadamard). Throws
// mlkv::Error "<what> must be one of f32, f16, bf16, q8_0, q4_0, or KEYS/VALUES ... (got '<s>')".
KvCacheType parse_cache_type(const std::string& s, const std::string& what);
// The cache type of --cache-type, --cache-type-k and --cache-type-v (each may be empty; the
// latter two override the first for keys or values), checked and spelled as parse_cache_type
// reads it: "f16", or "q8_0/f16" when keys and values differ.
std::string cache_type_arg(const std::string& both, const std::string& k, const std::string& v);
WeightType parse_weight_type(const std::string& s, const std::string& what);
// A --device value ("cpu", "cuda", "cuda:N"): parsed, checked against this build's backends and
// selected (the GPU index). Throws mlkv::Error naming `what` and the value otherwise.
Device parse_device_option(const std::string& s, const std::string& what);

}  // namespace mlkv
