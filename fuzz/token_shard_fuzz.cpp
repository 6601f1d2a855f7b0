// libFuzzer target: the token shard header parser and reader on arbitrary bytes. Anything but
// success or mlkv::Error is a bug; a shard that parses must be readable to its last token.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/check.h"
#include "io/token_shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    mlkv::TokenShardView shard(data, size, "fuzz.bin");
    std::vector<int32_t> buf(64);
    uint64_t n = shard.n_tokens();
    for (uint64_t start = 0; start < n; start += buf.size()) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(buf.size(), n - start));
      shard.read(start, k, buf.data());
    }
    if (n > 0 && shard.at(n - 1) != static_cast<uint32_t>(buf[(n - 1) % buf.size()])) std::abort();
    try {
      shard.read(n, 1, buf.data());  // one past the end must be an error
      std::abort();
    } catch (const mlkv::Error&) {
    }
    shard.validate_tokens();
  } catch (const mlkv::Error&) {
  }
  return 0;
}
