#include "parallel/comm/mpi/mpi_runtime.h"

#include <mpi.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "parallel/comm/mpi/mpi_util.h"

namespace tessera::parallel {

using mpi::MpiStatus;

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Init(MpiRuntimeOptions options) {
  int finalized = 0;
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Finalized(&finalized), "MPI_Finalized"));
  if (finalized) {
    return absl::FailedPreconditionError("MpiRuntime::Init: MPI was already finalised");
  }
  const int required = options.thread_multiple ? MPI_THREAD_MULTIPLE : MPI_THREAD_FUNNELED;
  int initialized = 0;
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Initialized(&initialized), "MPI_Initialized"));
  int provided = MPI_THREAD_SINGLE;
  const bool owns = !initialized;
  if (owns) {
    TESSERA_RETURN_IF_ERROR(
        MpiStatus(MPI_Init_thread(nullptr, nullptr, required, &provided), "MPI_Init_thread"));
    // Errors on the world communicator (and on the communicators duplicated from it) come back
    // as return codes instead of aborting the job.
    TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN),
                                      "MPI_Comm_set_errhandler"));
  } else {
    TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Query_thread(&provided), "MPI_Query_thread"));
  }
  if (provided < required) {
    if (owns) MPI_Finalize();
    return absl::FailedPreconditionError(absl::StrCat(
        "MpiRuntime::Init: MPI provides thread level ", provided, ", tessera needs ", required,
        options.thread_multiple ? " (MPI_THREAD_MULTIPLE)" : " (MPI_THREAD_FUNNELED)"));
  }
  int rank = 0;
  int size = 0;
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank"));
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size"));
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(owns, provided, rank, size));
}

MpiRuntime::~MpiRuntime() {
  if (!owns_mpi_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiRuntime::CreateWorld(
    MpiCommunicatorOptions options) const {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Request request;
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Comm_idup(MPI_COMM_WORLD, &comm, &request), "MPI_Comm_idup"));
  TESSERA_ASSIGN_OR_RETURN(mpi::PollResult result, mpi::PollRequest(&request, MPI_STATUS_IGNORE,
                                                                    absl::Now() + options.timeout,
                                                                    nullptr, "MPI_Comm_idup"));
  if (result != mpi::PollResult::kDone) {
    // The request stays with MPI (collectives cannot be cancelled); the new handle is unusable.
    return absl::DeadlineExceededError(
        absl::StrCat("MPI_Comm_idup: not complete after ", absl::FormatDuration(options.timeout),
                     " on world rank ", world_rank_, ": not every process called CreateWorld"));
  }
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> communicator =
      MpiCommunicator::Create(comm, options);
  if (!communicator.ok()) MPI_Comm_free(&comm);
  return communicator;
}

}  // namespace tessera::parallel
