// The coordinator's registry of replicas: each registers (ReplicaInfo), receives a lease, and
// renews it with heartbeats carrying its load. A replica whose lease lapses (on the injected
// Clock) is marked lost and taken out of rotation; requests in flight on it end with a retryable
// kUnavailable (their streams watch ReplicaEntry::lost()).
//
// Thread-safe. Entries are shared: the registry holds them while registered, each request holds
// the entry it was routed to until it finishes (so a lost replica's client outlives its last
// request).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "coordinator/replica.h"

namespace tessera::coordinator {

// The leading full blocks of prompts recently routed to a replica, as hash chains: an
// approximation of what its prefix cache holds (the replica evicts on its own), bounded LRU.
class PrefixIndex {
 public:
  explicit PrefixIndex(size_t capacity_blocks) : capacity_(capacity_blocks) {}
  // How many of `chain`'s leading hashes are present.
  int Match(const std::vector<uint64_t>& chain) const;
  void Insert(const std::vector<uint64_t>& chain);

 private:
  size_t capacity_;
  mutable absl::Mutex mu_;
  absl::flat_hash_set<uint64_t> present_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> order_ ABSL_GUARDED_BY(mu_);  // insertion order, for eviction
};

class ReplicaEntry {
 public:
  ReplicaEntry(std::string id, ReplicaInfo info, std::unique_ptr<ReplicaClient> client,
               size_t prefix_capacity_blocks);

  const std::string& id() const { return id_; }
  const ReplicaInfo& info() const { return info_; }
  ReplicaClient& client() { return *client_; }
  PrefixIndex& prefix_index() { return prefix_index_; }

  ReplicaLoad load() const;
  void set_load(const ReplicaLoad& load);
  // Requests the coordinator has routed here that have not finished.
  int64_t in_flight() const { return in_flight_.load(); }
  void AddInFlight(int64_t delta) { in_flight_ += delta; }
  // Lease lapsed or deregistered: no new requests; requests in flight end with kUnavailable.
  bool lost() const { return lost_.load(); }
  void MarkLost() { lost_ = true; }
  // Decode replicas: KV reservations a request placed here still waits on (its prefill is
  // filling them); heartbeat answers renew their leases.
  void HoldKv(uint64_t token);
  void DropKv(uint64_t token);
  std::vector<uint64_t> held_kv() const;

 private:
  const std::string id_;
  const ReplicaInfo info_;
  std::unique_ptr<ReplicaClient> client_;
  PrefixIndex prefix_index_;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> lost_{false};
  mutable absl::Mutex mu_;
  ReplicaLoad load_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> held_kv_ ABSL_GUARDED_BY(mu_);
};

struct RegistryOptions {
  absl::Duration lease = absl::Seconds(3);  // a replica silent this long is taken out
  size_t prefix_index_blocks = 65536;       // per replica
  // What every replica must agree with (the coordinator's model).
  std::string model_name;
  int32_t vocab_size = 0;
};

struct RegistryCounters {
  int64_t registrations = 0;
  int64_t lease_expirations = 0;
  int64_t deregistrations = 0;
};

class ReplicaRegistry {
 public:
  ReplicaRegistry(const RegistryOptions& options, ReplicaConnector& connector, Clock& clock);

  // Checks `info` (kInvalidArgument naming the field: empty name or address, unknown role,
  // another model, another vocabulary size), connects, and starts a lease. A replica that
  // registers again under the same name replaces its old entry (which is marked lost): it
  // restarted. Returns the entry (its id() names the lease).
  absl::StatusOr<std::shared_ptr<ReplicaEntry>> Register(ReplicaInfo info);
  // Renews a lease and records the load; false when the id is unknown (lapsed: register again).
  bool Heartbeat(const std::string& id, const ReplicaLoad& load);
  void Deregister(const std::string& id);
  // Takes out every replica whose lease has lapsed on the clock; returns their names.
  std::vector<std::string> ExpireLeases();

  // Replicas in rotation (registered, lease current), in registration order.
  std::vector<std::shared_ptr<ReplicaEntry>> Live() const;
  RegistryCounters counters() const;
  const RegistryOptions& options() const { return options_; }

 private:
  struct Lease {
    std::shared_ptr<ReplicaEntry> entry;
    absl::Time expires;
  };

  const RegistryOptions options_;
  ReplicaConnector& connector_;
  Clock& clock_;
  mutable absl::Mutex mu_;
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // ids, registration order
  absl::flat_hash_map<std::string, Lease> leases_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  RegistryCounters counters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::coordinator
