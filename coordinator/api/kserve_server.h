// KServeServer: a gRPC server for the coordinator's public inference API. It serves
//   inference.GRPCInferenceService   KServe v2 / Triton (kserve_service.h)
//   grpc.health.v1.Health            gRPC's default health service: "" and
//                                    "inference.GRPCInferenceService" SERVING while
//                                    Frontend::Ready() (as of the last RefreshHealth/SetServing)
//   grpc.reflection.v1alpha.ServerReflection   so grpcurl and friends can list and call it
// Messages larger than max_message_bytes are refused by gRPC with RESOURCE_EXHAUSTED ("Received
// message larger than max"); that call fails and the server goes on serving.
//
// Thread-safe. `frontend` must outlive the server. Shutdown() (or the destructor) stops it: new
// calls are refused, running ones get until the deadline, then are cancelled (their requests are
// cancelled on the Frontend); it returns once every handler has returned.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/api/kserve_service.h"
#include "coordinator/frontend.h"

namespace tessera::coordinator {

struct KServeServerOptions {
  // Where to listen: "host:port"; port 0 picks a free one (read it back with port()). Triton's
  // and KServe's convention is port 8001; loopback unless told otherwise.
  std::string address = "127.0.0.1:0";
  // Largest request or response message, in bytes (gRPC's default receive limit is 4 MiB).
  int64_t max_message_bytes = int64_t{64} << 20;
  KServeServiceOptions service;
};

class KServeServer {
 public:
  // Starts serving. kInvalidArgument for a bad option, kUnavailable when the address cannot be
  // bound.
  static absl::StatusOr<std::unique_ptr<KServeServer>> Create(
      Frontend& frontend, const KServeServerOptions& options = {});
  ~KServeServer();  // Shutdown(absl::Now() + absl::Seconds(1)) unless done already

  KServeServer(const KServeServer&) = delete;
  KServeServer& operator=(const KServeServer&) = delete;

  // The bound port.
  int port() const;
  // "host:port" with the bound port, for clients.
  std::string target() const;

  // Sets the health service's status for "" and "inference.GRPCInferenceService" from
  // Frontend::Ready(); SetServing sets it explicitly. Call whenever readiness may have changed.
  void RefreshHealth();
  void SetServing(bool serving);

  // Stops the server: refuses new calls, cancels those still running at `deadline` and returns
  // when all have returned. Idempotent; later calls return at once.
  void Shutdown(absl::Time deadline);

 private:
  class Impl;
  explicit KServeServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::coordinator
