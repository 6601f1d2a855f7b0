#include "runtime/options.h"

#include "core/check.h"

namespace mlkv {

KvCacheType parse_cache_type(const std::string& s, const std::string& what) {
  try {
    return kv_codec(s).dtype;
  } catch (const Error&) {
    fail(what, " must be one of ", kv_codec_names(), " (got '", s, "')");
  }
}

WeightType parse_weight_type(const std::string& s, const std::string& what) {
  if (s == "f32") return WeightType::kF32;
  if (s == "f16") return WeightType::kF16;
  fail(what, " must be f32 or f16 (got '", s, "')");
}

}  // namespace mlkv
