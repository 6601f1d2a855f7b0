#include "runtime/options.h"

#include "kernels/backend.h"

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
  if (s == "bf16") return WeightType::kBF16;
  fail(what, " must be f32, f16 or bf16 (got '", s, "')");
}

Device parse_device_option(const std::string& s, const std::string& what) {
  Device d = Device::kCpu;
  int index = 0;
  try {
    d = parse_device(s, &index);
  } catch (const Error&) {
    fail(what, " must be cpu, cuda or cuda:N (got '", s, "')");
  }
  MLKV_REQUIRE(has_backend(d), what, " '", s,
               "' is not available: this build has no CUDA backend (build with -DMLKV_CUDA=ON)");
  set_device_index(d, index);
  backend<float>(d);  // starts it (finds the GPU, registers its allocator) or says why it cannot
  return d;
}

}  // namespace mlkv
