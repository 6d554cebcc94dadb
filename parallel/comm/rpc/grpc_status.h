// Conversion of gRPC statuses to absl::Status for the rpc adapters (internal to
// parallel/comm/rpc). The codes map 1:1; the message names the call and the gRPC code.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace tessera::parallel::rpc {

// "UNAVAILABLE", "DEADLINE_EXCEEDED", ...
absl::string_view GrpcCodeName(grpc::StatusCode code);
// OK stays OK; otherwise `call`: CODE_NAME: message, with the same canonical code.
absl::Status FromGrpcStatus(absl::string_view call, const grpc::Status& status);

}  // namespace tessera::parallel::rpc
