// The one thread pool of the CPU backend: OpenMP. OpenBLAS is linked in its OpenMP flavour
// (Debian's libopenblas-openmp-dev) so its GEMMs run on the same pool; inside an OpenMP parallel
// region OpenBLAS runs single-threaded, so kernels may call BLAS from parallel loops.
#pragma once

namespace mlkv {

// Sets the number of threads for OpenMP and OpenBLAS. n <= 0 means all cores.
void set_num_threads(int n);
int num_threads();

}  // namespace mlkv
