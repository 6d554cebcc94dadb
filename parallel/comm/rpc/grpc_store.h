// GrpcStore: a Store client of the tessera.v1.RendezvousStore service (served by StoreServer,
// later by the coordinator). Thread-safe: any number of threads may call Set/Get at once.
//
// Errors: gRPC codes map 1:1 to canonical codes, with the call and the gRPC code name in the
// message ("RendezvousStore.Get: UNAVAILABLE: failed to connect ..."). Get waits on the server
// for up to `timeout` and returns kDeadlineExceeded naming the key; an unreachable server is
// kUnavailable at once (no retry: callers that expect a server to come up retry themselves).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/comm/store.h"

namespace tessera::parallel {

struct GrpcStoreOptions {
  // Deadline of a Set RPC.
  absl::Duration set_timeout = absl::Seconds(10);
  // A Get's RPC deadline is its timeout plus this, so that the server's answer (which names the
  // key) arrives before the client gives up.
  absl::Duration get_slack = absl::Seconds(2);
};

class GrpcStore final : public Store {
 public:
  // `target` is "host:port". Connects lazily (on the first call); kInvalidArgument when empty.
  static absl::StatusOr<std::unique_ptr<GrpcStore>> Create(const std::string& target,
                                                           GrpcStoreOptions options = {});
  ~GrpcStore() override;

  absl::Status Set(absl::string_view key, absl::string_view value) override;
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Duration timeout) override;

 private:
  class Impl;
  explicit GrpcStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::parallel
