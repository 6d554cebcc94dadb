// Human-readable output: the summary table of a run, laid out as vLLM's
// "============ Serving Benchmark Result ============" block (labels padded to 40 columns), with
// P90 lines, an end-to-end latency section, goodput when SLOs were given, and the server's
// breakdown when /metrics was scraped. Pure; thread-safe.
#pragma once

#include <string>

#include "bench/bench.h"

namespace tessera::bench {

// "inf", "trace" (nullopt) or the rate with up to 3 decimals ("2", "0.5").
std::string RateLabel(const std::optional<double>& rate);

std::string FormatRunTable(const BenchConfig& config, const RunResult& run);

}  // namespace tessera::bench
