// The benchmark's metric arithmetic, as vLLM's `vllm bench serve` defines it
// (vllm/benchmarks/serve.py, calculate_metrics). Pure functions; thread-safe.
//
//   TTFT   first token's arrival - send time, per successful request
//   TPOT   (E2E - TTFT) / (output_tokens - 1), per successful request with more than one token
//   ITL    every gap between successive token-carrying responses, pooled over requests
//   E2E    last response - send time, per successful request
//   request_throughput      successful requests / duration
//   output_throughput       output tokens of successful requests / duration
//   total_token_throughput  (input + output tokens of successful requests) / duration
//   request_goodput         successful requests meeting every SLO given / duration; for the TPOT
//                           SLO a request's TPOT is 0 when it has at most one output token
// Statistics of an empty list are 0 (vLLM's `np.mean(x or 0)`); percentiles interpolate linearly
// between order statistics (numpy's default); std is the population standard deviation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "bench/bench_config.h"

namespace tessera::bench {

// What happened to one request. Times are seconds; start_s is from the run's start.
struct RequestRecord {
  bool success = false;
  std::string error;          // why it failed; empty on success
  int64_t prompt_tokens = 0;  // as sent
  int64_t output_tokens = 0;  // token ids received
  double start_s = 0;         // when it was sent
  double ttft_s = 0;          // first token - send
  double latency_s = 0;       // last response - send (E2E)
  std::vector<double> itl_s;  // gaps between successive responses that carried tokens
};

// Linear-interpolation percentile (numpy's default) of `values`, p in [0, 100]; 0 when empty.
double Percentile(std::vector<double> values, double p);

// Mean, median, standard deviation and tail percentiles of one metric, in milliseconds.
struct LatencyStats {
  double mean_ms = 0;
  double median_ms = 0;
  double std_ms = 0;
  double p90_ms = 0;
  double p99_ms = 0;
};
// Of `seconds` (each converted to ms).
LatencyStats Summarize(absl::Span<const double> seconds);

struct BenchMetrics {
  int64_t completed = 0;
  int64_t failed = 0;
  int64_t total_input_tokens = 0;   // of successful requests
  int64_t total_output_tokens = 0;  // of successful requests
  double duration_s = 0;
  double request_throughput = 0;          // req/s
  std::optional<double> request_goodput;  // req/s; set only when SLOs were given
  double output_throughput = 0;           // tok/s
  double total_token_throughput = 0;      // tok/s
  LatencyStats ttft;
  LatencyStats tpot;
  LatencyStats itl;
  LatencyStats e2el;
};

// The metrics of one run lasting `duration_s` (> 0; a non-positive duration yields zero rates).
BenchMetrics ComputeMetrics(absl::Span<const RequestRecord> records, double duration_s,
                            const Slos& slos);

}  // namespace tessera::bench
