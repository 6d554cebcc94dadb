// Conversion of UCX status codes into absl::Status: the one place where ucs_status_t becomes a
// canonical code. The message names the failing call and ucs_status_string(status).
#pragma once

#include <ucs/type/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tessera::kvtransfer {

// OK for UCS_OK (and UCS_INPROGRESS, which is not an error); otherwise a canonical code:
// kUnavailable for unreachable/closed/timed-out peers, kResourceExhausted for memory and
// registration limits, kInvalidArgument for bad parameters, kCancelled, kUnimplemented for
// unsupported features, kInternal for the rest.
absl::Status UcsToStatus(ucs_status_t status, absl::string_view call);

}  // namespace tessera::kvtransfer
