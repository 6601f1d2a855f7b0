#include "kernels/threads.h"

#include <omp.h>

#include "kernels/blas/blas.h"

namespace mlkv {

void set_num_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
  blas::set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace mlkv
