// `tessera serve [MODEL_DIR]`: the embedded default — a coordinator and N replica workers as
// local processes on this machine (CPU backend when there is no GPU), the built-in demo model
// when no directory is given. Prints every command it runs, waits until the cluster is ready,
// prints how to send a request, and on Ctrl-C (SIGINT) or SIGTERM drains the coordinator, then
// stops the workers. When a child dies on its own, says which and how, stops the rest, exits 1.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "launch/commands.h"
#include "launch/processes.h"
#include "launch/signals.h"
#include "nlohmann/json.hpp"

namespace tessera::launch {
namespace {

struct ServeFlags {
  std::string model;  // empty: the built-in demo model
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  int grpc_port = 8001;
  int num_replicas = -1;  // mixed replicas; default 1, or 0 when the pools are given
  int num_prefill = 0;
  int num_decode = 0;
  std::string kv_transport = "grpc";
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  // Per pool (0: --tensor-parallel-size / --pipeline-parallel-size): P and D may differ.
  int prefill_tp = 0;
  int prefill_pp = 0;
  int decode_tp = 0;
  int decode_pp = 0;
  int32_t max_model_len = 0;
  int32_t max_num_seqs = 64;
  int32_t block_size = 16;
  double kv_cache_gib = 1.0;
  int32_t threads = 0;
  std::string dtype = "auto";
  int64_t max_queued_requests = 256;
  double drain_timeout_s = 30.0;
  double ready_timeout_s = 300.0;
  std::string work_dir;  // port files and the demo model; default: a fresh temp dir
};

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

// The coordinator's /health answers 200 once a replica has registered.
bool HealthOk(int port);
int RegisteredReplicas(int port);

absl::Status Serve(const ServeFlags& flags) {
  InstallTerminationHandlers();
  const std::string self = SelfExecutable();
  std::string work = flags.work_dir;
  if (work.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tessera-serve-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) return absl::InternalError("cannot create a temp dir");
    work = tmpl;
  }
  std::filesystem::create_directories(work);
  ProcessGroup children;

  std::string model = flags.model;
  std::string name = flags.served_model_name;
  if (model.empty()) {
    model = work + "/demo-model";
    if (name.empty()) name = "tessera-demo";
    TESSERA_RETURN_IF_ERROR(
        children.Spawn("make-model", {self, "make-model", "--out", model, "--preset", "tiny",
                                      "--seed", "7", "--init-std", "0.5"}));
    bool made = false;
    TESSERA_RETURN_IF_ERROR(WaitFor(children, absl::Seconds(60), "the demo model", [&] {
      return made || (made = std::filesystem::exists(model + "/generation_config.json"));
    }));
    while (!children.empty()) {  // reap make-model
      if (auto exited = children.PollExited();
          exited.has_value() && exited->what.find("status 0") == std::string::npos) {
        return absl::InternalError(exited->what);
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  if (name.empty()) name = model;

  const std::string port_file = work + "/coordinator-ports.json";
  std::filesystem::remove(port_file);
  std::vector<std::string> coordinator = {self,
                                          "coordinator",
                                          "--model",
                                          model,
                                          "--served-model-name",
                                          name,
                                          "--host",
                                          flags.host,
                                          "--port",
                                          std::to_string(flags.port),
                                          "--grpc-port",
                                          std::to_string(flags.grpc_port),
                                          "--internal-address",
                                          "127.0.0.1:0",
                                          "--port-file",
                                          port_file,
                                          "--max-queued-requests",
                                          std::to_string(flags.max_queued_requests),
                                          "--drain-timeout",
                                          std::to_string(flags.drain_timeout_s)};
  if (flags.max_model_len > 0) {
    coordinator.insert(coordinator.end(), {"--max-model-len", std::to_string(flags.max_model_len)});
  }
  TESSERA_RETURN_IF_ERROR(children.Spawn("coordinator", coordinator));
  std::optional<Ports> ports;
  TESSERA_RETURN_IF_ERROR(WaitFor(children, absl::Seconds(60), "the coordinator to listen",
                                  [&] { return (ports = ReadPortFile(port_file)).has_value(); }));

  // Mixed replicas first, then the prefill and decode pools.
  const int num_mixed = flags.num_replicas >= 0
                            ? flags.num_replicas
                            : (flags.num_prefill + flags.num_decode > 0 ? 0 : 1);
  if ((flags.num_prefill > 0) != (flags.num_decode > 0)) {
    return absl::InvalidArgumentError(
        "--num-prefill and --num-decode go together: disaggregated serving needs both pools");
  }
  if (num_mixed + flags.num_prefill + flags.num_decode == 0) {
    return absl::InvalidArgumentError("no replicas: set --num-replicas or the pools");
  }
  struct Replica {
    std::string name;
    std::string role;
    int tp;
    int pp;
  };
  std::vector<Replica> replicas;
  const auto either = [](int pool, int all) { return pool > 0 ? pool : all; };
  const struct {
    const char* role;
    const char* prefix;
    int count;
    int tp;
    int pp;
  } pools[] = {
      {"mixed", "replica-", num_mixed, flags.tensor_parallel_size, flags.pipeline_parallel_size},
      {"prefill", "prefill-", flags.num_prefill,
       either(flags.prefill_tp, flags.tensor_parallel_size),
       either(flags.prefill_pp, flags.pipeline_parallel_size)},
      {"decode", "decode-", flags.num_decode, either(flags.decode_tp, flags.tensor_parallel_size),
       either(flags.decode_pp, flags.pipeline_parallel_size)}};
  for (const auto& pool : pools) {
    for (int i = 0; i < pool.count; ++i) {
      replicas.push_back({absl::StrCat(pool.prefix, i), pool.role, pool.tp, pool.pp});
    }
  }
  for (const auto& [replica, role, tp, pp] : replicas) {
    std::vector<std::string> worker = {self,
                                       "worker",
                                       "--model",
                                       model,
                                       "--served-model-name",
                                       name,
                                       "--coordinator",
                                       absl::StrCat("127.0.0.1:", ports->internal),
                                       "--replica-name",
                                       replica,
                                       "--tensor-parallel-size",
                                       std::to_string(tp),
                                       "--pipeline-parallel-size",
                                       std::to_string(pp),
                                       "--max-num-seqs",
                                       std::to_string(flags.max_num_seqs),
                                       "--block-size",
                                       std::to_string(flags.block_size),
                                       "--kv-cache-gib",
                                       std::to_string(flags.kv_cache_gib),
                                       "--dtype",
                                       flags.dtype,
                                       "--comm",
                                       "inproc",
                                       "--role",
                                       role,
                                       "--kv-transport",
                                       flags.kv_transport};
    if (flags.max_model_len > 0) {
      worker.insert(worker.end(), {"--max-model-len", std::to_string(flags.max_model_len)});
    }
    if (flags.threads > 0)
      worker.insert(worker.end(), {"--threads", std::to_string(flags.threads)});
    TESSERA_RETURN_IF_ERROR(children.Spawn(replica, worker));
  }
  const int expected = static_cast<int>(replicas.size());
  TESSERA_RETURN_IF_ERROR(WaitFor(
      children, absl::Seconds(flags.ready_timeout_s), "the replicas to register",
      [&] { return HealthOk(ports->http) && RegisteredReplicas(ports->http) >= expected; }));

  std::vector<std::string> summary;
  for (const auto& pool : pools) {
    if (pool.count > 0) {
      summary.push_back(
          absl::StrCat(pool.count, " ", pool.role, " (tp ", pool.tp, ", pp ", pool.pp, ")"));
    }
  }
  std::printf(
      "\ntessera serve: ready — model \"%s\" on %d replica(s): %s\n"
      "  OpenAI HTTP: curl http://%s:%d/v1/completions -H 'Content-Type: application/json' "
      "-d '{\"model\": \"%s\", \"prompt\": \"Hello\", \"max_tokens\": 16}'\n"
      "  KServe gRPC: %s:%d, model \"%s\", inputs text_input, stream, sampling_parameters "
      "(tritonclient, perf_analyzer)\n"
      "  metrics: http://%s:%d/metrics   Ctrl-C stops everything.\n\n",
      name.c_str(), expected, absl::StrJoin(summary, ", ").c_str(), flags.host.c_str(), ports->http,
      name.c_str(), flags.host.c_str(), ports->grpc, name.c_str(), flags.host.c_str(), ports->http);
  std::fflush(stdout);

  absl::Status result = absl::OkStatus();
  while (true) {
    if (std::optional<ProcessGroup::Exited> exited = children.PollExited(); exited.has_value()) {
      // A replica that dies is routed around (its lease lapses); the cluster is gone only with
      // the coordinator or the last replica.
      if (exited->name == "coordinator" || children.size() <= 1) {
        result = absl::InternalError(absl::StrCat(exited->what, "; stopping the rest"));
        break;
      }
      std::printf("tessera serve: %s; the coordinator routes around it\n", exited->what.c_str());
      std::fflush(stdout);
    }
    if (std::optional<int> sig = WaitForTerminationSignal(absl::Milliseconds(200));
        sig.has_value()) {
      std::printf("tessera serve: signal %d, shutting down\n", *sig);
      std::fflush(stdout);
      break;
    }
  }
  // Coordinator first (it drains the requests in flight), then the workers.
  children.Terminate("coordinator", absl::Seconds(flags.drain_timeout_s + 5));
  children.TerminateAll(absl::Seconds(flags.drain_timeout_s + 5));
  if (flags.work_dir.empty()) std::filesystem::remove_all(work);
  return result;
}

// The whole response (status line, headers, body) of GET `path` on loopback:`port`; nullopt when
// the server cannot be reached. A plain HTTP/1.0 GET over a socket keeps launch/ free of an HTTP
// client dependency.
std::optional<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return std::nullopt;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::optional<std::string> response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      std::string all;
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) all.append(buf, static_cast<size_t>(n));
      response = std::move(all);
    }
  }
  close(fd);
  return response;
}

bool HealthOk(int port) {
  const std::optional<std::string> r = HttpGet(port, "/health");
  return r.has_value() && r->size() > 12 && r->find(" 200 ") != std::string::npos;
}

// Replicas in rotation (the coordinator's tessera_replicas gauge, all roles).
int RegisteredReplicas(int port) {
  const std::optional<std::string> r = HttpGet(port, "/metrics");
  if (!r.has_value()) return 0;
  int total = 0;
  for (absl::string_view line : absl::StrSplit(*r, '\n')) {
    if (!absl::StartsWith(line, "tessera_replicas{")) continue;
    int n = 0;
    if (absl::SimpleAtoi(line.substr(line.rfind(' ') + 1), &n)) total += n;
  }
  return total;
}

}  // namespace

Command RegisterServe(CLI::App& app) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* sub = app.add_subcommand(
      "serve", "Run a coordinator and replica workers on this machine (the demo model by default)");
  sub->add_option("model", flags->model, "Model directory (default: the built-in demo model)");
  sub->add_option("--served-model-name", flags->served_model_name,
                  "The model's name in the APIs (default: the directory, or tessera-demo)");
  sub->add_option("--host", flags->host, "Address the public APIs bind to")->capture_default_str();
  sub->add_option("--port", flags->port, "OpenAI HTTP port")->capture_default_str();
  sub->add_option("--grpc-port", flags->grpc_port, "KServe v2 gRPC port")->capture_default_str();
  sub->add_option("--num-replicas", flags->num_replicas,
                  "Mixed replica workers (default 1, or 0 with --num-prefill/--num-decode)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--num-prefill", flags->num_prefill,
                  "Prefill replicas (disaggregated serving, with --num-decode)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--num-decode", flags->num_decode,
                  "Decode replicas (disaggregated serving, with --num-prefill)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--kv-transport", flags->kv_transport,
                  "KV transport between prefill and decode replicas: grpc or ucx")
      ->capture_default_str()
      ->check(CLI::IsMember({"grpc", "ucx"}));
  sub->add_option("--tensor-parallel-size", flags->tensor_parallel_size,
                  "TP ranks per replica (threads of the worker)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--pipeline-parallel-size", flags->pipeline_parallel_size,
                  "PP stages per replica (threads of the worker)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--prefill-tp", flags->prefill_tp, "TP ranks per prefill replica (0: -tp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--prefill-pp", flags->prefill_pp, "PP stages per prefill replica (0: -pp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--decode-tp", flags->decode_tp, "TP ranks per decode replica (0: -tp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--decode-pp", flags->decode_pp, "PP stages per decode replica (0: -pp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-model-len", flags->max_model_len, "Context length (0: the model's)");
  sub->add_option("--max-num-seqs", flags->max_num_seqs, "Sequences per step, per replica")
      ->capture_default_str();
  sub->add_option("--block-size", flags->block_size, "KV block size in tokens")
      ->capture_default_str();
  sub->add_option("--kv-cache-gib", flags->kv_cache_gib, "KV cache per rank, GiB")
      ->capture_default_str();
  sub->add_option("--threads", flags->threads, "CPU threads per worker rank (0: all cores)");
  sub->add_option("--dtype", flags->dtype, "Weights: auto, float32, bfloat16, float16")
      ->capture_default_str();
  sub->add_option("--max-queued-requests", flags->max_queued_requests,
                  "Requests admitted beyond the replicas' capacity; more get 429")
      ->capture_default_str();
  sub->add_option("--drain-timeout", flags->drain_timeout_s,
                  "Seconds requests in flight get to finish at shutdown")
      ->capture_default_str();
  sub->add_option("--ready-timeout", flags->ready_timeout_s,
                  "Seconds to wait for the first replica")
      ->capture_default_str();
  sub->add_option("--work-dir", flags->work_dir,
                  "Where the demo model and port files go (default: a fresh temp dir)");
  return [flags] {
    const absl::Status status = Serve(*flags);
    if (!status.ok()) {
      std::fprintf(stderr, "error: serve: %s\n", status.ToString().c_str());
      return 1;
    }
    return 0;
  };
}

}  // namespace tessera::launch
