// How a next token is picked from the logits: greedy (temperature 0) or temperature + top-k +
// top-p (nucleus) sampling with a seeded RNG per sequence, so a seed reproduces the same tokens
// whatever else runs in the same batch. What this is not: the sampler itself (src/sampling).
#pragma once

#include <cstdint>

namespace mlkv {

struct SamplerParams {
  float temperature = 0.0f;  // >= 0; 0: greedy (argmax, first index on ties)
  int top_k = 0;             // >= 0; keep the k most likely tokens; 0: no cut
  float top_p = 1.0f;        // in (0, 1]; keep the smallest set holding this probability mass
  uint64_t seed = 0;         // RNG seed of the sequence
};
// Out-of-range values are reported as mlkv::Error when a request is submitted
// ("top-p must be in (0, 1] (got 1.5)").

}  // namespace mlkv
