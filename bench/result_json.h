// The JSON result file of a bench: the configuration, what was discovered about the server, and
// one object per run with vLLM's `--save-result` keys (so tools that read vLLM's results read
// these) plus the server's breakdown. Pure; thread-safe.
//
// Top level:
//   "tessera_bench_version" 1, "date", "backend" ("tessera-grpc" | "openai"), "target",
//   "model_id", "dataset_name", "dataset_path", "num_prompts" (null: no limit), "burstiness",
//   "max_concurrency" (null: none), "seed", "token_id_range", "max_model_len", "metrics_url",
//   "goodput" ({"ttft_ms", "tpot_ms", "e2el_ms"}, each null when not given), "runs": [...]
// Each run:
//   "request_rate" (a number, "inf", or null for a trace replayed at its own pace),
//   "client_threads", "completed", "failed", "duration", "total_input_tokens",
//   "total_output_tokens", "request_throughput", "request_goodput" (null without SLOs),
//   "output_throughput", "total_token_throughput",
//   for M in ttft, tpot, itl, e2el: "mean_M_ms", "median_M_ms", "std_M_ms", "p90_M_ms",
//   "p99_M_ms";
//   per request, in send order: "input_lens", "output_lens", "start_times" (s), "ttfts" (s),
//   "e2els" (s), "itls" (a list of s per request), "errors" ("" for successes);
//   "server_breakdown": null or {"stages": {stage: {"metric", "count", "mean_ms", "p50_ms",
//   "p99_ms"}}, "counters": {name: growth}}, "server_breakdown_error": "" or why it is null.
// Infinite and NaN numbers, which JSON lacks, are written as strings ("inf") or null.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "bench/bench.h"
#include "nlohmann/json.hpp"

namespace tessera::bench {

nlohmann::json ResultToJson(const BenchResult& result);

// Writes ResultToJson(result), indented, to `path` (replacing it). kInvalidArgument/kNotFound
// style errors naming the path when it cannot be written.
absl::Status WriteResultJson(const BenchResult& result, const std::string& path);

// Writes `text` to `path` (replacing it), for the other output files.
absl::Status WriteTextFile(const std::string& path, const std::string& text);

}  // namespace tessera::bench
