#include "kvtransfer/grpc/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace tessera::kvtransfer::grpc_internal {

absl::Status FromGrpcStatus(absl::string_view call, const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  const auto absl_code = code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
                             ? static_cast<absl::StatusCode>(code)
                             : absl::StatusCode::kUnknown;
  return absl::Status(absl_code, absl::StrCat(call, ": ", absl::StatusCodeToString(absl_code), ": ",
                                              status.error_message()));
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  const auto grpc_code = code > 0 && code <= static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)
                             ? static_cast<grpc::StatusCode>(code)
                             : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, std::string(status.message()));
}

}  // namespace tessera::kvtransfer::grpc_internal
