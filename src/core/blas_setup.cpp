#include "core/blas_setup.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>

extern "C" char* openblas_get_corename(void);

namespace mlkv {

const char* blas_core_name() { return openblas_get_corename(); }

namespace {

// Kernel families OpenBLAS uses when it does not recognise the CPU, or for CPUs without AVX2.
bool is_generic_core(const char* name) {
  for (const char* g : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Banias",
                        "Katmai", "Coppermine", "Northwood", "Unknown"}) {
    if (std::strcmp(name, g) == 0) return true;
  }
  return false;
}

const char* best_core_for_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

}  // namespace

void ensure_blas_kernels(int argc, char** argv) {
  (void)argc;
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv("MLKV_NO_BLAS_FIX") != nullptr) return;
  const char* core = blas_core_name();
  if (core == nullptr || !is_generic_core(core)) return;
  const char* best = best_core_for_cpu();
  if (best == nullptr) return;
  setenv("OPENBLAS_CORETYPE", best, 1);
  execv("/proc/self/exe", argv);
  // execv only returns on failure: carry on with the generic kernels.
}

}  // namespace mlkv
