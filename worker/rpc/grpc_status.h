// Status conversion between absl and gRPC for the worker's rpc adapters (internal to worker/rpc).
// The canonical codes are numbered identically in both, so codes map 1:1.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace tessera::worker::rpc {

// "UNAVAILABLE", "DEADLINE_EXCEEDED", ...
absl::string_view GrpcCodeName(grpc::StatusCode code);
// OK stays OK; otherwise "`call`: CODE_NAME: message" with the same canonical code.
absl::Status FromGrpcStatus(absl::string_view call, const grpc::Status& status);
// The same code and message, for a handler to return.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tessera::worker::rpc
