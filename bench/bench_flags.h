// The `tessera bench` command: its flags (spelled as `vllm bench serve` spells them where the
// meaning matches), their translation into a BenchConfig, and the command itself — run, print
// the summary table of each run to stdout, progress to stderr, write the JSON result and plot.
// launch/ registers the subcommand and calls RunBenchCommand; nothing here reads the
// environment.
#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_config.h"

namespace tessera::bench {

// Flag values as given; BenchConfigFromFlags checks and converts them.
struct BenchFlags {
  std::string backend = "openai";  // openai | vllm (HTTP); tessera-grpc | kserve (gRPC)
  std::string base_url;            // http://host:port (HTTP backends); overrides host/port
  std::string host = "127.0.0.1";
  int port = 0;  // 0: 8000 (HTTP) or 8001 (gRPC)
  std::string model;
  std::string api_key;  // --api-key, else $OPENAI_API_KEY (as vllm bench serve)
  std::string dataset_name = "random";
  std::string dataset_path;
  int64_t num_prompts = 0;  // 0: 1000, or unbounded with --duration
  int64_t random_input_len = 1024;
  int64_t random_output_len = 128;
  double random_range_ratio = 0.0;
  int64_t prefix_len = 0;
  int64_t num_prefixes = 1;
  int64_t trace_block_size = 512;
  std::vector<std::string> request_rates;  // repeatable, each maybe a comma list; "inf"
  double burstiness = 1.0;
  int64_t max_concurrency = 0;
  std::vector<std::string> goodput;  // "ttft:500" "tpot:50" "e2el:2000" (or comma-joined)
  uint64_t seed = 0;
  double duration_s = 0;  // 0: none
  bool save_result = false;
  std::string result_file;
  std::string plot;
  std::string metrics_url;
  int64_t vocab_size = 0;
  bool ignore_eos = true;
  double temperature = 0.0;
  std::string structured_outputs;
  int client_threads = 256;
  double request_timeout_s = 600;
  double connect_timeout_s = 10;
  bool disable_tqdm = false;
};

// Adds the flags to `app` (the `bench` subcommand), bound to `flags`.
void AddBenchFlags(CLI::App& app, BenchFlags& flags);

// kInvalidArgument naming the flag for values that cannot be converted or combined.
absl::StatusOr<BenchConfig> BenchConfigFromFlags(const BenchFlags& flags);

// Parses "ttft:500", "tpot:50", "e2el:2000" (each may also be a comma list) into SLOs.
absl::StatusOr<Slos> ParseGoodput(const std::vector<std::string>& items);
// Parses rates: numbers > 0 or "inf", repeated or comma-separated.
absl::StatusOr<std::vector<double>> ParseRates(const std::vector<std::string>& items);

// The whole command: RunBench with a progress bar on stderr, each run's table on stdout, then
// the JSON result (--save-result / --result-file) and the plot (--plot). Errors are returned
// for the caller to print; the files are written even when some requests failed.
absl::Status RunBenchCommand(const BenchFlags& flags);

}  // namespace tessera::bench
