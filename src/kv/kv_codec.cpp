#include "kv/kv_codec.h"

#include "core/check.h"

namespace mlkv {

namespace {
const KvCodec kCodecs[] = {{DType::kF32, "f32"}, {DType::kF16, "f16"}};
}  // namespace

const KvCodec& kv_codec(DType dtype) {
  for (const KvCodec& c : kCodecs) {
    if (c.dtype == dtype) return c;
  }
  fail("KV cache elements must be f32 or f16 (got ", dtype_name(dtype), ")");
}

const KvCodec& kv_codec(const std::string& name) {
  for (const KvCodec& c : kCodecs) {
    if (name == c.name) return c;
  }
  fail("KV cache type must be f32 or f16 (got '", name, "')");
}

}  // namespace mlkv
