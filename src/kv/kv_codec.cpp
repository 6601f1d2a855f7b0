#include "kv/kv_codec.h"

#include <utility>

#include "core/check.h"

namespace mlkv {

namespace {
constexpr const char* kHadamardSuffix = "+hadamard";
const KvCodec kCodecs[] = {{DType::kF32, "f32"},
                           {DType::kF16, "f16"},
                           {DType::kBF16, "bf16"},
                           {DType::kQ8_0, "q8_0"},
                           {DType::kQ4_0, "q4_0"}};

// The codec spelled `name`, or null.
const KvCodec* find_kv_codec(const std::string& name) {
  for (const KvCodec& c : kCodecs) {
    if (name == c.name) return &c;
  }
  return nullptr;
}
}  // namespace

const char* kv_codec_names() { return "f32, f16, bf16, q8_0, q4_0"; }

const KvCodec& kv_codec(DType dtype) {
  for (const KvCodec& c : kCodecs) {
    if (c.dtype == dtype) return c;
  }
  fail("KV cache elements must be one of ", kv_codec_names(), " (got ", dtype_name(dtype), ")");
}

const KvCodec& kv_codec(const std::string& name) {
  if (const KvCodec* c = find_kv_codec(name)) return *c;
  fail("KV cache type must be one of ", kv_codec_names(), " (got '", name, "')");
}

std::string KvCacheType::name() const {
  const std::string kn = std::string(kv_codec(k).name) + (k_hadamard ? kHadamardSuffix : "");
  return k == v ? kn : kn + "/" + kv_codec(v).name;
}

void KvCacheType::check_fits(int head_dim) const {
  for (DType t : {k, v}) {
    const KvCodec& c = kv_codec(t);
    MLKV_REQUIRE(c.fits(head_dim), "KV cache type ", c.name,
                 " stores blocks of 32 values along the head: it needs a head size that is a "
                 "multiple of 32 (this model's is ",
                 head_dim, ")");
  }
}

size_t KvCacheType::pair_bytes(int head_dim) const {
  check_fits(head_dim);
  return kv_codec(k).row_bytes(head_dim) + kv_codec(v).row_bytes(head_dim);
}

bool strip_hadamard_suffix(std::string* name) {
  const std::string suffix = kHadamardSuffix;
  if (name->size() <= suffix.size() ||
      name->compare(name->size() - suffix.size(), suffix.size(), suffix) != 0) {
    return false;
  }
  name->resize(name->size() - suffix.size());
  return true;
}

void check_hadamard(DType t, bool keys, const std::string& option) {
  MLKV_REQUIRE(keys, option, ": the Hadamard rotation (", kHadamardSuffix,
               ") applies to keys only (the KEYS of KEYS/VALUES, or --cache-type-k)");
  MLKV_REQUIRE(t == DType::kQ8_0 || t == DType::kQ4_0, option,
               ": the Hadamard rotation is for quantized keys (q8_0", kHadamardSuffix, " or q4_0",
               kHadamardSuffix, "), not ", kv_codec(t).name);
}

KvFormat parse_kv_format(std::string name, bool keys, const std::string& option,
                         const std::string& alternatives, const std::string& given) {
  const std::string as_given = given.empty() ? name : given;
  const bool rotated = strip_hadamard_suffix(&name);
  if (const KvCodec* c = find_kv_codec(name)) {
    if (rotated) check_hadamard(c->dtype, keys, option);
    return {c->dtype, rotated};
  }
  fail(option, " must be one of ", kv_codec_names(), " (q8_0 / q4_0 keys may add ", kHadamardSuffix,
       ")", alternatives, " (got '", as_given, "')");
}

KvCacheType parse_kv_cache_type(const std::string& both, const std::string& k,
                                const std::string& v) {
  const KvFormat base = both.empty() ? KvFormat() : parse_kv_format(both, true, "--cache-type");
  const KvFormat kt = k.empty() ? base : parse_kv_format(k, true, "--cache-type-k");
  const DType vt = v.empty() ? base.dtype : parse_kv_format(v, false, "--cache-type-v").dtype;
  return {kt.dtype, vt, kt.hadamard};
}

}  // namespace mlkv
