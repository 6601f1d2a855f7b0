#include "runtime/options.h"

#include "core/check.h"

namespace mlkv {

DType parse_cache_type(const std::string& s, const std::string& what) {
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  fail(what, " must be f32 or f16 (got '", s, "')");
}

WeightType parse_weight_type(const std::string& s, const std::string& what) {
  if (s == "f32") return WeightType::kF32;
  if (s == "f16") return WeightType::kF16;
  fail(what, " must be f32 or f16 (got '", s, "')");
}

}  // namespace mlkv
