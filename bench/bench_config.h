// The typed configuration of one `tessera bench` run: where the server is, what to send (the
// workload), when to send it (arrivals, one run per request rate) and what counts as good (SLOs).
// Plain structs, filled from flags by bench_flags.cc or by tests; ValidateBenchConfig says what
// is wrong with one (kInvalidArgument naming the flag). Definitions and the reasons behind them:
// docs/decisions/0009-bench.md.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tessera::bench {

// Which public API the requests use.
enum class Endpoint {
  kKServeGrpc,  // inference.GRPCInferenceService/ModelStreamInfer, token ids in and out
  kOpenAiHttp,  // POST /v1/completions with "prompt": [ids], streamed as server-sent events
};
absl::string_view EndpointName(Endpoint endpoint);  // "tessera-grpc" | "openai"

enum class Dataset {
  kRandom,    // lengths uniform in [L*(1-r), L*(1+r)] (vLLM's random dataset)
  kFixed,     // exactly random_input_len / random_output_len
  kChat,      // synthetic chat-like: log-normal lengths with the given medians
  kPrefix,    // num_prefixes shared prefixes of prefix_len tokens + a random suffix each
  kMooncake,  // a Mooncake trace (JSONL): lengths, arrival times and shared blocks
};
absl::string_view DatasetName(Dataset dataset);  // "random", "fixed", "chat", "prefix", "mooncake"

struct WorkloadSpec {
  Dataset dataset = Dataset::kRandom;
  std::string dataset_path;  // kMooncake: the trace file
  int64_t input_len = 1024;  // random/fixed/prefix: prompt tokens (prefix: after the prefix);
                             // chat: the median
  int64_t output_len = 128;  // tokens to generate (chat: the median)
  double range_ratio = 0.0;  // random/prefix: lengths vary by +-range_ratio, in [0, 1)
  int64_t prefix_len = 0;    // kPrefix: tokens of each shared prefix
  int64_t num_prefixes = 1;  // kPrefix: distinct prefixes; prompt i uses prefix i % num_prefixes
  int64_t trace_block_size = 512;  // kMooncake: tokens per hash id
};

// Service-level objectives for goodput (vLLM's --goodput): a request is good when it succeeded
// and each SLO given holds (metric <= limit). Unset SLOs are not checked; no SLO at all means no
// goodput is reported.
struct Slos {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;  // compared with the request's own TPOT (0 for 1-token outputs)
  std::optional<double> e2el_ms;
  bool any() const { return ttft_ms || tpot_ms || e2el_ms; }
};

inline constexpr double kInfiniteRate = std::numeric_limits<double>::infinity();

struct BenchConfig {
  Endpoint endpoint = Endpoint::kOpenAiHttp;
  std::string host = "127.0.0.1";
  int port = 0;             // 0: 8000 for HTTP, 8001 for gRPC
  std::string model;        // empty: the first model the server lists
  std::string api_key;      // the server's API key (never written to results); empty: none
  std::string metrics_url;  // "http://host:port/metrics"; empty: derived for HTTP, none for
                            // gRPC; "none": no server breakdown
  WorkloadSpec workload;
  // One run per rate (requests per second; kInfiniteRate sends all at once). For a Mooncake
  // trace an empty list replays the trace's own timing; a rate rescales its timestamps.
  std::vector<double> request_rates = {kInfiniteRate};
  double burstiness = 1.0;           // gamma shape; 1 = Poisson
  int64_t max_concurrency = 0;       // 0: no cap beyond client_threads
  int64_t num_prompts = 1000;        // requests per run (with duration_s: at most this many)
  std::optional<double> duration_s;  // per run: send arrivals in [0, duration_s) (finite rates)
  Slos slos;
  uint64_t seed = 0;
  // Token ids are drawn from [0, vocab); 0: from the server (KServe ModelConfig's vocab_size,
  // less its top quarter or 256 ids, where tokenizers keep special tokens), else 256.
  int64_t vocab_size = 0;
  bool ignore_eos = true;  // exact output lengths (vLLM's --ignore-eos)
  double temperature = 0.0;
  // vLLM's StructuredOutputsParams as JSON ({"json": {...}}, {"regex": "..."}, ...), sent with
  // every request (OpenAI: structured_outputs; KServe: in sampling_parameters); empty: none.
  std::string structured_outputs;
  int client_threads = 256;  // requests in flight at most when max_concurrency is 0
  absl::Duration request_timeout = absl::Minutes(10);  // per request, send to last token
  absl::Duration connect_timeout = absl::Seconds(10);  // server probes and metrics scrapes
  std::string result_path;                             // JSON result; empty: none
  std::string plot_path;  // SVG plot of latency against rate; empty: none
};

// kInvalidArgument naming the flag at fault (--num-prompts, --request-rate, ...).
absl::Status ValidateBenchConfig(const BenchConfig& config);

// The port to use: config.port, or the endpoint's default.
int EffectivePort(const BenchConfig& config);

}  // namespace tessera::bench
