// ReplicaServer: the gRPC server of a replica leader — the tessera.v1.Replica service
// (ReplicaService) over the replica's Engine, plus grpc.health.v1.Health ("" and
// "tessera.v1.Replica" report SERVING until Drain or Shutdown).
//
// Ownership: borrows the engine, which must outlive the server. Thread-safe. Errors: Create
// returns kUnavailable when the address cannot be bound.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/engine.h"
#include "worker/rpc/replica_service.h"

namespace tessera::worker::rpc {

struct ReplicaServerOptions {
  std::string address = "127.0.0.1:0";   // port 0 picks a free port (read it back with port())
  int32_t max_message_bytes = 64 << 20;  // both directions (prompts travel as token ids)
  ReplicaServiceOptions service;
};

class ReplicaServer {
 public:
  static absl::StatusOr<std::unique_ptr<ReplicaServer>> Create(Engine& engine,
                                                               const ReplicaServerOptions& options);
  ~ReplicaServer();  // Shutdown(absl::Seconds(1)) if not done yet

  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  // The bound port.
  int port() const;
  // Marks the server NOT_SERVING and drains the service (ReplicaService::DrainFor): new Generate
  // calls get UNAVAILABLE; those in flight get up to `timeout`, then are cancelled. Returns how
  // many were cancelled.
  int32_t Drain(absl::Duration timeout);
  // Stops accepting calls and gives running ones until `deadline` before cancelling them (a
  // cancelled Generate cancels its request in the engine); returns once every handler has
  // returned. Idempotent.
  void Shutdown(absl::Time deadline);

  ReplicaService& service();

 private:
  class Impl;
  explicit ReplicaServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::worker::rpc
