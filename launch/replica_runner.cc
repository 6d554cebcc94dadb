#include "launch/replica_runner.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/net.h"
#include "common/status_macros.h"
#include "common/stream.h"
#include "common/tensor.h"
#include "launch/topology.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#if TESSERA_HAVE_MPI
#include "parallel/comm/mpi/mpi_runtime.h"
#endif
#ifdef TESSERA_HAVE_NCCL
#include "parallel/comm/nccl/nccl_communicator.h"
#endif
#if TESSERA_HAVE_GLOO
#include "parallel/comm/gloo/gloo_communicator.h"
#include "parallel/comm/rpc/grpc_store.h"
#include "parallel/comm/rpc/store_server.h"
#endif
#include "worker/replica.h"
#include "worker/replica_kv.h"

namespace tessera::launch {

void AddReplicaFlags(CLI::App& app, ReplicaFlags& flags) {
  app.add_option("--tensor-parallel-size,--tp", flags.tensor_parallel_size,
                 "Ranks that split each layer (Megatron-style tensor parallelism)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--pipeline-parallel-size,--pp", flags.pipeline_parallel_size,
                 "Pipeline stages (layers split across ranks)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--pp-layers", flags.pp_layers,
                 "Layers per pipeline stage, e.g. 10,6; auto balances each stage's decode weight "
                 "reads, counting the last stage's LM head (default: as even as possible)");
  app.add_option(
         "--pp-micro-batches", flags.pp_micro_batches,
         "Micro-batches each step is split into through the pipeline (0: 1); pays when stages "
         "have their own memory (GPUs, nodes)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--pp-steps-in-flight", flags.pp_steps_in_flight,
                 "Steps the leader keeps in the pipeline at once, each over other sequences, so "
                 "that every stage works during decode (0: one per stage; at most that)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--comm", flags.comm,
                 "Communicators: auto (MPI under mpirun; Gloo when the launcher — LWS, torchrun, "
                 "Slurm, --rank/--world-size — makes this process one of several ranks; else "
                 "threads), inproc, mpi, gloo")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "inproc", "mpi", "gloo"}));
  app.add_option("--comm-timeout-s", flags.comm_timeout_s,
                 "Longest wait for a peer rank before failing")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--rank", flags.rank.rank, "This process's rank (default: from the launcher)");
  app.add_option("--world-size", flags.rank.world_size, "Processes in the job (with --rank)");
  app.add_option("--rendezvous-host", flags.rendezvous_host,
                 "Gloo: host of rank 0's rendezvous store (default: LWS_LEADER_ADDRESS or "
                 "MASTER_ADDR, else 127.0.0.1)");
  app.add_option("--rendezvous-port", flags.rendezvous_port,
                 absl::StrCat("Gloo: port of rank 0's rendezvous store (0: MASTER_PORT, else ",
                              kDefaultRendezvousPort, ")"))
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--comm-host", flags.comm_host,
                 "Gloo: address this rank binds and tells its peers (default: 127.0.0.1 when the "
                 "rendezvous is on loopback, else this machine's address on the route to it)");
}

absl::StatusOr<std::vector<int64_t>> LayersPerStage(const model::ModelConfig& config,
                                                    const ReplicaFlags& flags) {
  parallel::ParallelConfig parallel;
  parallel.tp_size = flags.tensor_parallel_size;
  parallel.pp_size = flags.pipeline_parallel_size;
  if (!flags.pp_layers.empty() && flags.pp_layers != "auto") {
    absl::StatusOr<std::vector<int64_t>> layers = ParseLayerList(flags.pp_layers);
    if (!layers.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--pp-layers: ", layers.status().message()));
    }
    parallel.pp_layers = *std::move(layers);
  }
  // Checked before a split is computed: either needs a layer per stage.
  TESSERA_RETURN_IF_ERROR(parallel::ValidateParallelConfig(config, parallel));
  if (!parallel.pp_layers.empty()) return parallel.pp_layers;
  return flags.pp_layers == "auto" ? parallel::BalancedLayerSplit(config, parallel.pp_size)
                                   : parallel::EvenLayerSplit(config, parallel.pp_size);
}

namespace {

absl::StatusOr<worker::ReplicaRankOptions> RankOptions(const model::ModelConfig& config,
                                                       const EngineFlags& engine,
                                                       const ReplicaFlags& flags,
                                                       int32_t* max_model_len) {
  worker::ReplicaRankOptions o;
  o.parallel.tp_size = flags.tensor_parallel_size;
  o.parallel.pp_size = flags.pipeline_parallel_size;
  o.pp_micro_batches = flags.pp_micro_batches;
  o.pp_steps_in_flight =
      flags.pp_steps_in_flight > 0 ? flags.pp_steps_in_flight : flags.pipeline_parallel_size;
  TESSERA_ASSIGN_OR_RETURN(o.parallel.pp_layers, LayersPerStage(config, flags));
  TESSERA_ASSIGN_OR_RETURN(
      EngineLimits limits,
      ComputeEngineLimits(
          config, engine, o.parallel.tp_size, o.parallel.pp_size,
          *std::max_element(o.parallel.pp_layers.begin(), o.parallel.pp_layers.end())));
  *max_model_len = limits.max_model_len;
  o.model = limits.model;
  o.num_kv_blocks = limits.num_kv_blocks;
  o.block_size = engine.block_size;
  o.kv_cache_dtype = limits.kv_cache_dtype;
#ifdef TESSERA_HAVE_NCCL
  // GPU replicas of several ranks: TP and PP data over NCCL on each rank's GPU, the ids passed
  // over the host groups (plans, tokens and KV commands stay on the host communicator).
  if (engine.backend == "cuda" && o.parallel.tp_size * o.parallel.pp_size > 1) {
    const absl::Duration timeout = absl::Seconds(flags.comm_timeout_s);
    o.device_groups = [timeout](parallel::Communicator& host, kernels::Backend& backend) {
      parallel::NcclCommunicatorOptions nccl;
      nccl.timeout = timeout;
      return parallel::CreateNcclCommunicatorOver(host, backend.device().index, nccl);
    };
  }
#endif
  return o;
}

// One rank's life: load its shard (and put its KV cache on a transport), then lead or follow.
absl::Status RunRank(const model::ModelConfig& config, const model::WeightSource& weights,
                     kernels::Backend& backend, parallel::Communicator& comm,
                     const worker::ReplicaRankOptions& options, int32_t max_model_len,
                     const LeaderBody& leader, parallel::CommStats* stats,
                     const KvTransportFactory& kv_transports) {
  std::optional<parallel::TimedCommunicator> timed;
  if (stats != nullptr && comm.rank() == 0) timed.emplace(comm, *stats);
  parallel::Communicator& replica = timed ? *timed : comm;
  TESSERA_ASSIGN_OR_RETURN(worker::ReplicaRank rank,
                           worker::CreateReplicaRank(config, weights, backend, replica, options));
  // Declared before the executor and handler that use them, so destroyed after those.
  std::unique_ptr<kvtransfer::Transport> transport;
  std::unique_ptr<worker::KvPort> port;
  if (kv_transports) {
    TESSERA_ASSIGN_OR_RETURN(transport, kv_transports(comm.rank()));
    TESSERA_ASSIGN_OR_RETURN(
        port, worker::KvPort::Create(
                  *rank.cache, *transport,
                  worker::KvPortOptionsFor(rank.model->plan(), config.num_key_value_heads)));
  }
  if (!rank.worker->is_leader()) {
    if (port == nullptr) return worker::RunFollower(*rank.worker);
    worker::FollowerKvHandler handler(*port, comm.rank(), rank.worker.get());
    return worker::RunFollower(
        *rank.worker, [&handler](const std::vector<int64_t>& c) { return handler.Handle(c); });
  }
  TESSERA_ASSIGN_OR_RETURN(auto executor,
                           worker::ReplicaExecutor::Create(
                               *rank.worker, {.max_steps_in_flight = options.pp_steps_in_flight}));
  absl::Status status;
  {
    std::unique_ptr<worker::ReplicaKvPort> replica_port;
    worker::KvEndpoint* kv = port.get();
    if (port != nullptr && comm.size() > 1) {
      absl::StatusOr<std::unique_ptr<worker::ReplicaKvPort>> made =
          worker::ReplicaKvPort::Create(*port, *executor);
      if (made.ok()) {
        replica_port = std::move(*made);
        kv = replica_port.get();
      } else {
        status = made.status();
      }
    }
    if (status.ok()) status = leader(*executor, max_model_len, kv);
  }
  const absl::Status stopped = executor->Stop();
  return status.ok() ? stopped : status;
}

#if TESSERA_HAVE_GLOO
// host:port of rank 0's rendezvous store, from the flags and the launcher's leader address.
std::pair<std::string, int> RendezvousAddress(const ReplicaFlags& flags, const RankInfo& info) {
  std::string host = flags.rendezvous_host;
  int port = flags.rendezvous_port;
  std::string leader = info.leader_address;
  // torchrun's "MASTER_ADDR:MASTER_PORT" (one colon: not a bare IPv6 address).
  int leader_port = 0;
  const size_t colon = leader.rfind(':');
  if (colon != std::string::npos && leader.find(':') == colon &&
      absl::SimpleAtoi(leader.substr(colon + 1), &leader_port)) {
    leader.resize(colon);
  }
  if (host.empty()) host = leader.empty() ? "127.0.0.1" : leader;
  if (port == 0) port = leader_port > 0 ? leader_port : kDefaultRendezvousPort;
  return {host, port};
}

// Dials the store until rank 0's server answers (it may start after this rank) or `deadline`.
absl::Status WaitForStore(parallel::Store& store, const std::string& target, int rank,
                          absl::Time deadline) {
  absl::Status status;
  for (;;) {
    status = store.Set(absl::StrCat("tessera/arrived/", rank), "");
    if (status.ok() || !absl::IsUnavailable(status)) return status;
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(200));  // rank 0 is not up yet: retry
  }
  return absl::DeadlineExceededError(
      absl::StrCat("rank ", rank, ": replica rank 0's rendezvous store at ", target,
                   " did not answer in time (is rank 0 running?): ", status.message()));
}

// This process is rank `info.rank` of a replica whose ranks are processes started without
// mpirun: rendezvous through rank 0's store, then run the rank over a GlooCommunicator.
absl::Status RunGlooRank(const model::ModelConfig& config, const model::WeightSource& weights,
                         const EngineFlags& engine, const ReplicaFlags& flags, const RankInfo& info,
                         const worker::ReplicaRankOptions& options, int32_t max_model_len,
                         const LeaderBody& leader, bool* is_leader,
                         parallel::CommStats* leader_comm_stats,
                         const KvTransportFactory& kv_transports) {
  const int ranks = flags.tensor_parallel_size * flags.pipeline_parallel_size;
  if (info.world_size != ranks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "this process is rank ", info.rank, " of ", info.world_size, " (from ", info.source,
        ") but tensor-parallel size ", flags.tensor_parallel_size, " x pipeline-parallel size ",
        flags.pipeline_parallel_size, " needs ", ranks, " ranks"));
  }
  const absl::Duration timeout = absl::Seconds(flags.comm_timeout_s);
  const absl::Time deadline = absl::Now() + timeout;
  const auto [host, port] = RendezvousAddress(flags, info);
  const bool loopback = IsLoopbackHost(host);
  std::unique_ptr<parallel::StoreServer> server;  // rank 0's, alive as long as the rank runs
  std::string target = HostPort(host, port);
  if (info.rank == 0) {
    // Loopback unless the peers are elsewhere (then every interface: the pod's address).
    const std::string listen = HostPort(ListenHostFor(host), port);
    absl::StatusOr<std::unique_ptr<parallel::StoreServer>> made =
        parallel::StoreServer::Create(listen);
    if (!made.ok()) {
      return absl::Status(made.status().code(),
                          absl::StrCat("rank 0: cannot host the replica's rendezvous store on ",
                                       listen, " (--rendezvous-port): ", made.status().message()));
    }
    server = std::move(*made);
    target = HostPort(loopback ? HostOf(listen) : "127.0.0.1", server->port());
  }
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<parallel::GrpcStore> grpc,
                           parallel::GrpcStore::Create(target));
  std::shared_ptr<parallel::Store> store(std::move(grpc));  // shared with the communicators
  TESSERA_RETURN_IF_ERROR(WaitForStore(*store, target, info.rank, deadline));
  // The rendezvous gets a full timeout of its own (at most twice it in all) and so does every op.
  parallel::GlooCommunicatorOptions comm_options;
  comm_options.timeout = timeout;
  // What the peers dial: --comm-host, else the address toward rank 0's (a hostname may resolve
  // to 127.0.1.1, or not at all).
  comm_options.hostname = flags.comm_host.empty() ? AdvertiseHostToward(host) : flags.comm_host;
  comm_options.key_prefix = "tessera/replica";
  absl::StatusOr<std::unique_ptr<parallel::GlooCommunicator>> made =
      parallel::GlooCommunicator::Create(store, info.rank, ranks, comm_options);
  if (!made.ok()) {
    return absl::Status(made.status().code(),
                        absl::StrCat("rank ", info.rank, " of ", ranks,
                                     ": the replica's ranks did "
                                     "not all arrive within --comm-timeout-s ",
                                     flags.comm_timeout_s, "s (rendezvous at ",
                                     HostPort(host, port), "): ", made.status().message()));
  }
  std::unique_ptr<parallel::GlooCommunicator> replica = std::move(*made);
  *is_leader = info.rank == 0;
  TESSERA_ASSIGN_OR_RETURN(const int on_host, HostLocalIndex(*replica, ThisHostName()));
  TESSERA_ASSIGN_OR_RETURN(auto backend, MakeRankBackend(engine, engine.threads, on_host));
  absl::Status status = RunRank(config, weights, *backend, *replica, options, max_model_len, leader,
                                leader_comm_stats, kv_transports);
  if (!status.ok()) replica->Abort();  // the peers fail at once instead of at their timeout
  return status;
}
#endif

}  // namespace

absl::StatusOr<int> HostLocalIndex(parallel::Communicator& replica, const std::string& host_name) {
  constexpr int64_t kName = 256;  // HOST_NAME_MAX is 64 on Linux
  std::vector<char> mine(kName, '\0');
  std::memcpy(mine.data(), host_name.data(), std::min<size_t>(host_name.size(), kName - 1));
  std::vector<char> all(static_cast<size_t>(kName * replica.size()));
  CpuStream host;
  TESSERA_RETURN_IF_ERROR(replica.AllGather(
      TensorView(mine.data(), DataType::kI8, {kName}),
      MutableTensorView(all.data(), DataType::kI8, {replica.size() * kName}), host));
  int index = 0;
  for (int r = 0; r < replica.rank(); ++r) {
    index += std::memcmp(all.data() + kName * r, mine.data(), kName) == 0 ? 1 : 0;
  }
  return index;
}

absl::Status RunReplica(const model::ModelConfig& config, const model::WeightSource& weights,
                        const EngineFlags& engine, const ReplicaFlags& flags,
                        const LeaderBody& leader, bool* is_leader,
                        parallel::CommStats* leader_comm_stats,
                        const KvTransportFactory& kv_transports) {
  int32_t max_model_len = 0;
  TESSERA_ASSIGN_OR_RETURN(worker::ReplicaRankOptions options,
                           RankOptions(config, engine, flags, &max_model_len));
  const int ranks = flags.tensor_parallel_size * flags.pipeline_parallel_size;
  TESSERA_RETURN_IF_ERROR(ValidateBackend(engine, ranks));
  const absl::Duration timeout = absl::Seconds(flags.comm_timeout_s);
  TESSERA_ASSIGN_OR_RETURN(RankInfo info, DiscoverRank(flags.rank));
  const bool use_mpi = flags.comm == "mpi" ||
                       (flags.comm == "auto" && info.launched_by_mpirun() && info.world_size > 1);
  const bool use_gloo = flags.comm == "gloo" ||
                        (flags.comm == "auto" && info.world_size > 1 && !info.launched_by_mpirun());
  *is_leader = true;

  if (use_gloo && !use_mpi) {
#if TESSERA_HAVE_GLOO
    return RunGlooRank(config, weights, engine, flags, info, options, max_model_len, leader,
                       is_leader, leader_comm_stats, kv_transports);
#else
    return absl::FailedPreconditionError(absl::StrCat(
        "this process is rank ", info.rank, " of ", info.world_size, " (from ", info.source,
        "), but this tessera was built without Gloo (TESSERA_WITH_GLOO=OFF): multi-process "
        "replicas need it, or mpirun"));
#endif
  }

  if (use_mpi) {
#if TESSERA_HAVE_MPI
    TESSERA_ASSIGN_OR_RETURN(auto mpi, parallel::MpiRuntime::Init());
    const bool shared = flags.mpi_replica_color >= 0;  // one replica of several in the job
    const int expected = shared ? flags.mpi_world_size : ranks;
    if (mpi->world_size() != expected) {
      return absl::InvalidArgumentError(
          shared ? absl::StrCat("the MPI job has ", mpi->world_size(),
                                " processes but the topology has ", expected, " ranks")
                 : absl::StrCat("the MPI job has ", mpi->world_size(),
                                " processes but tensor-parallel size ", flags.tensor_parallel_size,
                                " x pipeline-parallel size ", flags.pipeline_parallel_size,
                                " needs ", ranks));
    }
    parallel::MpiCommunicatorOptions comm_options;
    comm_options.timeout = timeout;
    absl::Status status;
    {
      TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<parallel::Communicator> world,
                               mpi->CreateWorld(comm_options));
      // Every process of the job takes part in the split, each into its replica's communicator.
      std::unique_ptr<parallel::Communicator> split;
      if (shared) {
        TESSERA_ASSIGN_OR_RETURN(split,
                                 world->Split(flags.mpi_replica_color, flags.mpi_replica_key));
        if (split->size() != ranks) {
          return absl::InvalidArgumentError(
              absl::StrCat("replica ", flags.mpi_replica_color, " has ", split->size(),
                           " ranks in the MPI job, its pool needs ", ranks));
        }
      }
      parallel::Communicator& replica = shared ? *split : *world;
      *is_leader = replica.rank() == 0;
      TESSERA_ASSIGN_OR_RETURN(const int on_host, HostLocalIndex(replica, ThisHostName()));
      TESSERA_ASSIGN_OR_RETURN(auto backend, MakeRankBackend(engine, engine.threads, on_host));
      status = RunRank(config, weights, *backend, replica, options, max_model_len, leader,
                       leader_comm_stats, kv_transports);
      if (!status.ok()) replica.Abort();
    }
    return status;
#else
    return absl::FailedPreconditionError(
        "this tessera was built without MPI (TESSERA_WITH_MPI=OFF); use --comm inproc");
#endif
  }

  if (info.world_size > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this process is rank ", info.rank, " of ", info.world_size, " (from ", info.source,
        "); multi-process replicas run under mpirun or with --comm gloo"));
  }
  // Ranks as threads, each with its own CPU backend and a share of the cores.
  TESSERA_ASSIGN_OR_RETURN(auto group, parallel::CreateInProcessGroup(ranks, timeout));
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads_per_rank =
      engine.threads > 0 ? std::max(1, engine.threads / ranks) : std::max(1, cores / ranks);
  std::vector<absl::Status> status(ranks);
  std::vector<std::thread> threads;
  threads.reserve(ranks);
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      auto backend = MakeRankBackend(engine, threads_per_rank, r);
      if (!backend.ok()) {
        status[r] = backend.status();
      } else {
        status[r] = RunRank(config, weights, **backend, *group[r], options, max_model_len, leader,
                            leader_comm_stats, kv_transports);
      }
      // A failed rank must not leave its peers waiting for the timeout.
      if (!status[r].ok()) group[r]->Abort();
    });
  }
  for (std::thread& t : threads) t.join();
  // The first error that is not just the echo of another rank's abort.
  for (const absl::Status& s : status) {
    if (!s.ok() && s.code() != absl::StatusCode::kAborted) return s;
  }
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace tessera::launch
