// A cluster described in one YAML file (docs/topology.md): the model, the coordinator's address
// and ports, the pools (role, replicas, TP, PP, backend, devices or hosts, engine settings) and the
// KV transport. `tessera launch`, `tessera worker --topology` and the Kubernetes manifests read
// it; `tessera serve` builds one from its flags. Parsing validates everything up front and names
// the key and the problem (an unknown key, TP×PP that does not match the devices, an empty pool,
// ports that clash...). Pure data; thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "launch/engine_setup.h"

namespace tessera::launch {

struct TopologyCoordinator {
  std::string host = "127.0.0.1";  // where clients and workers reach the coordinator
  std::string bind_host;           // public APIs bind here (default: host)
  int http_port = 8000;            // OpenAI HTTP (0: any free port)
  int grpc_port = 8001;            // KServe v2 gRPC (0: any free port)
  int internal_port = 8002;        // replicas register here (0: any free port)
  int64_t max_queued_requests = 256;
  double lease_timeout_s = 3.0;
  double drain_timeout_s = 30.0;
  // tool_choice "auto": auto (the chat template's parser), none, or a parser of
  // coordinator/api/tool_calls.h (hermes, llama3_json, mistral).
  std::string tool_call_parser = "auto";
  // auto (the chat template's), none, or a parser of coordinator/api/reasoning.h.
  std::string reasoning_parser = "auto";
};

struct TopologyPool {
  std::string name;  // unique; default: the role
  std::string role;  // prefill | decode | mixed
  int replicas = 1;
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  // Layers per pipeline stage, as the workers' --pp-layers: "" (even), "auto", or "10,6".
  std::string pp_layers;
  std::string backend = "cpu";  // cpu | cuda
  // GPU ids of one replica's ranks (rank order; replica r of the pool on host r's devices).
  std::vector<int> devices;
  // Where the pool's ranks run under mpirun, in one of two forms (or neither: wherever the
  // hostfile puts them):
  // - hosts: rank by rank, in rank order (replica by replica, stage by stage, TP innermost),
  //   repeated as needed;
  // - replica_hosts: one entry per replica, either one host (every rank of the replica) or one
  //   host per pipeline stage. A tensor-parallel group never spans hosts this way.
  std::vector<std::string> hosts;
  std::vector<std::vector<std::string>> replica_hosts;
  EngineFlags engine;  // the topology's engine section, then the pool's own

  int ranks_per_replica() const { return tensor_parallel_size * pipeline_parallel_size; }
  bool places_ranks() const { return !hosts.empty() || !replica_hosts.empty(); }
  // The host of the pool's `rank` (0 .. replicas x ranks_per_replica - 1) under either form; ""
  // when the pool places no ranks.
  const std::string& HostOfRank(int rank) const;
};

struct Topology {
  std::string model;  // a Hugging Face directory, "demo" (built in), or a preset (tiny, ...)
  std::string served_model_name;
  TopologyCoordinator coordinator;
  std::string kv_transport = "grpc";  // grpc | ucx
  std::vector<TopologyPool> pools;

  int total_ranks() const;
  int total_replicas() const;
  bool disaggregated() const;  // has prefill and decode pools
};

// Parses and validates YAML text; kInvalidArgument naming the key path ("pools[1].replicas") and
// the problem. `source` names the text in messages (a file name).
absl::StatusOr<Topology> ParseTopology(const std::string& yaml, const std::string& source = "");
// The engine settings' ranges (dtypes, block size, positive sizes); kInvalidArgument naming
// `where`.KEY.
absl::Status ValidateEngineSettings(const EngineFlags& engine, const std::string& where);
// Reads and parses a file; kNotFound when it cannot be read.
absl::StatusOr<Topology> LoadTopology(const std::string& path);
// The checks ParseTopology makes, on a topology built in code (tessera serve's).
absl::Status ValidateTopology(const Topology& topology);

// Where world rank `rank` of an mpirun job over the whole topology sits: ranks are laid out pool
// by pool, replica by replica, TP innermost within a replica (the replica's own rank order).
struct RankPlacement {
  int pool = 0;              // index into pools
  int replica = 0;           // within the pool
  int replica_index = 0;     // over all pools: the MPI color of the replica's communicator
  int replica_rank = 0;      // within the replica
  std::string replica_name;  // "<pool>-<replica>"
};
absl::StatusOr<RankPlacement> PlaceRank(const Topology& topology, int rank);

// What `tessera coordinator` runs with for a topology (its flags' values).
struct CoordinatorSettings {
  std::string model;
  std::string served_model_name;  // the model path when the topology names none (as vLLM)
  std::string bind_host;          // the public APIs
  int http_port = 8000;
  int grpc_port = 8001;
  // Where replicas register: loopback when the cluster is this machine, every interface else.
  std::string internal_address;
  int64_t max_queued_requests = 256;
  double lease_timeout_s = 3.0;
  double drain_timeout_s = 30.0;
  int32_t max_model_len = 0;  // the smallest any pool sets (what every pool can hold); 0: model's
  std::string tool_call_parser = "auto";
  std::string reasoning_parser = "auto";
};
CoordinatorSettings CoordinatorSettingsOf(const Topology& topology);

// The YAML of `topology` (every key written), for `tessera launch --dry-run` and tests.
std::string TopologyToYaml(const Topology& topology);

}  // namespace tessera::launch
