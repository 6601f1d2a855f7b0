#include "runtime/options.h"

#include "kernels/backend.h"

#include "core/check.h"

namespace mlkv {

KvCacheType parse_cache_type(const std::string& s, const std::string& what) {
  const size_t slash = s.find('/');
  // One format; keys: whether it names the keys' (a "+hadamard" suffix is theirs alone).
  auto one = [&](const std::string& t, bool keys) {
    return parse_kv_format(t, keys, what, ", or KEYS/VALUES such as q8_0/f16", s);
  };
  if (slash == std::string::npos) {
    const KvFormat f = one(s, true);
    return KvCacheType(f.dtype, f.dtype, f.hadamard);
  }
  const KvFormat k = one(s.substr(0, slash), true);
  return KvCacheType(k.dtype, one(s.substr(slash + 1), false).dtype, k.hadamard);
}

std::string cache_type_arg(const std::string& both, const std::string& k, const std::string& v) {
  KvCacheType t = both.empty() ? KvCacheType() : parse_cache_type(both, "--cache-type");
  // -k and -v name one format each: a KEYS/VALUES pair there would lose one half.
  for (const auto& [arg, opt] : {std::pair{&k, "--cache-type-k"}, std::pair{&v, "--cache-type-v"}}) {
    MLKV_REQUIRE(arg->find('/') == std::string::npos, opt, " takes one format (got '", *arg,
                 "'); a KEYS/VALUES pair goes in --cache-type");
  }
  // One format each: kv_codec's parser knows which half may carry the rotation.
  if (!k.empty()) {
    const KvCacheType kt = parse_kv_cache_type("", k, "");
    t.k = kt.k;
    t.k_hadamard = kt.k_hadamard;
  }
  if (!v.empty()) t.v = parse_kv_cache_type("", "", v).v;
  return t.name();
}

WeightType parse_weight_type(const std::string& s, const std::string& what) {
  if (s == "f32") return WeightType::kF32;
  if (s == "f16") return WeightType::kF16;
  if (s == "bf16") return WeightType::kBF16;
  if (s == "q8_0") return WeightType::kQ8_0;
  fail(what, " must be f32, f16, bf16 or q8_0 (got '", s, "')");
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
