// OpenBLAS picks its kernels from the CPU model at load time. OpenBLAS 0.3.21 (Debian 12) does not
// know some newer Xeons and falls back to its generic "Prescott" SSE3 kernels: sgemm runs ~5x slower
// (measured here: 27 GFLOP/s instead of 131 on 2 threads). The choice is made before main() and
// can only be overridden through the OPENBLAS_CORETYPE environment variable, so a program that
// finds itself on the fallback sets the variable for the best kernel the CPU supports and re-runs
// itself once.
#pragma once

namespace mlkv {

// The OpenBLAS kernel family in use ("Haswell", "SkylakeX", "Prescott", ...).
const char* blas_core_name();

// Call first thing in main(). When OpenBLAS fell back to a generic kernel on a CPU with AVX2 or
// AVX-512 and OPENBLAS_CORETYPE is unset, sets it and execv()s the same program with the same
// arguments; otherwise (or if re-executing fails) returns and the program carries on.
// MLKV_NO_BLAS_FIX=1 disables this.
void ensure_blas_kernels(int argc, char** argv);

}  // namespace mlkv
