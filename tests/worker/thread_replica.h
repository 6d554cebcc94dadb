// A replica of tp x pp ranks as threads of one process (in-process communicators), each rank's
// KV cache on an in-process transport of its own, and the leader's engine: what the
// disaggregation tests and benchmarks put on each side.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "model/config.h"
#include "model/weights.h"
#include "parallel/comm/communicator.h"
#include "tests/worker/replica_test_util.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"
#include "worker/kv_port.h"

namespace tessera::worker::testing {

struct ThreadReplicaOptions {
  Split split;
  std::string name;  // of the transports: NAME.rank
  bool stream_layers = true;
  ReplicaRankOptions rank;  // every rank's (ReplicaOptions(split) for the fixtures)
  SchedulerConfig scheduler;
  int threads_per_rank = 1;
};

class ThreadReplica {
 public:
  // Starts the ranks and waits (60 s at most) until the leader's engine runs: setup() says
  // whether it does. Everything referenced must outlive the replica.
  ThreadReplica(const model::ModelConfig& config, const model::WeightSource& weights,
                std::shared_ptr<kvtransfer::InProcessFabric> fabric, ThreadReplicaOptions options);
  ~ThreadReplica() { (void)Stop(); }

  const absl::Status& setup() const { return setup_; }
  Engine& engine() { return *engine_; }
  KvEndpoint& kv() { return *kv_; }
  KvCache& cache(int rank) { return *caches_[rank]; }

  // Shuts the engine down and stops every rank; the counters at the end in `final`.
  absl::Status Stop(EngineCounters* final = nullptr);

 private:
  absl::Status RunRank(int r);
  absl::Status RunRankBody(int r, parallel::Communicator& comm);

  const model::ModelConfig& config_;
  const model::WeightSource& weights_;
  std::shared_ptr<kvtransfer::InProcessFabric> fabric_;
  const ThreadReplicaOptions options_;
  std::vector<std::unique_ptr<parallel::Communicator>> group_;
  std::vector<KvCache*> caches_;
  std::vector<absl::Status> status_;
  std::vector<std::thread> threads_;
  absl::Notification ready_;
  absl::Notification stop_;
  absl::Status setup_;
  Engine* engine_ = nullptr;
  KvEndpoint* kv_ = nullptr;
  EngineCounters final_;
  bool stopped_ = false;
};

}  // namespace tessera::worker::testing
