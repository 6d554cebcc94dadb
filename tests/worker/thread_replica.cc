#include "tests/worker/thread_replica.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#include "worker/replica.h"
#include "worker/replica_kv.h"

namespace tessera::worker::testing {

ThreadReplica::ThreadReplica(const model::ModelConfig& config, const model::WeightSource& weights,
                             std::shared_ptr<kvtransfer::InProcessFabric> fabric,
                             ThreadReplicaOptions options)
    : config_(config), weights_(weights), fabric_(std::move(fabric)), options_(std::move(options)) {
  const Split& split = options_.split;
  const int n = split.tp * split.pp;
  caches_.resize(n);
  status_.resize(n);
  auto group = parallel::CreateInProcessGroup(
      n, {.timeout = absl::Seconds(30), .synchronous_sends = split.synchronous_sends});
  if (!group.ok()) {
    setup_ = group.status();
    return;
  }
  group_ = std::move(*group);
  for (int r = 0; r < n; ++r) threads_.emplace_back([this, r] { status_[r] = RunRank(r); });
  if (!ready_.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    setup_ = absl::DeadlineExceededError("the replica did not come up");
  }
}

absl::Status ThreadReplica::Stop(EngineCounters* final) {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  stop_.Notify();
  for (std::thread& t : threads_) t.join();
  if (final != nullptr) *final = final_;
  for (const absl::Status& s : status_) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ThreadReplica::RunRank(int r) {
  parallel::Communicator& comm = *group_[r];
  absl::Status status = RunRankBody(r, comm);
  if (!status.ok()) {
    comm.Abort();
    if (r == 0 && !ready_.HasBeenNotified()) {
      setup_ = status;
      ready_.Notify();
    }
  }
  return status;
}

absl::Status ThreadReplica::RunRankBody(int r, parallel::Communicator& comm) {
  auto backend = kernels::CreateCpuBackend({.num_threads = options_.threads_per_rank});
  if (!backend.ok()) return backend.status();
  absl::StatusOr<ReplicaRank> rank =
      CreateReplicaRank(config_, weights_, **backend, comm, options_.rank);
  if (!rank.ok()) return rank.status();
  caches_[r] = rank->cache.get();
  kvtransfer::TransportOptions t;
  t.name = absl::StrCat(options_.name, ".", r);
  auto transport = kvtransfer::InProcessTransport::Create(fabric_, t);
  if (!transport.ok()) return transport.status();
  auto port = KvPort::Create(*rank->cache, **transport,
                             KvPortOptionsFor(rank->model->plan(), config_.num_key_value_heads));
  if (!port.ok()) return port.status();
  if (!rank->worker->is_leader()) {
    FollowerKvHandler handler(**port, r, rank->worker.get());
    return RunFollower(*rank->worker,
                       [&handler](const std::vector<int64_t>& c) { return handler.Handle(c); });
  }
  auto executor = ReplicaExecutor::Create(*rank->worker,
                                          {.max_steps_in_flight = options_.split.steps_in_flight});
  if (!executor.ok()) return executor.status();
  std::unique_ptr<ReplicaKvPort> replica_port;
  kv_ = port->get();
  if (comm.size() > 1) {
    auto made = ReplicaKvPort::Create(**port, **executor);
    if (!made.ok()) return made.status();
    replica_port = std::move(*made);
    kv_ = replica_port.get();
  }
  EngineOptions e;
  e.scheduler = options_.scheduler;
  e.kv_port = kv_;
  e.kv_stream_layers = options_.stream_layers;
  auto engine = Engine::Create(**executor, config_, e);
  if (!engine.ok()) return engine.status();
  engine_ = engine->get();
  ready_.Notify();
  stop_.WaitForNotification();
  absl::Status shutdown = (*engine)->Shutdown(absl::Seconds(5));
  final_ = (*engine)->counters();
  engine->reset();
  replica_port.reset();
  absl::Status stopped = (*executor)->Stop();
  return shutdown.ok() ? stopped : shutdown;
}

}  // namespace tessera::worker::testing
