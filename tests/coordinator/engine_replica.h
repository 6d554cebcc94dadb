// Replicas for coordinator tests without gRPC: a ReplicaClient over a real worker::Engine (on the
// worker tests' FakeExecutor, so tokens are deterministic and the scheduler is real), and a
// ReplicaConnector that hands out the clients registered with it by address.
#pragma once

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/replica.h"
#include "kernels/backend.h"
#include "kvtransfer/fault_injecting_transport.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "tests/worker/fake_executor.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"
#include "worker/kv_port.h"

namespace tessera::coordinator::testing {

// One replica: FakeExecutor + Engine. Thread-safe.
class EngineReplica {
 public:
  // vocab_size must match the coordinator's model; eos: the model's EOS id. The fake executor
  // samples ids in [3, sample_below) (default: the whole vocabulary), so that tests can keep to
  // ids that have tokens.
  EngineReplica(std::string name, int32_t vocab_size, int32_t eos_token_id,
                int32_t max_num_seqs = 8, int32_t sample_below = 0);
  // A replica of `role` ("prefill" or "decode") that takes part in disaggregated serving: its
  // engine has a real (CPU) KV cache and KvPort on an in-process transport of `fabric`, so
  // reservations, KV sends, checksums and commits are the real ones; the fake executor decides
  // the tokens from the history alone, so they match a mixed replica's.
  EngineReplica(std::string name, int32_t vocab_size, int32_t eos_token_id, std::string role,
                std::shared_ptr<kvtransfer::InProcessFabric> fabric, int32_t max_num_seqs = 8,
                int32_t sample_below = 0);
  ~EngineReplica();

  ReplicaInfo info(const std::string& model_name) const;
  ReplicaLoad load() const;
  worker::Engine& engine() { return *engine_; }
  // Set its on_step before requests run (e.g. to slow steps down).
  worker::testing::FakeExecutor& executor() { return executor_; }
  std::unique_ptr<ReplicaClient> MakeClient();
  // New Generate calls fail with this (kUnavailable: the replica refuses before any token).
  void set_refuse(absl::Status status);
  int generate_calls() const;
  // Null for a mixed replica.
  worker::KvPort* kv_port() { return port_.get(); }
  // The KV transport's fault injection (disaggregated roles).
  kvtransfer::FaultInjectingTransport& faults() { return *transport_; }
  // Replaces the engine (before any request) by one whose KV reservations lapse after `lease`.
  void RestartEngine(absl::Duration kv_reservation_lease);

 private:
  class Client;
  void StartEngine(int32_t max_num_seqs, absl::Duration kv_reservation_lease = absl::Seconds(30));
  std::string name_;
  std::string role_ = "mixed";
  int32_t vocab_size_;
  int32_t max_num_seqs_ = 8;
  worker::ExecutorLimits limits_;
  worker::testing::FakeExecutor executor_;
  model::ModelConfig config_;
  // Disaggregated roles only (declared before the engine, which uses the port).
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<worker::KvCache> cache_;
  std::unique_ptr<kvtransfer::FaultInjectingTransport> transport_;  // over an InProcessTransport
  std::unique_ptr<worker::KvPort> port_;
  std::unique_ptr<worker::Engine> engine_;
  mutable absl::Mutex mu_;
  absl::Status refuse_ ABSL_GUARDED_BY(mu_);
  int generate_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

class EngineReplicaConnector final : public ReplicaConnector {
 public:
  void Add(const std::string& address, EngineReplica* replica);
  absl::StatusOr<std::unique_ptr<ReplicaClient>> Connect(const ReplicaInfo& info) override;

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, EngineReplica*> replicas_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::coordinator::testing
