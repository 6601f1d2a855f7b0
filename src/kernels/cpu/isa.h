// Instruction-set paths of the CPU kernels, chosen at run time from the CPU's features.
//
// Every float kernel exists in three builds of the same source (kernels/cpu/*-inl.h): scalar
// (portable C++, no intrinsics), AVX2+FMA+F16C, and AVX-512 (F, BW, VL, DQ). The program picks the
// best path the CPU supports at startup; MLKV_ISA=scalar|avx2|avx512 (or set_isa()) forces one, so
// that every path can be exercised on a machine that has them all. What this file is not: the
// kernels themselves (kernels/cpu/kernels.h) or the threading around them (kernels/cpu/*.cpp).
#pragma once

#include <cstdint>

namespace mlkv::ops::cpu {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
inline constexpr int kNumIsas = 3;

const char* isa_name(Isa isa);  // "scalar", "avx2", "avx512"
// Parses an isa_name() spelling; throws mlkv::Error listing the valid names otherwise.
Isa parse_isa(const char* name);

// Whether this CPU can run the path's kernels (scalar: always; the rest of the binary needs AVX2).
bool cpu_supports(Isa isa);
// The best path this CPU supports.
Isa best_isa();

// The path in use: MLKV_ISA when set (case-insensitive; an unknown name, or a path this CPU
// cannot run, is an mlkv::Error on first use: backend() asks before anything computes), else
// best_isa().
Isa active_isa();
// Forces a path for the rest of the process (tests); throws mlkv::Error when the CPU lacks it.
void set_isa(Isa isa);

// This CPU's level-2 cache in bytes (per core), as the C library reports it (sysconf); 1 MiB when
// it does not say. Read once.
int64_t l2_cache_bytes();

}  // namespace mlkv::ops::cpu
