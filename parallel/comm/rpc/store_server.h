// StoreServer hosts the tessera.v1.RendezvousStore service over an in-memory map: one rank (or
// the launcher) runs it and every rank talks to it through a GrpcStore. A Get for a key that is
// not set yet is parked, without holding a server thread, until a Set of that key or its
// timeout_ms (then DEADLINE_EXCEEDED naming the key).
//
// Thread-safe. Shutdown() (or the destructor) answers parked Gets with UNAVAILABLE and stops the
// server within its grace period; it never waits longer.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera::parallel {

class StoreServer {
 public:
  // Listens on `address` ("127.0.0.1:0" picks a free port; read it back with port()).
  // kUnavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<StoreServer>> Create(const std::string& address);
  ~StoreServer();  // Shutdown(absl::Seconds(1)) if not done yet

  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

  // The bound port.
  int port() const;
  // Stops accepting calls, answers waiting Gets with UNAVAILABLE, and gives running calls up to
  // `grace` before cancelling them. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  class Impl;
  explicit StoreServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::parallel
