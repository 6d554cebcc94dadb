#include "bench/bench_flags.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench.h"
#include "bench/http_get.h"
#include "bench/progress.h"
#include "bench/report.h"
#include "bench/result_json.h"
#include "bench/svg_plot.h"
#include "common/status_macros.h"

namespace tessera::bench {
namespace {

constexpr int64_t kDefaultNumPrompts = 1000;

std::vector<std::string> SplitItems(const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const std::string& item : items) {
    for (absl::string_view part : absl::StrSplit(item, absl::ByAnyChar(", "), absl::SkipEmpty())) {
      out.emplace_back(part);
    }
  }
  return out;
}

absl::StatusOr<Dataset> ParseDataset(const std::string& name) {
  if (name == "random") return Dataset::kRandom;
  if (name == "fixed") return Dataset::kFixed;
  if (name == "chat") return Dataset::kChat;
  if (name == "prefix") return Dataset::kPrefix;
  if (name == "mooncake") return Dataset::kMooncake;
  return absl::InvalidArgumentError(absl::StrCat(
      "--dataset-name: '", name, "' is not one of random, fixed, chat, prefix, mooncake"));
}

}  // namespace

absl::StatusOr<std::vector<double>> ParseRates(const std::vector<std::string>& items) {
  std::vector<double> rates;
  for (const std::string& item : SplitItems(items)) {
    const std::string lower = absl::AsciiStrToLower(item);
    if (lower == "inf" || lower == "infinity") {
      rates.push_back(kInfiniteRate);
      continue;
    }
    double rate = 0;
    if (!absl::SimpleAtod(item, &rate) || !(rate > 0) || std::isinf(rate)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--request-rate: '", item, "' is not a positive number or inf"));
    }
    rates.push_back(rate);
  }
  return rates;
}

absl::StatusOr<Slos> ParseGoodput(const std::vector<std::string>& items) {
  Slos slos;
  for (const std::string& item : SplitItems(items)) {
    const std::vector<std::string> parts = absl::StrSplit(item, ':');
    double value = 0;
    if (parts.size() != 2 || !absl::SimpleAtod(parts[1], &value) || !(value > 0) ||
        std::isinf(value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--goodput: '", item, "': expected KEY:MILLISECONDS with KEY ttft, tpot or e2el"));
    }
    if (parts[0] == "ttft") {
      slos.ttft_ms = value;
    } else if (parts[0] == "tpot") {
      slos.tpot_ms = value;
    } else if (parts[0] == "e2el") {
      slos.e2el_ms = value;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--goodput: '", parts[0], "' is not one of ttft, tpot, e2el"));
    }
  }
  return slos;
}

void AddBenchFlags(CLI::App& app, BenchFlags& flags) {
  app.add_option("--backend", flags.backend,
                 "API to drive: openai (HTTP /v1/completions, streamed) or tessera-grpc (KServe "
                 "v2 ModelStreamInfer)")
      ->capture_default_str()
      ->check(CLI::IsMember({"openai", "vllm", "tessera-grpc", "kserve"}));
  app.add_option("--base-url,--url", flags.base_url,
                 "Server URL http://host:port (instead of --host/--port)");
  app.add_option("--host", flags.host, "Server host")->capture_default_str();
  app.add_option("--port", flags.port, "Server port (default 8000 HTTP, 8001 gRPC)");
  app.add_option("--api-key", flags.api_key,
                 "The server's API key, sent as \"Authorization: Bearer KEY\" (default: "
                 "$OPENAI_API_KEY, as vllm bench serve)");
  app.add_option("--model", flags.model, "Served model name (default: the first listed)");
  app.add_option("--dataset-name", flags.dataset_name,
                 "Workload: random, fixed, chat, prefix or mooncake")
      ->capture_default_str()
      ->check(CLI::IsMember({"random", "fixed", "chat", "prefix", "mooncake"}));
  app.add_option("--dataset-path", flags.dataset_path, "Mooncake trace (JSONL)");
  app.add_option("--num-prompts", flags.num_prompts,
                 "Requests per run (default 1000; with --duration or a trace, no limit)");
  app.add_option("--random-input-len", flags.random_input_len,
                 "Prompt tokens (chat: the median; prefix: after the prefix)")
      ->capture_default_str();
  app.add_option("--random-output-len", flags.random_output_len, "Output tokens (chat: the median)")
      ->capture_default_str();
  app.add_option("--random-range-ratio", flags.random_range_ratio,
                 "random/prefix: lengths uniform in [L*(1-r), L*(1+r)]")
      ->capture_default_str();
  app.add_option("--prefix-len", flags.prefix_len, "prefix: tokens of each shared prefix");
  app.add_option("--num-prefixes", flags.num_prefixes, "prefix: distinct shared prefixes")
      ->capture_default_str();
  app.add_option("--trace-block-size", flags.trace_block_size, "mooncake: tokens per hash id")
      ->capture_default_str();
  app.add_option("--request-rate", flags.request_rates,
                 "Requests/s; several (repeated or comma list) for a sweep; inf: all at once "
                 "(default inf; a trace: its own timing)");
  app.add_option("--burstiness", flags.burstiness,
                 "Gamma shape of the arrival gaps: 1 Poisson, < 1 burstier")
      ->capture_default_str();
  app.add_option("--max-concurrency", flags.max_concurrency,
                 "Requests in flight at most (0: no cap)");
  app.add_option("--goodput", flags.goodput,
                 "SLOs for goodput, KEY:MS with KEY ttft, tpot or e2el (e.g. ttft:500 tpot:50)");
  app.add_option("--seed", flags.seed, "Seed of prompts and arrivals")->capture_default_str();
  app.add_option("--duration", flags.duration_s,
                 "Seconds of arrivals per run (finite rates; instead of --num-prompts)");
  app.add_flag("--save-result", flags.save_result,
               "Write the JSON result (to --result-file, or bench-<backend>-<time>.json)");
  app.add_option("--result-file,--result-filename", flags.result_file, "JSON result path");
  app.add_option("--plot", flags.plot, "SVG plot of latency against request rate");
  app.add_option("--metrics-url", flags.metrics_url,
                 "The server's Prometheus /metrics (default: the HTTP server's; none: skip)");
  app.add_option("--vocab-size", flags.vocab_size,
                 "Draw token ids from [0, N) (default: from the server, else 256)");
  app.add_flag("--ignore-eos,!--no-ignore-eos", flags.ignore_eos,
               "Generate exactly the output length (default on)");
  app.add_option("--temperature", flags.temperature)->capture_default_str();
  app.add_option("--structured-outputs", flags.structured_outputs,
                 "Ask every request for a structured output: vLLM's StructuredOutputsParams as "
                 "JSON, e.g. '{\"json\": {...schema...}}' or '{\"regex\": \"[a-z]+\"}'");
  app.add_option("--client-threads", flags.client_threads,
                 "Requests in flight at most without --max-concurrency")
      ->capture_default_str();
  app.add_option("--request-timeout", flags.request_timeout_s, "Seconds per request")
      ->capture_default_str();
  app.add_option("--connect-timeout", flags.connect_timeout_s,
                 "Seconds for probes and /metrics scrapes")
      ->capture_default_str();
  app.add_flag("--disable-tqdm", flags.disable_tqdm, "No progress output");
}

absl::StatusOr<BenchConfig> BenchConfigFromFlags(const BenchFlags& flags) {
  BenchConfig config;
  if (flags.backend == "openai" || flags.backend == "vllm") {
    config.endpoint = Endpoint::kOpenAiHttp;
  } else if (flags.backend == "tessera-grpc" || flags.backend == "kserve") {
    config.endpoint = Endpoint::kKServeGrpc;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--backend: '", flags.backend, "' is not one of openai, vllm, tessera-grpc, kserve"));
  }
  config.host = flags.host;
  config.port = flags.port;
  config.api_key = flags.api_key;
  if (config.api_key.empty()) {
    if (const char* env = std::getenv("OPENAI_API_KEY"); env != nullptr) config.api_key = env;
  }
  if (!flags.base_url.empty()) {
    absl::StatusOr<HttpUrl> url = ParseHttpUrl(flags.base_url);
    if (!url.ok())
      return absl::InvalidArgumentError(absl::StrCat("--base-url: ", url.status().message()));
    config.host = url->host;
    config.port = url->port;
  }
  config.model = flags.model;
  config.metrics_url = flags.metrics_url;
  TESSERA_ASSIGN_OR_RETURN(config.workload.dataset, ParseDataset(flags.dataset_name));
  config.workload.dataset_path = flags.dataset_path;
  config.workload.input_len = flags.random_input_len;
  config.workload.output_len = flags.random_output_len;
  config.workload.range_ratio = flags.random_range_ratio;
  config.workload.prefix_len = flags.prefix_len;
  config.workload.num_prefixes = flags.num_prefixes;
  config.workload.trace_block_size = flags.trace_block_size;
  TESSERA_ASSIGN_OR_RETURN(config.request_rates, ParseRates(flags.request_rates));
  if (config.request_rates.empty() && config.workload.dataset != Dataset::kMooncake) {
    config.request_rates = {kInfiniteRate};  // vLLM's default
  }
  config.burstiness = flags.burstiness;
  config.max_concurrency = flags.max_concurrency;
  if (flags.num_prompts < 0) return absl::InvalidArgumentError("--num-prompts: must be >= 1");
  if (flags.duration_s < 0) return absl::InvalidArgumentError("--duration: must be positive");
  if (flags.duration_s > 0) config.duration_s = flags.duration_s;
  // Without --num-prompts: 1000 (vLLM's default), or no limit when something else bounds the
  // run (--duration, or a trace's own length).
  const bool bounded =
      config.duration_s.has_value() || config.workload.dataset == Dataset::kMooncake;
  config.num_prompts = !bounded ? kDefaultNumPrompts : std::numeric_limits<int64_t>::max();
  if (flags.num_prompts > 0) config.num_prompts = flags.num_prompts;
  TESSERA_ASSIGN_OR_RETURN(config.slos, ParseGoodput(flags.goodput));
  config.seed = flags.seed;
  config.vocab_size = flags.vocab_size;
  config.ignore_eos = flags.ignore_eos;
  config.temperature = flags.temperature;
  config.structured_outputs = flags.structured_outputs;
  config.client_threads = flags.client_threads;
  if (!(flags.request_timeout_s > 0) || !(flags.connect_timeout_s > 0) ||
      std::isinf(flags.request_timeout_s) || std::isinf(flags.connect_timeout_s)) {
    return absl::InvalidArgumentError(
        "--request-timeout, --connect-timeout: must be positive numbers of seconds");
  }
  config.request_timeout = absl::Seconds(flags.request_timeout_s);
  config.connect_timeout = absl::Seconds(flags.connect_timeout_s);
  config.result_path = flags.result_file;
  if (config.result_path.empty() && flags.save_result) {
    config.result_path = absl::StrCat(
        "bench-", EndpointName(config.endpoint), "-",
        absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::LocalTimeZone()), ".json");
  }
  config.plot_path = flags.plot;
  if (!config.plot_path.empty()) {
    // Checked before the run, not after it.
    const std::string& p = config.plot_path;
    if (p.size() < 4 || absl::AsciiStrToLower(p.substr(p.size() - 4)) != ".svg") {
      return absl::InvalidArgumentError(
          absl::StrCat("--plot: '", p, "': only SVG is written; name the file *.svg"));
    }
  }
  TESSERA_RETURN_IF_ERROR(ValidateBenchConfig(config));
  return config;
}

absl::Status RunBenchCommand(const BenchFlags& flags) {
  TESSERA_ASSIGN_OR_RETURN(const BenchConfig config, BenchConfigFromFlags(flags));
  TerminalProgress progress(stderr, isatty(fileno(stderr)) != 0);
  TESSERA_ASSIGN_OR_RETURN(const BenchResult result,
                           RunBench(config, flags.disable_tqdm ? nullptr : &progress));
  std::printf("target: %s, model %s, token ids in [0, %lld)\n", result.target.c_str(),
              result.server.model.c_str(), static_cast<long long>(result.token_id_range));
  for (const RunResult& run : result.runs) {
    std::fputs(FormatRunTable(config, run).c_str(), stdout);
  }
  std::fflush(stdout);
  if (!config.result_path.empty()) {
    TESSERA_RETURN_IF_ERROR(WriteResultJson(result, config.result_path));
    std::printf("result: %s\n", config.result_path.c_str());
  }
  if (!config.plot_path.empty()) {
    TESSERA_RETURN_IF_ERROR(WriteLatencyPlot(result, config.plot_path));
    std::printf("plot: %s\n", config.plot_path.c_str());
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace tessera::bench
