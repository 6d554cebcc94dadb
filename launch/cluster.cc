#include "launch/cluster.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/http_get.h"
#include "common/net.h"
#include "common/status_macros.h"
#include "coordinator/api/api_keys.h"
#include "launch/processes.h"
#include "launch/signals.h"
#include "nlohmann/json.hpp"

namespace tessera::launch {
namespace {

struct Ports {
  int http = 0;
  int grpc = 0;
  int internal = 0;
};

std::optional<Ports> ReadPortFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::stringstream text;
  text << f.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("http") || !j.contains("grpc") || !j.contains("internal")) {
    return std::nullopt;
  }
  return Ports{j["http"].get<int>(), j["grpc"].get<int>(), j["internal"].get<int>()};
}

// Waits for `done` while watching the children; an exit or a signal ends the wait with an error.
template <typename F>
absl::Status WaitFor(ProcessGroup& children, absl::Duration timeout, const std::string& what,
                     F done) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!done()) {
    if (std::optional<ProcessGroup::Exited> exited = children.PollExited(); exited.has_value()) {
      return absl::UnavailableError(absl::StrCat(exited->what, " while waiting for ", what));
    }
    if (std::optional<int> sig = WaitForTerminationSignal(absl::Milliseconds(100));
        sig.has_value()) {
      return absl::CancelledError(absl::StrCat("signal ", *sig, " while waiting for ", what));
    }
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, " did not happen within ", absl::FormatDuration(timeout)));
    }
  }
  return absl::OkStatus();
}

// Where this machine reaches the coordinator's public APIs: the host they bind, loopback for a
// wildcard.
std::string LocalApiHost(const Topology& t) {
  const std::string& bind =
      t.coordinator.bind_host.empty() ? t.coordinator.host : t.coordinator.bind_host;
  if (!IsWildcardHost(bind)) return bind;
  return HostOf(bind) == "::" ? "::1" : "127.0.0.1";
}

// The coordinator's /health answers 200 once a replica has registered.
bool HealthOk(const std::string& host, int port) {
  return bench::HttpGet(host, port, "/health", absl::Seconds(2)).ok();
}

// Replicas in rotation (the coordinator's tessera_replicas gauge, all roles).
int RegisteredReplicas(const std::string& host, int port) {
  const absl::StatusOr<std::string> r = bench::HttpGet(host, port, "/metrics", absl::Seconds(2));
  if (!r.ok()) return 0;
  int total = 0;
  for (absl::string_view line : absl::StrSplit(*r, '\n')) {
    if (!absl::StartsWith(line, "tessera_replicas{")) continue;
    int n = 0;
    if (absl::SimpleAtoi(line.substr(line.rfind(' ') + 1), &n)) total += n;
  }
  return total;
}

// Writes the demo model (tessera make-model) into `dir` and waits for it.
absl::Status MakeDemoModel(ProcessGroup& children, const std::string& self,
                           const std::string& dir) {
  TESSERA_RETURN_IF_ERROR(children.Spawn(
      "make-model",
      {self, "make-model", "--out", dir, "--preset", "tiny", "--seed", "7", "--init-std", "0.5"}));
  bool made = false;
  TESSERA_RETURN_IF_ERROR(WaitFor(children, absl::Seconds(60), "the demo model", [&] {
    return made || (made = std::filesystem::exists(dir + "/generation_config.json"));
  }));
  while (!children.empty()) {  // reap make-model
    if (auto exited = children.PollExited();
        exited.has_value() && exited->what.find("status 0") == std::string::npos) {
      return absl::InternalError(exited->what);
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::OkStatus();
}

std::vector<std::string> CoordinatorCommand(const Topology& t, const std::string& self,
                                            const std::string& port_file) {
  const CoordinatorSettings c = CoordinatorSettingsOf(t);
  std::vector<std::string> argv = {self,
                                   "coordinator",
                                   "--model",
                                   c.model,
                                   "--served-model-name",
                                   c.served_model_name,
                                   "--host",
                                   c.bind_host,
                                   "--port",
                                   std::to_string(c.http_port),
                                   "--grpc-port",
                                   std::to_string(c.grpc_port),
                                   "--internal-address",
                                   c.internal_address,
                                   "--port-file",
                                   port_file,
                                   "--max-queued-requests",
                                   std::to_string(c.max_queued_requests),
                                   "--lease-timeout",
                                   absl::StrCat(c.lease_timeout_s),
                                   "--drain-timeout",
                                   absl::StrCat(c.drain_timeout_s),
                                   "--tool-call-parser",
                                   c.tool_call_parser,
                                   "--reasoning-parser",
                                   c.reasoning_parser};
  if (c.max_model_len > 0) {
    argv.insert(argv.end(), {"--max-model-len", std::to_string(c.max_model_len)});
  }
  return argv;
}

}  // namespace

absl::StatusOr<std::string> HostSequenceFor(const Topology& t, const ClusterOptions& options) {
  bool any = false;
  for (const TopologyPool& p : t.pools) any |= p.places_ranks();
  if (!any) return std::string();
  if (!options.hostfile.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--hostfile ", options.hostfile,
        ": the pools name their hosts, which place every rank; give one or the other"));
  }
  std::string out;
  for (size_t i = 0; i < t.pools.size(); ++i) {
    const TopologyPool& p = t.pools[i];
    if (!p.places_ranks()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pools[", i,
          "].hosts: some pools name hosts and this one does not; under mpirun either every pool "
          "names its hosts (hosts or replica_hosts) or a --hostfile places them all"));
    }
    for (int r = 0; r < p.replicas * p.ranks_per_replica(); ++r) {
      absl::StrAppend(&out, p.HostOfRank(r), "\n");
    }
  }
  return out;
}

std::vector<std::string> PlacementWarnings(const Topology& t) {
  std::vector<std::string> warnings;
  for (size_t i = 0; i < t.pools.size(); ++i) {
    const TopologyPool& p = t.pools[i];
    // replica_hosts keep every tensor-parallel group on one host.
    if (p.hosts.size() < 2 || p.tensor_parallel_size < 2) continue;
    const auto host = [&p](int rank) -> const std::string& { return p.HostOfRank(rank); };
    // Ranks are laid out replica by replica, stage by stage, TP innermost.
    const int groups = p.replicas * p.pipeline_parallel_size;
    for (int g = 0; g < groups; ++g) {
      const int first = g * p.tensor_parallel_size;
      const int last = first + p.tensor_parallel_size - 1;
      int other = -1;
      for (int r = first + 1; r <= last && other < 0; ++r) {
        if (host(r) != host(first)) other = r;
      }
      if (other < 0) continue;
      warnings.push_back(absl::StrCat(
          "pools[", i, "].hosts: replica ", g / p.pipeline_parallel_size, "'s tensor-parallel ",
          "group (stage ", g % p.pipeline_parallel_size, ") spans ", host(first), " and ",
          host(other),
          ", so its all-reduces cross the network every layer; the hosts are taken rank by "
          "rank, so list each one tensor_parallel_size (",
          p.tensor_parallel_size,
          ") times in a row, or give replica_hosts (a host per replica or per stage), to keep "
          "each group on one node"));
      break;
    }
  }
  return warnings;
}

std::vector<std::string> MpirunCommand(const Topology& t, const std::string& self,
                                       const std::string& topology_path,
                                       const std::string& coordinator_address,
                                       const ClusterOptions& options,
                                       const std::string& host_sequence) {
  // Ranks keep every core the OS gives them (OpenMP threads); a hostfile fills a node before the
  // next, so that a replica's TP group stays inside a node.
  std::vector<std::string> argv = {options.mpirun_path, "-np", std::to_string(t.total_ranks()),
                                   "--bind-to", "none"};
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  if (!host_sequence.empty()) {
    argv.insert(argv.end(), {"--hostfile", host_sequence, "--mca", "rmaps", "seq"});
  } else if (!options.hostfile.empty()) {
    argv.insert(argv.end(), {"--hostfile", options.hostfile, "--map-by", "slot"});
  }
  for (const std::string& v : options.forward_env) argv.insert(argv.end(), {"-x", v});
  argv.insert(argv.end(), options.mpirun_args.begin(), options.mpirun_args.end());
  argv.insert(argv.end(),
              {self, "worker", "--topology", topology_path, "--coordinator", coordinator_address});
  return argv;
}

absl::Status RunCluster(const Topology& topology, const ClusterOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateTopology(topology));
  // The API key: --api-key, else the caller's $TESSERA_API_KEY. The coordinator inherits it (and,
  // unused, the local workers); set before any thread starts.
  const char* env_key = std::getenv("TESSERA_API_KEY");
  const std::string api_key =
      !options.api_key.empty() ? options.api_key : (env_key != nullptr ? env_key : "");
  if (!api_key.empty()) {
    TESSERA_RETURN_IF_ERROR(coordinator::api::ApiKeys::Validate(
        {api_key}, options.api_key.empty() ? "TESSERA_API_KEY" : "--api-key"));
    setenv("TESSERA_API_KEY", api_key.c_str(), 1);
  }
  InstallTerminationHandlers();
  const std::string self = SelfExecutable();
  std::string work = options.work_dir;
  const bool temp_work = work.empty();
  if (temp_work) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tessera-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) return absl::InternalError("cannot create a temp dir");
    work = tmpl;
  }
  std::error_code error;
  std::filesystem::create_directories(work, error);
  if (error)
    return absl::InternalError(absl::StrCat("cannot create ", work, ": ", error.message()));
  ProcessGroup children;
  const std::string prefix = options.label + ": ";

  Topology t = topology;
  if (t.model == "demo") {
    t.model = work + "/demo-model";
    if (t.served_model_name.empty()) t.served_model_name = "tessera-demo";
    if (!options.dry_run) TESSERA_RETURN_IF_ERROR(MakeDemoModel(children, self, t.model));
  }
  if (t.served_model_name.empty()) t.served_model_name = t.model;
  std::string host_sequence_path;
  if (options.mpirun) {
    for (const std::string& warning : PlacementWarnings(t)) {
      std::fprintf(stderr, "%swarning: %s\n", prefix.c_str(), warning.c_str());
    }
    TESSERA_ASSIGN_OR_RETURN(const std::string hosts, HostSequenceFor(t, options));
    if (!hosts.empty()) {
      host_sequence_path = work + "/hosts-by-rank";
      std::ofstream(host_sequence_path) << hosts;
    }
  }

  const std::string port_file = work + "/coordinator-ports.json";
  std::filesystem::remove(port_file, error);
  const std::vector<std::string> coordinator = CoordinatorCommand(t, self, port_file);
  const std::string topology_path = work + "/topology.yaml";
  if (options.dry_run) {
    std::printf("%sresolved topology (%s):\n%s\n[coordinator] $ %s\n", prefix.c_str(),
                topology_path.c_str(), TopologyToYaml(t).c_str(),
                absl::StrJoin(coordinator, " ").c_str());
  } else {
    TESSERA_RETURN_IF_ERROR(children.Spawn("coordinator", coordinator));
  }
  std::optional<Ports> ports;
  if (!options.dry_run) {
    TESSERA_RETURN_IF_ERROR(WaitFor(children, absl::Seconds(60), "the coordinator to listen",
                                    [&] { return (ports = ReadPortFile(port_file)).has_value(); }));
  } else {
    ports = Ports{t.coordinator.http_port, t.coordinator.grpc_port, t.coordinator.internal_port};
  }
  // The workers read the topology with the ports as bound.
  t.coordinator.internal_port = ports->internal;
  t.coordinator.http_port = ports->http;
  t.coordinator.grpc_port = ports->grpc;
  {
    std::ofstream out(topology_path);
    out << "# Written by " << options.label << ": the topology as launched.\n" << TopologyToYaml(t);
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", topology_path));
  }
  const std::string coordinator_address = HostPort(t.coordinator.host, ports->internal);
  std::vector<std::pair<std::string, std::vector<std::string>>> workers;
  if (options.mpirun) {
    workers.push_back({"mpirun", MpirunCommand(t, self, topology_path, coordinator_address, options,
                                               host_sequence_path)});
  } else {
    for (const TopologyPool& p : t.pools) {
      for (int r = 0; r < p.replicas; ++r) {
        const std::string name = absl::StrCat(p.name, "-", r);
        workers.push_back(
            {name,
             {self, "worker", "--topology", topology_path, "--pool", p.name, "--replica",
              std::to_string(r), "--replica-name", name, "--coordinator", coordinator_address}});
      }
    }
  }
  for (const auto& [name, argv] : workers) {
    if (options.dry_run) {
      std::printf("[%s] $ %s\n", name.c_str(), absl::StrJoin(argv, " ").c_str());
    } else {
      TESSERA_RETURN_IF_ERROR(children.Spawn(name, argv));
    }
  }
  if (options.dry_run) return absl::OkStatus();

  const int expected = t.total_replicas();
  absl::Status result = WaitFor(children, absl::Seconds(options.ready_timeout_s),
                                "the replicas to register", [&, api = LocalApiHost(t)] {
                                  return HealthOk(api, ports->http) &&
                                         RegisteredReplicas(api, ports->http) >= expected;
                                });
  if (result.ok()) {
    std::vector<std::string> summary;
    for (const TopologyPool& p : t.pools) {
      summary.push_back(absl::StrCat(p.replicas, " ", p.role, " (tp ", p.tensor_parallel_size,
                                     ", pp ", p.pipeline_parallel_size, ")"));
    }
    // Where clients reach it: the bound host, or the coordinator's name when it binds them all.
    const std::string& host =
        IsWildcardHost(t.coordinator.bind_host) ? t.coordinator.host : t.coordinator.bind_host;
    const std::string http = HostPort(host, ports->http);
    const std::string& name = t.served_model_name;
    std::printf(
        "\n%s: ready — model \"%s\" on %d replica(s): %s; KV over %s\n"
        "  OpenAI HTTP: curl http://%s/v1/completions -H 'Content-Type: application/json' %s"
        "-d '{\"model\": \"%s\", \"prompt\": \"Hello\", \"max_tokens\": 16}'\n"
        "  KServe gRPC: %s, model \"%s\", inputs text_input, stream, sampling_parameters "
        "(tritonclient, perf_analyzer)\n"
        "  metrics: http://%s/metrics   Ctrl-C stops everything.\n\n",
        options.label.c_str(), name.c_str(), expected, absl::StrJoin(summary, ", ").c_str(),
        t.kv_transport.c_str(), http.c_str(),
        api_key.empty() ? "" : "-H \"Authorization: Bearer $TESSERA_API_KEY\" ", name.c_str(),
        HostPort(host, ports->grpc).c_str(), name.c_str(), http.c_str());
    std::fflush(stdout);
    while (true) {
      if (std::optional<ProcessGroup::Exited> exited = children.PollExited(); exited.has_value()) {
        // A replica that dies is routed around (its lease lapses); the cluster is gone with the
        // coordinator, the mpirun job or the last replica.
        if (exited->name == "coordinator" || exited->name == "mpirun" || children.size() <= 1) {
          result = absl::InternalError(absl::StrCat(exited->what, "; stopping the rest"));
          break;
        }
        std::printf("%s%s; the coordinator routes around it\n", prefix.c_str(),
                    exited->what.c_str());
        std::fflush(stdout);
      }
      if (std::optional<int> sig = WaitForTerminationSignal(absl::Milliseconds(200));
          sig.has_value()) {
        std::printf("%ssignal %d, shutting down\n", prefix.c_str(), *sig);
        std::fflush(stdout);
        break;
      }
    }
  }
  // Coordinator first (it drains the requests in flight), then the workers.
  const absl::Duration grace = absl::Seconds(t.coordinator.drain_timeout_s + 5);
  children.Terminate("coordinator", grace);
  children.TerminateAll(grace);
  if (temp_work) std::filesystem::remove_all(work, error);
  return result;
}

}  // namespace tessera::launch
