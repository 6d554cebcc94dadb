// Conversion between gRPC statuses and absl::Status for every gRPC adapter (parallel/comm/rpc,
// kvtransfer/grpc, worker/rpc, coordinator/rpc and coordinator/api). The codes map 1:1;
// FromGrpcStatus's message names the call and the gRPC code. In common/ (L0) so that adapters on
// every level share it; the only gRPC header here is grpcpp's status.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace tessera::rpc {

// "UNAVAILABLE", "DEADLINE_EXCEEDED", ...
absl::string_view GrpcCodeName(grpc::StatusCode code);
// OK stays OK; otherwise `call`: CODE_NAME: message, with the same canonical code.
absl::Status FromGrpcStatus(absl::string_view call, const grpc::Status& status);
// The same code and message, for a handler to return (codes outside gRPC's range: UNKNOWN).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tessera::rpc
