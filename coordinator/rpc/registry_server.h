// The coordinator's internal gRPC endpoint: the tessera.v1.Registry service (replicas register,
// heartbeat, deregister) over a Coordinator, plus grpc.health.v1. Binds to loopback unless told
// otherwise (internal ports are not public). Thread-safe; Shutdown is bounded.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/coordinator.h"

namespace tessera::coordinator {

class RegistryServer {
 public:
  // Listens on `address` ("127.0.0.1:0" picks a free port: port() reads it back). kUnavailable
  // when the address cannot be bound. `coordinator` must outlive the server.
  static absl::StatusOr<std::unique_ptr<RegistryServer>> Create(Coordinator& coordinator,
                                                                const std::string& address);
  ~RegistryServer();  // Shutdown(absl::Seconds(1)) if not done
  int port() const;
  void Shutdown(absl::Duration grace);

 private:
  class Impl;
  explicit RegistryServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::coordinator
