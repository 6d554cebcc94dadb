// gRPC ↔ absl::Status conversion for kvtransfer/grpc. The same mapping as
// parallel/comm/rpc/grpc_status.h (codes 1:1, the call and the gRPC code name in the message),
// repeated here because the layering forbids kvtransfer (L1) to include parallel/comm (L1).
// TODO(owner): move parallel/comm/rpc/grpc_status.* to an L0 rpc folder (common/rpc/) and use it
// from both.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace tessera::kvtransfer::grpc_internal {

// OK stays OK; otherwise `call`: CODE_NAME: message, with the same canonical code.
absl::Status FromGrpcStatus(absl::string_view call, const grpc::Status& status);
// The same code and message, for a handler to return.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tessera::kvtransfer::grpc_internal
