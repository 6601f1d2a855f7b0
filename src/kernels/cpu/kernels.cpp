#include "kernels/cpu/kernels.h"

#include "core/check.h"

namespace mlkv::ops::cpu {

int kv_format_index(DType t) {
  switch (t) {
    case DType::kF32: return 0;
    case DType::kF16: return 1;
    case DType::kBF16: return 2;
    case DType::kQ8_0: return 3;
    case DType::kQ4_0: return 4;
    default: break;
  }
  MLKV_CHECK(false && "not a KV-cache element format");
  return 0;
}

const Kernels& kernels_for(Isa isa) {
  MLKV_REQUIRE(cpu_supports(isa), "this CPU cannot run the ", isa_name(isa), " kernels");
  switch (isa) {
    case Isa::kAvx512: return avx512_kernels();
    case Isa::kAvx2: return avx2_kernels();
    case Isa::kScalar: break;
  }
  return scalar_kernels();
}

const Kernels& kernels() {
  // active_isa() may change through set_isa() (tests), so it is looked up on each call: a relaxed
  // atomic load and a switch, next to kernels that run for microseconds at least. It only ever
  // holds a path the CPU supports.
  switch (active_isa()) {
    case Isa::kAvx512: return avx512_kernels();
    case Isa::kAvx2: return avx2_kernels();
    case Isa::kScalar: break;
  }
  return scalar_kernels();
}

}  // namespace mlkv::ops::cpu
