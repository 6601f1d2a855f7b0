// The avx2 build of the CPU kernels (AVX2 + FMA + F16C, 8 floats per vector): the shared kernel source
// (*-inl.h) instantiated over vec_avx2.h. Headers come first so that only the kernels themselves
// are compiled for the target (kernels/cpu/target.h says why).
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/half.h"
#include "core/quant.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/target.h"

MLKV_TARGET_BEGIN(MLKV_TARGET_AVX2)
namespace mlkv::ops::cpu::avx2 {
namespace {
#include "kernels/cpu/vec_avx2.h"
#include "kernels/cpu/elementwise-inl.h"
#include "kernels/cpu/attend-inl.h"
#include "kernels/cpu/gemv-inl.h"
#include "kernels/cpu/gemv_int-inl.h"
#include "kernels/cpu/gemv_panels-inl.h"
#include "kernels/cpu/norm-inl.h"
#include "kernels/cpu/table-inl.h"
}  // namespace
const Kernels& table() {
  static const Kernels k = make_table(Isa::kAvx2);
  return k;
}
}  // namespace mlkv::ops::cpu::avx2
MLKV_TARGET_END

namespace mlkv::ops::cpu {
const Kernels& avx2_kernels() { return avx2::table(); }
}  // namespace mlkv::ops::cpu
