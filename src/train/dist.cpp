// Dist: MPI when available (MLKV_HAVE_MPI), else a world of one.
#include "train/dist.h"

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "core/check.h"

#ifdef MLKV_HAVE_MPI
// The C API only: OpenMPI's mpi.h otherwise pulls in the deprecated C++ bindings, which live in a
// library FindMPI's C component does not link.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace mlkv::train {

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

}  // namespace

bool Dist::compiled_with_mpi() {
#ifdef MLKV_HAVE_MPI
  return true;
#else
  return false;
#endif
}

Dist& Dist::get() {
  static Dist d;
  return d;
}

Dist::Dist() {
#ifdef MLKV_HAVE_MPI
  if (launched_by_mpi()) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      // Only the main thread calls MPI (OpenMP threads never do).
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      initialised_mpi_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    local_size_ = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", env_int("MPI_LOCALNRANKS", 1));
  }
#else
  if (launched_by_mpi() && env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", 1)) > 1) {
    fail(
        "this mlkv was built without MPI (OpenMPI not found at configure time) but was started by "
        "an MPI launcher with several ranks; rebuild with libopenmpi-dev installed");
  }
#endif
}

Dist::~Dist() {
#ifdef MLKV_HAVE_MPI
  if (initialised_mpi_) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
#endif
}

void Dist::allreduce_sum(float* x, int64_t n) {
#ifdef MLKV_HAVE_MPI
  if (size_ == 1) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max() / 2;
  for (int64_t i = 0; i < n; i += kMax) {
    const int m = static_cast<int>(std::min(kMax, n - i));
    MPI_Allreduce(MPI_IN_PLACE, x + i, m, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
#else
  (void)x;
  (void)n;
#endif
}

void Dist::allreduce_sum(double* x, int64_t n) {
#ifdef MLKV_HAVE_MPI
  if (size_ == 1) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max() / 2;
  for (int64_t i = 0; i < n; i += kMax) {
    const int m = static_cast<int>(std::min(kMax, n - i));
    MPI_Allreduce(MPI_IN_PLACE, x + i, m, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  }
#else
  (void)x;
  (void)n;
#endif
}

void Dist::broadcast(void* data, int64_t bytes, int root) {
#ifdef MLKV_HAVE_MPI
  if (size_ == 1) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max() / 2;
  auto* p = static_cast<char*>(data);
  for (int64_t i = 0; i < bytes; i += kMax) {
    const int m = static_cast<int>(std::min(kMax, bytes - i));
    MPI_Bcast(p + i, m, MPI_BYTE, root, MPI_COMM_WORLD);
  }
#else
  (void)data;
  (void)bytes;
  (void)root;
#endif
}

void Dist::barrier() {
#ifdef MLKV_HAVE_MPI
  if (size_ > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

void Dist::abort(int code) {
#ifdef MLKV_HAVE_MPI
  if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

void Dist::check_all(bool ok) {
  double v = ok ? 0.0 : 1.0;
  allreduce_sum(&v, 1);
  MLKV_REQUIRE(v == 0.0, "another rank failed (see its message above)");
}

}  // namespace mlkv::train
