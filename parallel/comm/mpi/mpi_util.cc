#include "parallel/comm/mpi/mpi_util.h"

#include <mpi.h>

#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace tessera::parallel::mpi {

absl::string_view MpiErrorClassName(int error_class) {
  switch (error_class) {
    case MPI_SUCCESS:
      return "MPI_SUCCESS";
    case MPI_ERR_BUFFER:
      return "MPI_ERR_BUFFER";
    case MPI_ERR_COUNT:
      return "MPI_ERR_COUNT";
    case MPI_ERR_TYPE:
      return "MPI_ERR_TYPE";
    case MPI_ERR_TAG:
      return "MPI_ERR_TAG";
    case MPI_ERR_COMM:
      return "MPI_ERR_COMM";
    case MPI_ERR_RANK:
      return "MPI_ERR_RANK";
    case MPI_ERR_REQUEST:
      return "MPI_ERR_REQUEST";
    case MPI_ERR_ROOT:
      return "MPI_ERR_ROOT";
    case MPI_ERR_GROUP:
      return "MPI_ERR_GROUP";
    case MPI_ERR_OP:
      return "MPI_ERR_OP";
    case MPI_ERR_TOPOLOGY:
      return "MPI_ERR_TOPOLOGY";
    case MPI_ERR_DIMS:
      return "MPI_ERR_DIMS";
    case MPI_ERR_ARG:
      return "MPI_ERR_ARG";
    case MPI_ERR_UNKNOWN:
      return "MPI_ERR_UNKNOWN";
    case MPI_ERR_TRUNCATE:
      return "MPI_ERR_TRUNCATE";
    case MPI_ERR_OTHER:
      return "MPI_ERR_OTHER";
    case MPI_ERR_INTERN:
      return "MPI_ERR_INTERN";
    case MPI_ERR_PENDING:
      return "MPI_ERR_PENDING";
    case MPI_ERR_IN_STATUS:
      return "MPI_ERR_IN_STATUS";
    case MPI_ERR_NO_MEM:
      return "MPI_ERR_NO_MEM";
    default:
      return "MPI_ERR_(unnamed class)";
  }
}

absl::Status MpiStatus(int rc, absl::string_view call) {
  if (rc == MPI_SUCCESS) return absl::OkStatus();
  int error_class = MPI_ERR_UNKNOWN;
  if (MPI_Error_class(rc, &error_class) != MPI_SUCCESS) error_class = MPI_ERR_UNKNOWN;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) length = 0;
  absl::StatusCode code = absl::StatusCode::kInternal;
  switch (error_class) {
    case MPI_ERR_BUFFER:
    case MPI_ERR_COUNT:
    case MPI_ERR_TYPE:
    case MPI_ERR_TAG:
    case MPI_ERR_COMM:
    case MPI_ERR_RANK:
    case MPI_ERR_ROOT:
    case MPI_ERR_GROUP:
    case MPI_ERR_OP:
    case MPI_ERR_ARG:
    case MPI_ERR_TRUNCATE:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case MPI_ERR_NO_MEM:
      code = absl::StatusCode::kResourceExhausted;
      break;
    default:
      break;
  }
  return absl::Status(code, absl::StrCat(call, ": ", MpiErrorClassName(error_class), ": ",
                                         std::string(text, length)));
}

absl::StatusOr<PollResult> PollRequest(MPI_Request* request, MPI_Status* status,
                                       absl::Time deadline, const std::atomic<bool>* aborted,
                                       absl::string_view call) {
  // Spinning keeps latency low; yielding lets the peer ranks on the same core progress.
  constexpr int kSpins = 64;
  for (int i = 0;; ++i) {
    if (aborted != nullptr && aborted->load(std::memory_order_relaxed)) return PollResult::kAborted;
    int done = 0;
    if (absl::Status s = MpiStatus(MPI_Test(request, &done, status), call); !s.ok()) return s;
    if (done) return PollResult::kDone;
    if (absl::Now() >= deadline) return PollResult::kTimedOut;
    if (i >= kSpins) std::this_thread::yield();
  }
}

}  // namespace tessera::parallel::mpi
