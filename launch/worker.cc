// `tessera worker`: one replica of a model that serves the coordinator. The replica's leader (rank
// 0) runs the engine behind the tessera.v1.Replica gRPC service, registers with the coordinator
// and heartbeats; under mpirun the other ranks follow its steps. SIGINT/SIGTERM: deregister, drain
// (--drain-timeout), shut down, exit 0.
#include <fcntl.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/logging.h"
#include "common/net.h"
#include "common/status_macros.h"
#include "kvtransfer/grpc/grpc_transport.h"
#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/model_flags.h"
#include "launch/rank_env.h"
#include "launch/replica_runner.h"
#include "launch/signals.h"
#include "launch/topology.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "parallel/shard_plan.h"
#include "worker/engine.h"
#include "worker/kv_port.h"
#include "worker/kv_preconnector.h"
#include "worker/rpc/registration.h"
#include "worker/rpc/replica_server.h"
#if TESSERA_HAVE_UCX
#include "kvtransfer/ucx/ucx_transport.h"
#endif

namespace tessera::launch {
namespace {

struct WorkerFlags {
  std::string model;
  std::string coordinator;
  std::string listen;          // empty: ResolveAddresses picks
  std::string advertise_host;  // empty: ResolveAddresses picks
  std::string replica_name;
  std::string role = "mixed";
  std::string served_model_name;
  double drain_timeout_s = 30.0;
  double register_timeout_s = 60.0;
  // Disaggregated roles: the KV transport and where it listens.
  std::string kv_transport = "grpc";
  std::string kv_listen;  // gRPC transport; default: the --listen host, any port
  double kv_reservation_lease_s = 10.0;
  bool kv_stream_layers = true;
  EngineFlags engine;
  ReplicaFlags replica;
  // A replica of a topology file: everything above comes from it (flags given explicitly for
  // --coordinator, --listen, --advertise-host and --replica-name win).
  std::string topology;
  std::string pool;  // without mpirun: the pool and replica this process serves
  int replica_index = 0;
  bool check = false;  // validate the configuration and exit
};

// Fills `flags` from the topology for the replica this process is part of: under mpirun, the
// world rank's (ranks laid out pool by pool, replica by replica); otherwise --pool/--replica.
absl::Status ApplyTopology(WorkerFlags& flags) {
  TESSERA_ASSIGN_OR_RETURN(const Topology t, LoadTopology(flags.topology));
  if (t.model == "demo") {
    return absl::InvalidArgumentError(
        "--topology: model 'demo' is written by tessera launch; give workers the model directory");
  }
  TESSERA_ASSIGN_OR_RETURN(const RankInfo rank, DiscoverRank(flags.replica.rank));
  // Without mpirun, a launcher that starts one process per rank (LeaderWorkerSet pods, torchrun,
  // --rank/--world-size) gives --pool/--replica: this process is one rank of that replica, and
  // the ranks meet through a Gloo rendezvous (launch/replica_runner.h).
  const bool rank_of_replica =
      rank.world_size > 1 && !rank.launched_by_mpirun() && !flags.pool.empty();
  RankPlacement place;
  if (rank.world_size > 1 && !rank_of_replica) {
    if (!flags.pool.empty()) {
      return absl::InvalidArgumentError(
          "--pool is for single-process workers; under mpirun the rank picks the pool");
    }
    if (rank.world_size != t.total_ranks()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the job has ", rank.world_size, " ranks (from ", rank.source,
                       ") but the topology ", flags.topology, " has ", t.total_ranks()));
    }
    TESSERA_ASSIGN_OR_RETURN(place, PlaceRank(t, rank.rank));
    flags.replica.comm = "mpi";
    flags.replica.mpi_replica_color = place.replica_index;
    flags.replica.mpi_replica_key = place.replica_rank;
    flags.replica.mpi_world_size = t.total_ranks();
  } else {
    const auto it = std::find_if(t.pools.begin(), t.pools.end(),
                                 [&](const TopologyPool& p) { return p.name == flags.pool; });
    if (it == t.pools.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--pool '", flags.pool, "' is not a pool of ", flags.topology));
    }
    if (flags.replica_index < 0 || flags.replica_index >= it->replicas) {
      return absl::InvalidArgumentError(absl::StrCat("--replica ", flags.replica_index,
                                                     " is outside pool ", it->name, "'s ",
                                                     it->replicas, " replicas"));
    }
    place.pool = static_cast<int>(it - t.pools.begin());
    place.replica = flags.replica_index;
    place.replica_name = absl::StrCat(it->name, "-", flags.replica_index);
    if (rank_of_replica) {
      const int ranks = it->tensor_parallel_size * it->pipeline_parallel_size;
      if (rank.world_size != ranks) {
        return absl::InvalidArgumentError(
            absl::StrCat("this process is rank ", rank.rank, " of ", rank.world_size, " (from ",
                         rank.source, ") but a replica of pool ", it->name, " has ", ranks,
                         " ranks (tensor_parallel_size x pipeline_parallel_size)"));
      }
      flags.replica.comm = "gloo";  // one rank per process
    } else {
      flags.replica.comm = "inproc";  // the replica's ranks as threads of this process
    }
  }
  const TopologyPool& pool = t.pools[place.pool];
  flags.model = t.model;
  flags.served_model_name = t.served_model_name.empty() ? t.model : t.served_model_name;
  flags.role = pool.role;
  flags.kv_transport = t.kv_transport;
  flags.engine = pool.engine;
  flags.engine.backend = pool.backend;
  flags.engine.device = pool.devices.empty() ? 0 : pool.devices[0];
  if (absl::Status s =
          ValidateBackend(flags.engine, pool.tensor_parallel_size * pool.pipeline_parallel_size);
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("pool ", pool.name, ": ", s.message()));
  }
  flags.replica.tensor_parallel_size = pool.tensor_parallel_size;
  flags.replica.pipeline_parallel_size = pool.pipeline_parallel_size;
  flags.replica.pp_layers = pool.pp_layers;
  if (flags.replica_name.empty()) flags.replica_name = place.replica_name;
  if (flags.coordinator.empty()) {
    flags.coordinator = HostPort(t.coordinator.host, t.coordinator.internal_port);
  }
  return absl::OkStatus();
}

// The KV transport of a prefill or decode replica (launch/ names the concrete ones).
absl::StatusOr<std::unique_ptr<kvtransfer::Transport>> MakeKvTransport(const WorkerFlags& flags,
                                                                       const std::string& name) {
  kvtransfer::TransportOptions base;
  base.name = name;
  if (flags.kv_transport == "grpc") {
    kvtransfer::GrpcTransportOptions grpc;
    grpc.listen_address =
        flags.kv_listen.empty() ? HostPort(HostOf(flags.listen), 0) : flags.kv_listen;
    // Peers dial the advertised host, unless --kv-listen names an address of its own.
    if (IsWildcardHost(HostOf(grpc.listen_address)) || flags.kv_listen.empty()) {
      grpc.advertise_host = flags.advertise_host;
    }
    TESSERA_ASSIGN_OR_RETURN(auto t, kvtransfer::GrpcTransport::Create(base, grpc));
    return std::unique_ptr<kvtransfer::Transport>(std::move(t));
  }
#if TESSERA_HAVE_UCX
  if (flags.kv_transport == "ucx") {
    kvtransfer::UcxTransportOptions ucx;
    ucx.base = base;
    TESSERA_ASSIGN_OR_RETURN(auto t, kvtransfer::UcxTransport::Create(ucx));
    return std::unique_ptr<kvtransfer::Transport>(std::move(t));
  }
#endif
  return absl::InvalidArgumentError(absl::StrCat("--kv-transport ", flags.kv_transport,
                                                 " is not available in this build (grpc",
#if TESSERA_HAVE_UCX
                                                 ", ucx",
#endif
                                                 ")"));
}

// Where this replica listens, and the host that the coordinator and KV peers dial. Unless --listen
// says: loopback when the coordinator is on this machine, every interface when it is not (the
// coordinator and the other pools' ranks dial in from other hosts). Unless --advertise-host says:
// the --listen host, or for a wildcard the address of the interface that reaches the coordinator
// (what hosts on its network can dial, as vLLM's get_ip()), else this machine's hostname.
void ResolveAddresses(WorkerFlags& flags) {
  const std::string coordinator_host = HostOf(flags.coordinator);
  if (flags.listen.empty()) flags.listen = HostPort(ListenHostFor(coordinator_host), 0);
  if (!flags.advertise_host.empty()) return;
  const std::string listen_host = HostOf(flags.listen);
  flags.advertise_host =
      IsWildcardHost(listen_host) ? AdvertiseHostToward(coordinator_host) : listen_host;
}

// --check: what can be checked without running — the flags, the topology, and the model's split
// when the model is on this machine.
absl::Status CheckWorker(const WorkerFlags& flags) {
  TESSERA_RETURN_IF_ERROR(ValidateEngineSettings(flags.engine, "engine"));
  TESSERA_RETURN_IF_ERROR(ValidateBackend(
      flags.engine, flags.replica.tensor_parallel_size * flags.replica.pipeline_parallel_size));
  std::string model_note = "not on this machine: its split is not checked";
  std::error_code error;
  absl::StatusOr<model::ModelConfig> config = absl::NotFoundError("");
  if (std::filesystem::is_directory(flags.model, error)) {
    config = model::LoadModelConfig(flags.model);
    if (!config.ok()) return config.status();
  } else {
    ModelShapeFlags shape;
    shape.preset = flags.model;
    config = ModelConfigFromFlags(shape);
  }
  if (config.ok()) {
    TESSERA_RETURN_IF_ERROR(LayersPerStage(*config, flags.replica).status());  // --pp-layers too
    model_note = "its split checked";
  }
  std::printf(
      "tessera worker: configuration ok — replica %s, role %s, tp %d, pp %d, coordinator %s, "
      "listen %s (dialled at %s), kv transport %s, model %s (%s)\n",
      flags.replica_name.empty() ? "(ROLE@ADDRESS)" : flags.replica_name.c_str(),
      flags.role.c_str(), flags.replica.tensor_parallel_size, flags.replica.pipeline_parallel_size,
      flags.coordinator.c_str(), flags.listen.c_str(), flags.advertise_host.c_str(),
      flags.kv_transport.c_str(), flags.model.c_str(), model_note.c_str());
  return absl::OkStatus();
}

absl::Status RunWorker(WorkerFlags flags) {
  if (!flags.topology.empty()) TESSERA_RETURN_IF_ERROR(ApplyTopology(flags));
  if (flags.model.empty()) return absl::InvalidArgumentError("--model (or --topology) is required");
  if (flags.coordinator.empty()) {
    return absl::InvalidArgumentError("--coordinator (or --topology) is required");
  }
  ResolveAddresses(flags);
  if (flags.check) return CheckWorker(flags);
  // The model: a Hugging Face directory, or a preset shape with random weights (demos, tests).
  model::ModelConfig config;
  std::unique_ptr<model::WeightSource> weights;
  std::error_code error;
  if (std::filesystem::is_directory(flags.model, error)) {
    TESSERA_ASSIGN_OR_RETURN(config, model::LoadModelConfig(flags.model));
    TESSERA_ASSIGN_OR_RETURN(weights, model::SafetensorsCheckpoint::Open(flags.model));
  } else {
    ModelShapeFlags shape;
    shape.preset = flags.model;
    auto preset = ModelConfigFromFlags(shape);
    if (!preset.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model '", flags.model,
                       "' is neither a model directory nor a preset (tiny, llama-1b, llama-8b)"));
    }
    config = *preset;
    weights = model::MakeRandomWeights(config, DataType::kF32, /*seed=*/1);
  }
  const std::string served_model_name =
      flags.served_model_name.empty() ? flags.model : flags.served_model_name;
  InstallTerminationHandlers();

  // Prefill and decode replicas move KV: every rank's cache on a transport of its own.
  KvTransportFactory kv_transports;
  if (flags.role != "mixed") {
    kv_transports = [&flags](int replica_rank) {
      const std::string name = flags.replica_name.empty() ? flags.role : flags.replica_name;
      return MakeKvTransport(flags,
                             replica_rank == 0 ? name : absl::StrCat(name, ".", replica_rank));
    };
  }
  auto leader = [&](worker::StepExecutor& executor, int32_t max_model_len,
                    worker::KvEndpoint* port) -> absl::Status {
    worker::EngineOptions engine_options = EngineOptionsFor(flags.engine, max_model_len);
    TESSERA_ASSIGN_OR_RETURN(
        std::unique_ptr<model::TokenVocabulary> vocabulary,
        LoadTokenVocabulary(flags.model, static_cast<int32_t>(config.vocab_size)));
    engine_options.token_vocabulary = vocabulary.get();
    if (port != nullptr) {
      engine_options.kv_port = port;
      engine_options.kv_reservation_lease = absl::Seconds(flags.kv_reservation_lease_s);
      engine_options.kv_stream_layers = flags.kv_stream_layers;
    }
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<worker::Engine> engine,
                             worker::Engine::Create(executor, config, engine_options));
    worker::rpc::ReplicaServerOptions server_options;
    server_options.address = flags.listen;
    server_options.service.kv_port = port;
    absl::StatusOr<std::unique_ptr<worker::rpc::ReplicaServer>> server =
        worker::rpc::ReplicaServer::Create(*engine, server_options);
    if (!server.ok()) {
      (void)engine->Shutdown(absl::ZeroDuration());
      return server.status();
    }
    const std::string address = HostPort(flags.advertise_host, (*server)->port());
    tessera::v1::ReplicaDescriptor descriptor;
    descriptor.set_name(flags.replica_name.empty() ? absl::StrCat(flags.role, "@", address)
                                                   : flags.replica_name);
    descriptor.set_address(address);
    descriptor.set_role(flags.role);
    descriptor.set_model_name(served_model_name);
    descriptor.set_max_model_len(max_model_len);
    descriptor.set_vocab_size(static_cast<int32_t>(config.vocab_size));
    descriptor.set_block_size(flags.engine.block_size);
    descriptor.set_kv_blocks_total(executor.limits().num_blocks);
    descriptor.set_max_num_seqs(flags.engine.max_num_seqs);
    descriptor.set_tensor_parallel_size(flags.replica.tensor_parallel_size);
    descriptor.set_pipeline_parallel_size(flags.replica.pipeline_parallel_size);
    std::unique_ptr<worker::KvPreconnector> preconnector;
    if (port != nullptr) {
      for (const worker::KvRankLayout& rank : port->layouts()) {
        descriptor.add_kv_descriptors(rank.descriptor);
      }
      if (!port->layouts().empty()) {
        descriptor.set_kv_cache_dtype(std::string(DataTypeName(port->layouts()[0].dtype)));
      }
      if (flags.role == "prefill") {
        preconnector = std::make_unique<worker::KvPreconnector>(
            [port](const std::string& d) { return port->Preconnect(d); });
      }
    }
    worker::rpc::RegistrationOptions registration_options;
    registration_options.coordinator = flags.coordinator;
    registration_options.register_timeout = absl::Seconds(flags.register_timeout_s);
    if (port != nullptr && flags.role == "decode") {
      registration_options.on_kv_leases = [e = engine.get()](const std::vector<uint64_t>& tokens) {
        e->RenewKv(tokens);
      };
    }
    if (preconnector != nullptr) {
      registration_options.on_kv_peers =
          [p = preconnector.get()](const std::vector<std::string>& peers) { p->Offer(peers); };
    }
    worker::Engine* engine_ptr = engine.get();
    absl::StatusOr<std::unique_ptr<worker::rpc::RegistrationClient>> registration =
        worker::rpc::RegistrationClient::Create(
            descriptor,
            [engine_ptr, port_ptr = port] {
              if (port_ptr == nullptr) return worker::rpc::ToReplicaStats(engine_ptr->counters());
              const worker::KvPortCounters kv = port_ptr->counters();
              return worker::rpc::ToReplicaStats(engine_ptr->counters(), &kv);
            },
            registration_options);
    if (!registration.ok()) {
      (*server)->Shutdown(absl::Now() + absl::Seconds(1));
      (void)engine->Shutdown(absl::ZeroDuration());
      return registration.status();
    }
    std::printf("tessera worker: replica %s serving on %s (registered with %s)\n",
                descriptor.name().c_str(), address.c_str(), flags.coordinator.c_str());
    std::fflush(stdout);

    std::optional<int> signal;
    while (!(signal = WaitForTerminationSignal(absl::Seconds(1))).has_value()) {
    }
    const int signo = *signal;
    TESSERA_LOG(INFO) << "worker: " << (signo == SIGINT ? "SIGINT" : "SIGTERM")
                      << ": deregistering and draining (up to " << flags.drain_timeout_s << "s)";
    (*registration)->Stop();
    const int32_t aborted = (*server)->Drain(absl::Seconds(flags.drain_timeout_s));
    (*server)->Shutdown(absl::Now() + absl::Seconds(5));
    absl::Status stopped = engine->Shutdown(absl::Seconds(5));
    if (!stopped.ok() && stopped.code() != absl::StatusCode::kDeadlineExceeded) return stopped;
    TESSERA_LOG(INFO) << "worker: stopped (" << aborted
                      << " requests aborted at the drain timeout)";
    return absl::OkStatus();
  };
  bool is_leader = false;
  return RunReplica(config, *weights, flags.engine, flags.replica, leader, &is_leader,
                    /*leader_comm_stats=*/nullptr, kv_transports);
}

}  // namespace

Command RegisterWorker(CLI::App& app) {
  auto flags = std::make_shared<WorkerFlags>();
  CLI::App* sub = app.add_subcommand(
      "worker", "Serve one model replica to a coordinator (register, heartbeat, take requests)");
  sub->add_option("--model", flags->model,
                  "Hugging Face model directory, or a preset with random weights (tiny, "
                  "llama-1b, llama-8b); required unless --topology gives it");
  sub->add_option("--coordinator", flags->coordinator,
                  "host:port of the coordinator's internal (Registry) service (default with "
                  "--topology: its coordinator.host:internal_port)");
  sub->add_option("--topology", flags->topology,
                  "A topology file (docs/topology.md): the model, pool, role, TP/PP, engine and "
                  "KV transport come from it — under mpirun for the world rank's replica, "
                  "otherwise for --pool/--replica");
  sub->add_option("--pool", flags->pool, "With --topology and no mpirun: the pool to serve");
  sub->add_option("--replica", flags->replica_index,
                  "With --topology and no mpirun: which replica of --pool (from 0)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--check", flags->check,
                "Validate the configuration (flags, topology, the model's split when it is "
                "here), print it and exit");
  sub->add_option("--listen", flags->listen,
                  "Address of this replica's gRPC service (port 0: any; default 127.0.0.1:0 when "
                  "--coordinator is a loopback address, else 0.0.0.0:0)");
  sub->add_option("--advertise-host", flags->advertise_host,
                  "Host the coordinator and KV peers should dial (default: the --listen host; for "
                  "a wildcard, this machine's address on the route to the coordinator)");
  sub->add_option("--replica-name", flags->replica_name,
                  "Unique name in the coordinator's logs and metrics (default: ROLE@ADDRESS)");
  sub->add_option("--role", flags->role, "Pool: mixed, prefill or decode")
      ->capture_default_str()
      ->check(CLI::IsMember({"mixed", "prefill", "decode"}));
  sub->add_option("--kv-transport", flags->kv_transport,
                  "How prefill and decode replicas move KV: grpc, or ucx (RDMA / cuda_ipc on real "
                  "fabrics, tcp on loopback)")
      ->capture_default_str()
      ->check(CLI::IsMember({"grpc", "ucx"}));
  sub->add_option("--kv-listen", flags->kv_listen,
                  "host:port of the gRPC KV transport (default: the --listen host, any port)");
  sub->add_option("--kv-reservation-lease", flags->kv_reservation_lease_s,
                  "Seconds a decode replica holds blocks reserved for a prefill that does not "
                  "arrive (renewed with every heartbeat while the coordinator waits on it)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option(
         "--kv-stream-layers", flags->kv_stream_layers,
         "Prefill replicas: each prompt step sends the blocks it fills, each layer as soon "
         "as it is written (true), or the whole prompt's KV after its last step (false)")
      ->capture_default_str();
  sub->add_option("--served-model-name", flags->served_model_name,
                  "Model name clients use (default: --model as given)");
  sub->add_option("--drain-timeout", flags->drain_timeout_s,
                  "Seconds requests in flight get to finish on SIGINT/SIGTERM")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--register-timeout", flags->register_timeout_s,
                  "Seconds to wait for the coordinator at startup")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  AddEngineFlags(*sub, flags->engine);
  AddReplicaFlags(*sub, flags->replica);
  return ExitCodeOf("worker", [flags] { return RunWorker(*flags); });
}

}  // namespace tessera::launch
