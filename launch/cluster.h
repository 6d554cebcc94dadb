// Brings a topology up and keeps it running: the coordinator as a child process on this machine,
// the replicas either as one `tessera worker` child per replica (local mode; a replica's ranks
// are threads of its process) or as one `mpirun` job over every rank of the topology (each rank
// finds its replica from its world rank). Prints every command it runs (so users can adapt
// them), waits until every replica registered, prints where to send requests, and on Ctrl-C or
// SIGTERM drains the coordinator, then stops the workers. `tessera launch` and `tessera serve`
// are its two front ends. Not thread-safe: one call at a time, on the main thread.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "launch/topology.h"

namespace tessera::launch {

struct ClusterOptions {
  std::string label = "tessera launch";  // prefixes what it prints ("tessera serve: ready ...")
  std::string work_dir;  // the demo model, the resolved topology, port files; empty: a temp dir
  bool mpirun = false;   // the workers as one mpirun job instead of a process per replica
  std::string mpirun_path = "mpirun";
  std::string hostfile;                  // passed to mpirun
  std::vector<std::string> mpirun_args;  // extra mpirun arguments (--oversubscribe, ...)
  std::vector<std::string> forward_env;  // variables mpirun forwards to every rank (-x VAR)
  double ready_timeout_s = 300.0;
  bool dry_run = false;  // print the resolved topology and the commands; start nothing
  // The key API clients must present (coordinator --api-key); passed to the coordinator as
  // $TESSERA_API_KEY, not on its command line. Empty: the APIs are open.
  std::string api_key;
};

// Runs until a signal (OK) or until the coordinator, the mpirun job or the last worker exits on
// its own (kInternal naming the process and how it ended). kInvalidArgument for a topology this
// machine cannot launch; kDeadlineExceeded when the replicas do not register in time.
absl::Status RunCluster(const Topology& topology, const ClusterOptions& options);

// The mpirun command line for the workers of `topology` (resolved: its model a path), reading it
// from `topology_path`; `host_sequence` is the file HostSequenceFor wrote when pools name hosts.
// For tests and --dry-run.
std::vector<std::string> MpirunCommand(const Topology& topology, const std::string& self,
                                       const std::string& topology_path,
                                       const std::string& coordinator_address,
                                       const ClusterOptions& options,
                                       const std::string& host_sequence);
// When pools name hosts: a hostfile of one line per rank, the host of rank i on line i, for Open
// MPI's sequential mapper (`--mca rmaps seq`: rank i on that host, nothing else implied; a
// rankfile's slot=N would bind to core N and fail on a node with fewer cores than ranks). Empty
// when no pool names hosts; kInvalidArgument when only some do, or when --hostfile is given too.
absl::StatusOr<std::string> HostSequenceFor(const Topology& topology,
                                            const ClusterOptions& options);
// One line per pool whose `hosts` split a tensor-parallel group across nodes (legal, but its
// all-reduces then cross the network every layer), saying how to keep the groups whole.
std::vector<std::string> PlacementWarnings(const Topology& topology);

}  // namespace tessera::launch
