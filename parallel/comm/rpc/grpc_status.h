// Conversion between gRPC statuses and absl::Status for every rpc adapter (parallel/comm/rpc,
// worker/rpc, coordinator/rpc and coordinator/api). The codes map 1:1; FromGrpcStatus's
// message names the call and the gRPC code.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace tessera::parallel::rpc {

// "UNAVAILABLE", "DEADLINE_EXCEEDED", ...
absl::string_view GrpcCodeName(grpc::StatusCode code);
// OK stays OK; otherwise `call`: CODE_NAME: message, with the same canonical code.
absl::Status FromGrpcStatus(absl::string_view call, const grpc::Status& status);
// The same code and message, for a handler to return (codes outside gRPC's range: UNKNOWN).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tessera::parallel::rpc
