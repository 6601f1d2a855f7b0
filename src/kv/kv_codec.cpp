#include "kv/kv_codec.h"

#include "core/check.h"

namespace mlkv {

namespace {
const KvCodec kCodecs[] = {{DType::kF32, "f32"},
                           {DType::kF16, "f16"},
                           {DType::kBF16, "bf16"},
                           {DType::kQ8_0, "q8_0"},
                           {DType::kQ4_0, "q4_0"}};
}  // namespace

const char* kv_codec_names() { return "f32, f16, bf16, q8_0, q4_0"; }

const KvCodec& kv_codec(DType dtype) {
  for (const KvCodec& c : kCodecs) {
    if (c.dtype == dtype) return c;
  }
  fail("KV cache elements must be one of ", kv_codec_names(), " (got ", dtype_name(dtype), ")");
}

const KvCodec& kv_codec(const std::string& name) {
  for (const KvCodec& c : kCodecs) {
    if (name == c.name) return c;
  }
  fail("KV cache type must be one of ", kv_codec_names(), " (got '", name, "')");
}

std::string KvCacheType::name() const {
  if (k == v) return kv_codec(k).name;
  return std::string("k ") + kv_codec(k).name + " / v " + kv_codec(v).name;
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

KvCacheType parse_kv_cache_type(const std::string& both, const std::string& k,
                                const std::string& v) {
  auto one = [](const std::string& s, const char* option) {
    for (const KvCodec& c : kCodecs) {
      if (s == c.name) return c.dtype;
    }
    fail(option, " must be one of ", kv_codec_names(), " (got '", s, "')");
  };
  const DType base = both.empty() ? DType::kF32 : one(both, "--cache-type");
  return {k.empty() ? base : one(k, "--cache-type-k"), v.empty() ? base : one(v, "--cache-type-v")};
}

}  // namespace mlkv
