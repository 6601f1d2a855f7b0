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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/half.h"
#include "core/quant.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/target.h"

MLKV_TARGET_BEGIN(MLKV_TARGET_AVX512)
namespace mlkv::ops::cpu::avx512 {
namespace {
#include "kernels/cpu/vec_avx512.h"
#include "kernels/cpu/elementwise-inl.h"
#include "kernels/cpu/attend-inl.h"
#include "kernels/cpu/gemv-inl.h"
#include "kernels/cpu/gemv_int-inl.h"
#include "kernels/cpu/gemv_panels-inl.h"
#include "kernels/cpu/norm-inl.h"
#include "kernels/cpu/table-inl.h"
}  // namespace
}  // namespace mlkv::ops::cpu::avx512
MLKV_TARGET_END

// The integer attention scores and q8_0 GEMV again with AVX-512 VNNI (dpbusd: one instruction per
// block of 32 products where maddubs + madd take two), used when the CPU has it (Ice Lake, Zen 4 and
// later; not Skylake-X).
MLKV_TARGET_BEGIN(MLKV_TARGET_AVX512 ",avx512vnni")
namespace mlkv::ops::cpu::avx512_vnni {
namespace {
#define MLKV_VNNI 1
#include "kernels/cpu/vec_avx512.h"
#include "kernels/cpu/attend-inl.h"
#include "kernels/cpu/gemv_int-inl.h"
#undef MLKV_VNNI
}  // namespace
void use_vnni(Kernels& k) {
  k.attn_scores[3] = &attn_scores_int<RowQ8>;
  k.attn_scores[4] = &attn_scores_int<RowQ4>;
  k.gemv4_q8_int = &gemv4_q8_int;
  k.gemv_tail_q8_int = &gemv_tail_q8_int;
  k.quantize_q8 = &quantize_q8;  // no dpbusd in it: the same code as the base table's
}
}  // namespace mlkv::ops::cpu::avx512_vnni
MLKV_TARGET_END

namespace mlkv::ops::cpu::avx512 {
const Kernels& base_table() {
  static const Kernels k = make_table(Isa::kAvx512);
  return k;
}
const Kernels& table() {
  static const Kernels k = [] {
    Kernels t = base_table();
    if (__builtin_cpu_supports("avx512vnni")) avx512_vnni::use_vnni(t);
    return t;
  }();
  return k;
}
}  // namespace mlkv::ops::cpu::avx512

namespace mlkv::ops::cpu {
const Kernels& avx512_kernels() { return avx512::table(); }
const Kernels& avx512_kernels_without_vnni() { return avx512::base_table(); }
}  // namespace mlkv::ops::cpu
