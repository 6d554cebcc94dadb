// Brings up one model replica of tensor-parallel x pipeline-parallel ranks for the in-process
// subcommands (generate, worker): as threads of this process with in-process communicators, as
// the processes of an `mpirun` job with MPI communicators, or as processes started some other way
// (LeaderWorkerSet pods, torchrun, Slurm, --rank/--world-size) with Gloo communicators: rank 0
// hosts a rendezvous StoreServer on --rendezvous-port, the others dial it (retrying until
// --comm-timeout-s), and the ranks connect a Gloo TCP mesh through it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtransfer/transport.h"
#include "launch/engine_setup.h"
#include "launch/rank_env.h"
#include "model/config.h"
#include "model/weights.h"
#include "parallel/comm/timed_communicator.h"
#include "worker/kv_port.h"
#include "worker/step.h"

namespace tessera::launch {

struct ReplicaFlags {
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  std::string pp_layers;       // "8,8": layers per stage; "auto": balanced; empty: even
  int pp_micro_batches = 0;    // micro-batches per step through the pipeline; 0: 1
  int pp_steps_in_flight = 0;  // steps the leader keeps in the pipeline; 0: one per stage
  // auto: mpi under mpirun; gloo when the launcher (LWS, torchrun, Slurm, --rank/--world-size)
  // says this process is one of several ranks; else threads. Or inproc | mpi | gloo.
  std::string comm = "auto";
  double comm_timeout_s = 60.0;
  RankFlags rank;
  // Gloo: where rank 0 hosts the rendezvous store. Host default: the launcher's leader address
  // (LWS_LEADER_ADDRESS, torchrun's MASTER_ADDR), else 127.0.0.1; port 0: torchrun's MASTER_PORT,
  // else kDefaultRendezvousPort.
  std::string rendezvous_host;
  int rendezvous_port = 0;
  // Gloo: the address this rank's TCP device binds and tells its peers (default: 127.0.0.1 when
  // the rendezvous is on loopback, else this machine's hostname, e.g. the pod's).
  std::string comm_host;
  // Several replicas in one MPI job (`tessera worker --topology` under mpirun): the world is
  // split by `mpi_replica_color` (one color per replica) into this replica's communicator, ranked
  // by `mpi_replica_key`; `mpi_world_size` is the job's expected size. -1: the job is one replica.
  int mpi_replica_color = -1;
  int mpi_replica_key = 0;
  int mpi_world_size = 0;
};

inline constexpr int kDefaultRendezvousPort = 29500;  // torchrun's MASTER_PORT default

void AddReplicaFlags(CLI::App& app, ReplicaFlags& flags);

// The layers of each pipeline stage under `flags` (--pp-layers: a list, auto for
// parallel::BalancedLayerSplit, empty for an even split); kInvalidArgument naming what is wrong
// with a list that is not numbers or a split the model cannot take.
absl::StatusOr<std::vector<int64_t>> LayersPerStage(const model::ModelConfig& config,
                                                    const ReplicaFlags& flags);

// What the leader's body gets: the replica's executor, the engine limits it was built with, and
// with a KvTransportFactory the replica's KV endpoint (every rank's cache on its own transport;
// null otherwise).
using LeaderBody = std::function<absl::Status(worker::StepExecutor& executor, int32_t max_model_len,
                                              worker::KvEndpoint* kv)>;

// Disaggregated roles: makes the KV transport of replica rank `replica_rank` (on the rank that
// uses it: under mpirun, each process makes its own).
using KvTransportFactory =
    std::function<absl::StatusOr<std::unique_ptr<kvtransfer::Transport>>(int replica_rank)>;

// This rank's index among its replica's ranks whose host is named `host_name` too, in replica
// rank order: the replica rank when the replica is on one host; with stages on several hosts,
// each host's ranks count from 0 (a rank's GPU is its pool's first device plus this). Collective
// over `replica` (an all-gather of the names; names past 255 bytes compare by their start).
absl::StatusOr<int> HostLocalIndex(parallel::Communicator& replica, const std::string& host_name);

// Runs `leader` on the replica's rank 0 (in this process, or in the MPI job's rank 0) while the
// other ranks follow its steps; returns when the leader is done and the followers have stopped.
// `is_leader` is set to whether this process ran the leader (the one that should print). With
// `leader_comm_stats`, the leader's communicators (the replica's and its TP/PP groups) are timed
// into it. With `kv_transports`, every rank puts its KV cache on a transport of its own
// (worker/replica_kv.h) before the leader's body runs.
absl::Status RunReplica(const model::ModelConfig& config, const model::WeightSource& weights,
                        const EngineFlags& engine, const ReplicaFlags& flags,
                        const LeaderBody& leader, bool* is_leader,
                        parallel::CommStats* leader_comm_stats = nullptr,
                        const KvTransportFactory& kv_transports = nullptr);

}  // namespace tessera::launch
