// `tessera bench` as a library: RunBench drives a cluster through one of its public APIs (KServe
// v2 gRPC or OpenAI HTTP) with a workload, once per request rate, and returns what every request
// saw, the metrics vLLM's `vllm bench serve` reports, and the server's own breakdown from its
// /metrics. The command around it (flags, table, files) is bench_flags.h.
//
// Threads: RunBench runs on the caller's thread — it sends on schedule and reports progress from
// it — plus a pool of client threads per run (max_concurrency of them, or client_threads), joined
// before it returns. Every request is bounded by config.request_timeout.
// Errors: kInvalidArgument for a bad config or a workload that does not fit the model's context
// (nothing is sent); kUnavailable naming the address when the server cannot be reached; kNotFound
// when the model is not served. Requests that fail during a run are counted as failed in the
// result, not returned as errors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/bench_config.h"
#include "bench/client.h"
#include "bench/metrics.h"
#include "bench/prometheus.h"

namespace tessera::bench {

// One run: one request rate.
struct RunResult {
  // Requests per second (kInfiniteRate: all at once); nullopt: a trace replayed at its own pace.
  std::optional<double> request_rate;
  BenchMetrics metrics;
  std::vector<RequestRecord> records;     // in send order
  int client_threads = 0;                 // the pool that sent them
  std::optional<ServerBreakdown> server;  // set when /metrics was scraped before and after
  std::string server_error;               // why there is no breakdown, if one was wanted
};

struct BenchResult {
  BenchConfig config;
  ServerInfo server;           // as discovered
  std::string target;          // "openai http://127.0.0.1:8000"
  std::string metrics_url;     // scraped, or empty
  int64_t token_id_range = 0;  // prompts' token ids were drawn from [0, token_id_range)
  std::string started_at;      // RFC 3339, UTC
  std::vector<RunResult> runs;
};

// Told about a run's progress; called on RunBench's thread only.
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  // Run `index` of `count` starts: `requests` to send at `rate` (nullopt: trace timing).
  virtual void OnRunStart(size_t index, size_t count, std::optional<double> rate,
                          int64_t requests) = 0;
  // Called a few times a second while a run goes on.
  virtual void OnProgress(int64_t done, int64_t failed, int64_t total, double elapsed_s) = 0;
  virtual void OnRunEnd(const RunResult& run) = 0;
};

// `progress` may be null.
absl::StatusOr<BenchResult> RunBench(const BenchConfig& config, ProgressSink* progress);

// The token-id range used when the server reports `vocab_size` (0: unknown): the ids below the
// top quarter of the vocabulary or its top 256 ids (whichever leaves more), where tokenizers keep
// their special tokens; 256 when unknown.
int64_t SafeTokenRange(int64_t vocab_size);

}  // namespace tessera::bench
