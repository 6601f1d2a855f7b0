// The spellings of the run-time element types, shared by the command line and the public API:
// "f32" / "f16" for the KV cache and for the in-memory projection weights. `what` names the
// option or field in the error ("--cache-type", "cache_type").
#pragma once

#include <string>

#include "core/tensor.h"
#include "model/model.h"

namespace mlkv {

// Throws mlkv::Error "<what> must be f32 or f16 (got '<s>')".
DType parse_cache_type(const std::string& s, const std::string& what);
WeightType parse_weight_type(const std::string& s, const std::string& what);

}  // namespace mlkv
