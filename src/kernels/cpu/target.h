// Target regions: code between MLKV_TARGET_*_BEGIN and MLKV_TARGET_END is compiled for that
// instruction set regardless of the file's compile flags, so one binary carries every path and
// picks one at run time (kernels/cpu/isa.h).
//
// Why a region and not per-file -m flags: a file compiled with -mavx512f also emits AVX-512 copies
// of every inline function and template it uses (std::vector, std::min, ...), and the linker may
// keep that copy for the whole program, which then faults on a CPU without AVX-512. Headers are
// included before the region opens, so their inline code keeps the baseline flags; only the
// functions defined inside the region (the kernels) get the wider instruction set.
#pragma once

#define MLKV_PRAGMA(x) _Pragma(#x)

#if defined(__clang__)
#define MLKV_TARGET_BEGIN(isa) \
  MLKV_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define MLKV_TARGET_END MLKV_PRAGMA(clang attribute pop)
#else
#define MLKV_TARGET_BEGIN(isa) MLKV_PRAGMA(GCC push_options) MLKV_PRAGMA(GCC target(isa))
#define MLKV_TARGET_END MLKV_PRAGMA(GCC pop_options)
#endif

#define MLKV_TARGET_AVX2 "avx2,fma,f16c"
#define MLKV_TARGET_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"
