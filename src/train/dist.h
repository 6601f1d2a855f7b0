// Data-parallel communication for training: a thin wrapper over MPI (Debian's OpenMPI) that
// degrades to a single process when mlkv is built without MPI or not launched by mpirun. Only what
// synchronous data parallelism needs: sum-allreduce of gradients and losses, broadcast, barrier.
#pragma once

#include <cstdint>
#include <string>

namespace mlkv::train {

class Dist {
 public:
  // Initialises MPI when built with it and the environment says the process was started by an MPI
  // launcher (OMPI_COMM_WORLD_SIZE / PMI_SIZE / PMIX_RANK); otherwise a world of one. Idempotent.
  static Dist& get();
  ~Dist();

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ranks on this machine (for the default thread count).
  int local_size() const { return local_size_; }
  bool is_root() const { return rank_ == 0; }
  static bool compiled_with_mpi();

  // In place: x[i] = sum over ranks of x[i]. No-op for a world of one.
  void allreduce_sum(float* x, int64_t n);
  void allreduce_sum(double* x, int64_t n);
  void broadcast(void* data, int64_t bytes, int root = 0);
  void barrier();
  // Ends every rank (MPI_Abort) after an error on this one, so the others do not wait forever in
  // a collective; a world of one just exits.
  [[noreturn]] void abort(int code);
  // Throws mlkv::Error on every rank unless `ok` holds on all of them (message from the first
  // failing rank is not available to the others; they report "another rank failed").
  void check_all(bool ok);

 private:
  Dist();
  int rank_ = 0, size_ = 1, local_size_ = 1;
  bool initialised_mpi_ = false;
};

}  // namespace mlkv::train
