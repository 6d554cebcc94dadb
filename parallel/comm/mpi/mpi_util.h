// Helpers of the MPI adapter (internal to parallel/comm/mpi): MPI return codes to absl::Status
// (which requires the communicator's error handler to be MPI_ERRORS_RETURN, as MpiCommunicator
// sets), and polling a request until a deadline.
#pragma once

#include <mpi.h>

#include <atomic>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tessera::parallel::mpi {

// OK for MPI_SUCCESS; otherwise "<call>: MPI_ERR_<CLASS>: <MPI_Error_string>" with a canonical
// code (argument errors → kInvalidArgument, the rest → kInternal).
absl::Status MpiStatus(int rc, absl::string_view call);
// "MPI_ERR_TRUNCATE", ... for an error class.
absl::string_view MpiErrorClassName(int error_class);

enum class PollResult { kDone, kTimedOut, kAborted };

// Calls MPI_Test on `request` until it completes (kDone, `status` filled), `deadline` passes
// (kTimedOut) or `aborted` becomes true (kAborted); the request is still active in the last two
// cases. Spins briefly, then yields the CPU between tests (ranks often share cores). An MPI error
// from MPI_Test is returned as a Status naming `call`.
absl::StatusOr<PollResult> PollRequest(MPI_Request* request, MPI_Status* status,
                                       absl::Time deadline, const std::atomic<bool>* aborted,
                                       absl::string_view call);

}  // namespace tessera::parallel::mpi
