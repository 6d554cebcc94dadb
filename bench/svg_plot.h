// Latency against request rate as an SVG drawing, written by hand (no plotting or image library:
// see docs/decisions/0009-bench.md): three panels — TTFT, TPOT, E2E latency — each with a line of
// means and a dashed line of P99s, one point per run, in run order along the x axis by rate. An
// infinite rate is drawn right of the finite ones and labelled "inf"; a trace run at its own pace
// is labelled "trace". Pure; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/bench.h"

namespace tessera::bench {

struct PlotPoint {
  std::optional<double> rate;  // as RunResult::request_rate
  double ttft_mean_ms = 0, ttft_p99_ms = 0;
  double tpot_mean_ms = 0, tpot_p99_ms = 0;
  double e2el_mean_ms = 0, e2el_p99_ms = 0;
};

std::vector<PlotPoint> PlotPoints(const BenchResult& result);

// A standalone SVG document. Every data point is a <circle> with class "point mean" or
// "point p99" inside a <g> per panel and a <title> giving its values.
std::string RenderLatencyPlot(const std::vector<PlotPoint>& points, const std::string& title);

// Writes RenderLatencyPlot(PlotPoints(result)) to `path`, which must end in ".svg"
// (kInvalidArgument otherwise: PNG is not written).
absl::Status WriteLatencyPlot(const BenchResult& result, const std::string& path);

}  // namespace tessera::bench
