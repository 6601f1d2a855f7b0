// The scalar build of the CPU kernels (portable C++, no intrinsics): the shared kernel source
// (*-inl.h) instantiated over vec_scalar.h. Headers come first so that only the kernels themselves
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


namespace mlkv::ops::cpu::scalar {
namespace {
#include "kernels/cpu/vec_scalar.h"
#include "kernels/cpu/elementwise-inl.h"
#include "kernels/cpu/attend-inl.h"
#include "kernels/cpu/gemv-inl.h"
#include "kernels/cpu/gemv_int-inl.h"
#include "kernels/cpu/gemv_panels-inl.h"
#include "kernels/cpu/norm-inl.h"
#include "kernels/cpu/table-inl.h"
}  // namespace
const Kernels& table() {
  static const Kernels k = make_table(Isa::kScalar);
  return k;
}
}  // namespace mlkv::ops::cpu::scalar


namespace mlkv::ops::cpu {
const Kernels& scalar_kernels() { return scalar::table(); }
}  // namespace mlkv::ops::cpu
