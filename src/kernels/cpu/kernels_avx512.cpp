// The avx512 build of the CPU kernels (AVX-512 F/BW/VL/DQ, 16 floats per vector): the shared kernel source
// (*-inl.h) instantiated over vec_avx512.h. Headers come first so that only the kernels themselves
// are compiled for the target (kernels/cpu/target.h says why).
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps() and trip its own uninitialised-use
// warnings; nothing here is uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/half.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/target.h"

MLKV_TARGET_BEGIN(MLKV_TARGET_AVX512)
namespace mlkv::ops::cpu::avx512 {
namespace {
#include "kernels/cpu/vec_avx512.h"
#include "kernels/cpu/elementwise-inl.h"
#include "kernels/cpu/attend-inl.h"
#include "kernels/cpu/gemv-inl.h"
#include "kernels/cpu/norm-inl.h"
#include "kernels/cpu/table-inl.h"
}  // namespace
const Kernels& table() {
  static const Kernels k = make_table(Isa::kAvx512);
  return k;
}
}  // namespace mlkv::ops::cpu::avx512
MLKV_TARGET_END

namespace mlkv::ops::cpu {
const Kernels& avx512_kernels() { return avx512::table(); }
}  // namespace mlkv::ops::cpu
