// RegistrationClient: keeps a replica leader registered with the coordinator's tessera.v1.Registry.
//
// Create registers the ReplicaDescriptor, retrying retryable failures (UNAVAILABLE,
// DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED: the coordinator may start after the worker)
// with exponential backoff until `register_timeout`. Then a background thread heartbeats every
// lease_ms / 3 with the stats the callback returns. A heartbeat answered known = false (the lease
// lapsed, or the coordinator restarted) registers again; an unreachable coordinator is retried
// with bounded backoff forever, logging once per change of state. Nothing here exits the process.
//
// Errors: Create returns kUnavailable naming the coordinator's address when it did not answer
// within register_timeout, the coordinator's own error (its code) when it refused the replica for
// a non-retryable reason, kInvalidArgument for bad options.
//
// Threads: `stats` runs on the heartbeat thread and must be thread-safe (Engine::counters() is).
// Every method is thread-safe; Stop() and the destructor return within about rpc_timeout +
// deregister_timeout.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tessera/v1/replica.grpc.pb.h"

namespace tessera::worker::rpc {

struct RegistrationOptions {
  std::string coordinator;                              // host:port of the Registry service
  absl::Duration register_timeout = absl::Seconds(60);  // Create's retries
  absl::Duration rpc_timeout = absl::Seconds(5);        // deadline of each RPC
  absl::Duration deregister_timeout = absl::Seconds(2);
  absl::Duration initial_backoff = absl::Milliseconds(100);  // doubles after each failure ...
  absl::Duration max_backoff = absl::Seconds(5);             // ... up to this
  // Heartbeat period; zero: lease_ms / 3 as the coordinator granted it.
  absl::Duration heartbeat_interval = absl::ZeroDuration();
  // Called on the heartbeat thread with the KV descriptors of the live decode replicas, when the
  // coordinator sends them (to prefill replicas). Must not block.
  std::function<void(const std::vector<std::string>&)> on_kv_peers;
  // Called on the heartbeat thread with the KV reservations the coordinator still waits on, when
  // it names any (to decode replicas): renew their leases (Engine::RenewKv). Must not block.
  std::function<void(const std::vector<uint64_t>&)> on_kv_leases;
};

using StatsCallback = std::function<tessera::v1::ReplicaStats()>;

class RegistrationClient {
 public:
  static absl::StatusOr<std::unique_ptr<RegistrationClient>> Create(
      tessera::v1::ReplicaDescriptor descriptor, StatsCallback stats, RegistrationOptions options);
  ~RegistrationClient();  // Stop()

  RegistrationClient(const RegistrationClient&) = delete;
  RegistrationClient& operator=(const RegistrationClient&) = delete;

  // Stops heartbeats (cancelling an RPC in progress), joins the thread and deregisters (bounded
  // by deregister_timeout; failures are logged). Idempotent.
  void Stop();

  // The lease's id; empty while re-registering.
  std::string replica_id() const;
  // Successful Register calls so far (1 after Create).
  int64_t registrations() const;

 private:
  enum class State { kRegistered, kUnregistered, kUnreachable };

  RegistrationClient(tessera::v1::ReplicaDescriptor descriptor, StatsCallback stats,
                     RegistrationOptions options);
  // One Register RPC; on success records the lease.
  absl::Status RegisterOnce();
  // One Heartbeat RPC: true when the coordinator knows the lease.
  absl::StatusOr<bool> HeartbeatOnce(const std::string& replica_id);
  void Run();  // the heartbeat thread
  void SetState(State state, const absl::Status& why);
  absl::Duration Interval() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const tessera::v1::ReplicaDescriptor descriptor_;
  const StatsCallback stats_;
  const RegistrationOptions options_;
  std::unique_ptr<tessera::v1::Registry::Stub> stub_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string replica_id_ ABSL_GUARDED_BY(mu_);
  absl::Duration lease_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  int64_t registrations_ ABSL_GUARDED_BY(mu_) = 0;
  State state_ ABSL_GUARDED_BY(mu_) = State::kUnregistered;
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;  // cancelled by Stop

  absl::Mutex stop_mu_;  // serialises Stop
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;
};

}  // namespace tessera::worker::rpc
