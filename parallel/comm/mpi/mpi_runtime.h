// MpiRuntime: MPI's process-wide lifetime as an object. Init() initialises MPI (MPI_Init_thread,
// at least MPI_THREAD_FUNNELED) unless something else already did, and the destructor calls
// MPI_Finalize only if this object initialised it. Create it once, in main() (launch/ or a test's
// main), on the thread that will drive the MPI communicators, and destroy every MpiCommunicator
// before it. Not thread-safe.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/comm/mpi/mpi_communicator.h"

namespace tessera::parallel {

struct MpiRuntimeOptions {
  // Ask for MPI_THREAD_MULTIPLE (several threads driving different communicators) instead of
  // MPI_THREAD_FUNNELED. kFailedPrecondition if the library cannot provide it.
  bool thread_multiple = false;
};

class MpiRuntime {
 public:
  // kFailedPrecondition if MPI was already finalised (it cannot be initialised twice) or does not
  // provide the thread level; MPI errors are converted.
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Init(MpiRuntimeOptions options = {});
  ~MpiRuntime();

  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // MPI_THREAD_FUNNELED, MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE.
  int thread_level() const { return thread_level_; }
  // Whether this object initialised MPI (and so finalises it).
  bool owns_mpi() const { return owns_mpi_; }

  // A communicator over a duplicate of MPI_COMM_WORLD (MPI_Comm_idup, waited for up to
  // options.timeout). Collective: every process must call it.
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> CreateWorld(
      MpiCommunicatorOptions options = {}) const;

 private:
  MpiRuntime(bool owns_mpi, int thread_level, int world_rank, int world_size)
      : owns_mpi_(owns_mpi),
        thread_level_(thread_level),
        world_rank_(world_rank),
        world_size_(world_size) {}

  const bool owns_mpi_;
  const int thread_level_;
  const int world_rank_;
  const int world_size_;
};

}  // namespace tessera::parallel
