// Measures the machine's DRAM read bandwidth the way decode uses it: all threads streaming a
// buffer much larger than the caches (several prefetched streams per thread), summing with AVX2. The figure is the bound batch-1 decode
// is compared against (weight bytes per token / bandwidth = best possible seconds per token).
#pragma once

#include <cstddef>

namespace mlkv {

// Best of `reps` passes over a buffer of `bytes` bytes; returns bytes/second.
double measure_read_bandwidth(size_t bytes = size_t{1} << 30, int reps = 5);

}  // namespace mlkv
