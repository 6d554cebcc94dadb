// End to end: `tessera serve` (the demo model, one CPU thread) as a child process, then
// RunBenchCommand — what `tessera bench` runs — over OpenAI HTTP and KServe gRPC, two request
// rates each, and checks of the JSON result and the plot it writes.
//
// Usage: bench_e2e_test TESSERA_BINARY. Exit status 0 when every check passes.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench/bench_flags.h"
#include "bench/http_get.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace tessera::bench {
namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Serve {
  pid_t pid = -1;
  int http = 0;
  int grpc = 0;
};

// Starts `tessera serve` in `work` with its output in work/serve.log; waits (at most 120 s) for
// the ports file and for /health to answer 200 (a replica has registered).
bool StartServe(const std::string& tessera, const std::string& work, Serve* serve) {
  const std::string log = work + "/serve.log";
  std::vector<std::string> args = {tessera, "serve",     "--port", "0",          "--grpc-port",
                                   "0",     "--threads", "1",      "--work-dir", work};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  const int rc = posix_spawn(&serve->pid, tessera.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    std::fprintf(stderr, "cannot start %s: %s\n", tessera.c_str(), std::strerror(rc));
    return false;
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(120);
  const std::string ports_file = work + "/coordinator-ports.json";
  while (absl::Now() < give_up) {
    int status = 0;
    if (waitpid(serve->pid, &status, WNOHANG) == serve->pid) {
      std::fprintf(stderr, "serve exited early (status %d)\n", status);
      serve->pid = -1;
      return false;
    }
    if (serve->http == 0 && std::filesystem::exists(ports_file)) {
      const nlohmann::json ports =
          nlohmann::json::parse(ReadFile(ports_file), nullptr, /*allow_exceptions=*/false);
      if (ports.is_object() && ports.contains("http") && ports.contains("grpc") &&
          ports["http"].is_number_integer() && ports["grpc"].is_number_integer()) {
        serve->http = ports["http"].get<int>();
        serve->grpc = ports["grpc"].get<int>();
      }
    }
    if (serve->http != 0 && HttpGet("127.0.0.1", serve->http, "/health", absl::Seconds(2)).ok()) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  std::fprintf(stderr, "serve not ready within 120 s\n");
  return false;
}

void StopServe(Serve& serve) {
  if (serve.pid <= 0) return;
  kill(serve.pid, SIGINT);
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  int status = 0;
  while (waitpid(serve.pid, &status, WNOHANG) == 0) {
    if (absl::Now() > give_up) {
      std::fprintf(stderr, "serve did not stop within 60 s of SIGINT; killing it\n");
      kill(serve.pid, SIGKILL);
      waitpid(serve.pid, &status, 0);
      ++failures;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  serve.pid = -1;
}

constexpr int kPrompts = 24;
constexpr int kOutputLen = 16;

// One RunBenchCommand and the checks of what it wrote.
void BenchAndCheck(const Serve& serve, const std::string& backend, const std::string& work) {
  BenchFlags flags;
  flags.backend = backend;
  flags.port = backend == "openai" ? serve.http : serve.grpc;
  flags.metrics_url = absl::StrCat("http://127.0.0.1:", serve.http, "/metrics");
  flags.dataset_name = "random";
  flags.random_input_len = 32;
  flags.random_output_len = kOutputLen;
  flags.num_prompts = kPrompts;
  flags.request_rates = {"8,16"};
  flags.goodput = {"ttft:60000", "e2el:60000"};
  flags.seed = 1;
  flags.request_timeout_s = 60;
  flags.result_file = absl::StrCat(work, "/result-", backend, ".json");
  flags.plot = absl::StrCat(work, "/plot-", backend, ".svg");
  const absl::Status status = RunBenchCommand(flags);
  Check(status.ok(), absl::StrCat(backend, ": RunBenchCommand: ", status.ToString()));
  if (!status.ok()) return;

  const nlohmann::json result =
      nlohmann::json::parse(ReadFile(flags.result_file), nullptr, /*allow_exceptions=*/false);
  Check(result.is_object(), backend + ": the result file is not a JSON object");
  if (!result.is_object()) return;
  Check(result.value("backend", "") == backend, backend + ": backend");
  Check(result.value("model_id", "") == "tessera-demo", backend + ": model_id");
  Check(result.contains("runs") && result["runs"].is_array() && result["runs"].size() == 2,
        backend + ": two runs");
  if (!result.contains("runs") || !result["runs"].is_array()) return;
  const double rates[] = {8, 16};
  for (size_t i = 0; i < result["runs"].size() && i < 2; ++i) {
    const nlohmann::json& run = result["runs"][i];
    const std::string where = absl::StrCat(backend, " run ", i, ": ");
    Check(run.value("request_rate", 0.0) == rates[i], where + "request_rate");
    Check(run.value("completed", -1) == kPrompts, where + "completed " + run["completed"].dump());
    Check(run.value("failed", -1) == 0,
          where + "failed " + run["failed"].dump() + " " + run["errors"].dump());
    Check(run.value("total_output_tokens", -1) == kPrompts * kOutputLen,
          where + "total_output_tokens " + run["total_output_tokens"].dump());
    for (const char* key :
         {"duration", "request_throughput", "output_throughput", "total_token_throughput",
          "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms",
          "mean_e2el_ms", "p99_e2el_ms"}) {
      Check(run.contains(key) && run[key].is_number() && run[key].get<double>() > 0,
            where + key + " = " + (run.contains(key) ? run[key].dump() : "missing"));
    }
    Check(run.value("request_goodput", 0.0) == run.value("request_throughput", -1.0),
          where + "every request meets the generous SLOs");
    Check(run["output_lens"] == nlohmann::json(std::vector<int>(kPrompts, kOutputLen)),
          where + "output_lens " + run["output_lens"].dump());
    const nlohmann::json& server = run["server_breakdown"];
    Check(server.is_object(), where + "server_breakdown: " + run["server_breakdown_error"].dump());
    if (server.is_object()) {
      Check(server["stages"].contains("ttft") && server["stages"]["ttft"].value("count", 0.0) >= 1,
            where + "server ttft stage: " + server.dump());
    }
  }
  const std::string svg = ReadFile(flags.plot);
  Check(svg.find("<svg") != std::string::npos && svg.find("</svg>") != std::string::npos,
        backend + ": plot");
}

int Main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s TESSERA_BINARY\n", argv[0]);
    return 2;
  }
  std::string work = (std::filesystem::temp_directory_path() / "tessera-bench-e2e-XXXXXX").string();
  if (mkdtemp(work.data()) == nullptr) {
    std::fprintf(stderr, "cannot create a temp dir\n");
    return 1;
  }
  Serve serve;
  const absl::Time start = absl::Now();
  if (!StartServe(argv[1], work, &serve)) {
    StopServe(serve);
    std::fprintf(stderr, "---- serve.log ----\n%s\n", ReadFile(work + "/serve.log").c_str());
    return 1;
  }
  std::printf("serve ready in %.1f s (http %d, grpc %d)\n",
              absl::ToDoubleSeconds(absl::Now() - start), serve.http, serve.grpc);
  BenchAndCheck(serve, "openai", work);
  BenchAndCheck(serve, "tessera-grpc", work);
  StopServe(serve);
  std::printf("bench e2e: %d failure(s) in %.1f s\n", failures,
              absl::ToDoubleSeconds(absl::Now() - start));
  if (failures > 0) {
    std::fprintf(stderr, "---- serve.log (work dir %s kept) ----\n%s\n", work.c_str(),
                 ReadFile(work + "/serve.log").c_str());
    return 1;
  }
  std::error_code ignored;
  std::filesystem::remove_all(work, ignored);
  return 0;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) { return tessera::bench::Main(argc, argv); }
