// The one function of src/kernels that the model-file readers link against without calling:
// ModelConfig::rope_inv_freq (model/config.cpp) builds rotary tables from ops::rope_inv_freq, and
// no reader builds rotary tables. The fuzz build does not compile the kernels (SIMD paths,
// OpenMP, BLAS), so this stands in for it and aborts if a target ever reaches it.
#include <cstdlib>
#include <vector>

#include "kernels/types.h"

namespace mlkv::ops {

std::vector<double> rope_inv_freq(int, double) {
  std::abort();
}

}  // namespace mlkv::ops
