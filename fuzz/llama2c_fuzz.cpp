// libFuzzer target: the llama2.c checkpoint importer (io/llama2c.h) on arbitrary bytes. Anything
// but success or mlkv::Error is a bug. A file that imports gives a valid config and weights of
// the config's shapes, the embedding being the file's first values.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/check.h"
#include "io/llama2c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string kName = "fuzz.bin";
  try {
    const mlkv::LoadedModel m = mlkv::load_llama2c(data, size, kName);
    m.config.validate();
    const mlkv::Tensor& e = m.weights.tok_embd;
    if (e.dim(0) != m.config.n_vocab || e.dim(1) != m.config.n_embd) std::abort();
    if (std::memcmp(e.data(), data + 28, static_cast<size_t>(e.numel()) * 4) != 0) std::abort();
    if (m.config.tied_embeddings != m.weights.output.empty()) std::abort();
  } catch (const mlkv::Error&) {
  }
  return 0;
}
