// The one adapter to the BLAS library (OpenBLAS, Debian's OpenMP build, so its GEMMs run on the
// program's OpenMP threads): GEMM in f32 and f64, its thread count, and the kernel family
// OpenBLAS picked. This is the only file of mlkv that includes cblas.h.
#pragma once

namespace mlkv::blas {

// C[M, N] = alpha op(A)[M, K] op(B)[K, N] + beta C, row-major; op transposes when trans_*.
// Inside an OpenMP parallel region OpenBLAS runs single-threaded, so callers may use it from
// parallel loops. Does nothing when M or N is 0.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);
void gemm(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A, int lda,
          const double* B, int ldb, double beta, double* C, int ldc);

// Threads OpenBLAS uses outside parallel regions.
void set_num_threads(int n);

// The OpenBLAS kernel family in use ("Haswell", "SkylakeX", "Prescott", ...).
const char* core_name();

// OpenBLAS picks its kernels from the CPU model at load time. OpenBLAS 0.3.21 (Debian 12) does not
// know some newer Xeons and falls back to its generic "Prescott" SSE3 kernels: sgemm runs ~5x
// slower (measured: 27 GFLOP/s instead of 131 on 2 threads). The choice is made before main() and
// can only be overridden through the OPENBLAS_CORETYPE environment variable, so a program that
// finds itself on the fallback sets the variable for the best kernel the CPU supports and re-runs
// itself once. Call first thing in main(): when OpenBLAS fell back to a generic kernel on a CPU
// with AVX2 or AVX-512 and OPENBLAS_CORETYPE is unset, sets it and execv()s the same program with
// the same arguments; otherwise (or if re-executing fails) returns. MLKV_NO_BLAS_FIX=1 disables
// this.
void ensure_good_kernels(int argc, char** argv);

}  // namespace mlkv::blas
