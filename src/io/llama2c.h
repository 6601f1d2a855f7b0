// Import of llama2.c's legacy checkpoint format (.bin): a header of 7 int32 (dim, hidden_dim,
// n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a positive vocab_size means the output
// matrix is the token embedding) followed by f32 tensors in llama2.c order. llama2.c rotates
// adjacent pairs (2i, 2i+1); mlkv, like HF Llama, rotates halves (i, i + d/2), so the rows of wq
// and wk are permuted per head on import (an exact relabelling: the model's function is unchanged).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "io/hf_model.h"

namespace mlkv {

// Throws mlkv::Error for an implausible header or a file shorter than the header says.
LoadedModel load_llama2c(const std::string& path);
// The same from an image of the file in memory; `path` names it in errors.
LoadedModel load_llama2c(const uint8_t* data, size_t size, const std::string& path);

}  // namespace mlkv
