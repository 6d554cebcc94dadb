// The server's own view of a run, from its /metrics endpoint (Prometheus text exposition 0.0.4):
// a parser for the lines the breakdown needs, snapshots summed over label sets, and the
// difference of two snapshots (before and after a run) as per-stage means. Pure; thread-safe.
//
// Stages and the histograms they come from (vLLM's names; tessera_* for the cluster's own). A
// stage the server does not export is absent from the breakdown, never guessed:
//   queue        vllm:request_queue_time_seconds
//   prefill      vllm:request_prefill_time_seconds
//   decode       vllm:request_decode_time_seconds
//   inference    vllm:request_inference_time_seconds
//   kv_transfer  tessera_kv_transfer_seconds
//   ttft         vllm:time_to_first_token_seconds
//   itl          vllm:inter_token_latency_seconds (or vllm:time_per_output_token_seconds)
//   e2e          vllm:e2e_request_latency_seconds
// plus the growth of counters (prompt/generation tokens, prefix-cache hits, preemptions, KV
// transfer bytes and failures, rejected/failed requests) — see kBreakdownCounters.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::bench {

struct PromSample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // unescaped values
  double value = 0;
};

// Parses every sample line (comments and blank lines skipped; an optional timestamp after the
// value is ignored). kInvalidArgument "line N: ..." for a malformed line.
absl::StatusOr<std::vector<PromSample>> ParsePrometheusText(absl::string_view text);

// Samples summed over their label sets (histogram buckets kept apart by `le`).
class MetricsSnapshot {
 public:
  static MetricsSnapshot FromSamples(const std::vector<PromSample>& samples);

  // Sum of the samples named `name` over all label sets; nullopt when there is none.
  std::optional<double> Sum(const std::string& name) const;
  // Cumulative bucket counts of histogram `base` by upper bound (+Inf included); empty if none.
  std::map<double, double> Buckets(const std::string& base) const;

 private:
  std::map<std::string, double> sums_;
  std::map<std::string, std::map<double, double>> buckets_;
};

struct StageDelta {
  std::string metric;  // the histogram it came from
  double count = 0;    // observations during the run
  double mean_ms = 0;  // sum / count
  // Estimated from the bucket counts as Prometheus' histogram_quantile does (linear within a
  // bucket); nullopt when the buckets are missing or the quantile falls in the +Inf bucket.
  std::optional<double> p50_ms;
  std::optional<double> p99_ms;
};

struct ServerBreakdown {
  std::map<std::string, StageDelta> stages;  // by stage name (queue, prefill, ...), those found
  std::map<std::string, double> counters;    // counter name -> growth during the run, those found
};

// The counters whose growth the breakdown reports.
extern const char* const kBreakdownCounters[];

// What happened on the server between `before` and `after`.
ServerBreakdown DiffSnapshots(const MetricsSnapshot& before, const MetricsSnapshot& after);

// Linear-interpolation quantile q in [0, 1] of cumulative `buckets` (upper bound -> count), as
// Prometheus' histogram_quantile; nullopt when empty, no observations, or in the +Inf bucket.
std::optional<double> HistogramQuantile(const std::map<double, double>& buckets, double q);

}  // namespace tessera::bench
