// `tessera launch TOPOLOGY`: brings up the cluster a topology file describes (docs/topology.md) —
// locally, one process per replica, or with --mpirun as one mpirun job over every rank (with a
// hostfile, or the pools' hosts, for several nodes). --check validates the file and exits;
// --dry-run prints the resolved topology and the exact commands without starting anything.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "launch/cluster.h"
#include "launch/commands.h"
#include "launch/topology.h"

namespace tessera::launch {
namespace {

struct LaunchFlags {
  std::string topology;
  bool check = false;
  ClusterOptions cluster;
  std::string mpirun_args;  // one string, split on spaces
};

absl::Status Launch(LaunchFlags flags) {
  absl::StatusOr<Topology> topology = LoadTopology(flags.topology);
  if (!topology.ok()) return topology.status();
  if (flags.check) {
    std::printf("tessera launch: %s is valid: %d pool(s), %d replica(s), %d rank(s)%s\n",
                flags.topology.c_str(), static_cast<int>(topology->pools.size()),
                topology->total_replicas(), topology->total_ranks(),
                topology->disaggregated() ? ", disaggregated" : "");
    return absl::OkStatus();
  }
  for (absl::string_view arg : absl::StrSplit(flags.mpirun_args, ' ', absl::SkipEmpty())) {
    flags.cluster.mpirun_args.emplace_back(arg);
  }
  // What the ranks on other nodes need to see of this environment (docs/parallelism.md).
  for (const char* v :
       {"OMP_NUM_THREADS", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "NCCL_IB_DISABLE",
        "NCCL_P2P_DISABLE", "UCX_TLS", "UCX_NET_DEVICES", "CUDA_VISIBLE_DEVICES"}) {
    if (std::getenv(v) != nullptr) flags.cluster.forward_env.emplace_back(v);
  }
  return RunCluster(*topology, flags.cluster);
}

}  // namespace

Command RegisterLaunch(CLI::App& app) {
  auto flags = std::make_shared<LaunchFlags>();
  CLI::App* sub = app.add_subcommand(
      "launch", "Bring up the cluster a topology file describes (locally or through mpirun)");
  sub->add_option("topology", flags->topology, "The topology YAML file (docs/topology.md)")
      ->required();
  sub->add_flag("--check", flags->check, "Validate the topology and exit");
  sub->add_flag("--dry-run", flags->cluster.dry_run,
                "Print the resolved topology and the commands; start nothing");
  sub->add_flag("--mpirun", flags->cluster.mpirun,
                "Run the workers as one mpirun job over every rank (default: a process per "
                "replica on this machine)");
  sub->add_option("--mpirun-path", flags->cluster.mpirun_path, "The mpirun to use")
      ->capture_default_str();
  sub->add_option("--hostfile", flags->cluster.hostfile, "Passed to mpirun (several nodes)");
  sub->add_option(
      "--mpirun-args", flags->mpirun_args,
      "More mpirun arguments, space-separated (e.g. \"--oversubscribe -x NCCL_DEBUG\")");
  sub->add_option("--work-dir", flags->cluster.work_dir,
                  "Where the demo model, the resolved topology and port files go (default: a "
                  "fresh temp dir, removed at the end); must be shared by the nodes under mpirun");
  sub->add_option("--ready-timeout", flags->cluster.ready_timeout_s,
                  "Seconds to wait for every replica to register")
      ->capture_default_str();
  sub->add_option("--api-key", flags->cluster.api_key,
                  "Require this key (\"Authorization: Bearer KEY\") on every API call but health, "
                  "metrics and version (default: $TESSERA_API_KEY, as vLLM's VLLM_API_KEY)");
  return ExitCodeOf("launch", [flags] { return Launch(*flags); });
}

}  // namespace tessera::launch
