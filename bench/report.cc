#include "bench/report.h"

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera::bench {
namespace {

constexpr int kWidth = 50;

// Python's "{:<fill>^50}".format(text), as vLLM prints its headings.
std::string Title(absl::string_view text, char fill) {
  const std::string padded(text);
  if (static_cast<int>(padded.size()) >= kWidth) return padded + "\n";
  const size_t left = (kWidth - padded.size()) / 2;
  const size_t right = kWidth - padded.size() - left;
  return absl::StrCat(std::string(left, fill), padded, std::string(right, fill), "\n");
}

std::string Line(absl::string_view label, absl::string_view value) {
  return absl::StrFormat("%-40s %-10s\n", label, value);
}
std::string Line(absl::string_view label, double value) {
  return Line(label, absl::StrFormat("%.2f", value));
}
std::string Line(absl::string_view label, int64_t value) {
  return Line(label, absl::StrCat(value));
}

void Stats(absl::string_view title, absl::string_view name, const LatencyStats& s,
           std::string* out) {
  absl::StrAppend(out, Title(title, '-'));
  absl::StrAppend(out, Line(absl::StrCat("Mean ", name, " (ms):"), s.mean_ms));
  absl::StrAppend(out, Line(absl::StrCat("Median ", name, " (ms):"), s.median_ms));
  absl::StrAppend(out, Line(absl::StrCat("P90 ", name, " (ms):"), s.p90_ms));
  absl::StrAppend(out, Line(absl::StrCat("P99 ", name, " (ms):"), s.p99_ms));
}

}  // namespace

std::string RateLabel(const std::optional<double>& rate) {
  if (!rate.has_value()) return "trace";
  if (std::isinf(*rate)) return "inf";
  std::string text = absl::StrFormat("%.3f", *rate);
  while (!text.empty() && text.back() == '0') text.pop_back();
  if (!text.empty() && text.back() == '.') text.pop_back();
  return text;
}

std::string FormatRunTable(const BenchConfig& config, const RunResult& run) {
  const BenchMetrics& m = run.metrics;
  std::string out = Title(" Serving Benchmark Result ", '=');
  absl::StrAppend(&out, Line("Successful requests:", m.completed));
  absl::StrAppend(&out, Line("Failed requests:", m.failed));
  absl::StrAppend(&out, Line("Request rate configured (RPS):", RateLabel(run.request_rate)));
  absl::StrAppend(&out, Line("Burstiness factor:", config.burstiness));
  absl::StrAppend(&out, Line("Maximum request concurrency:",
                             config.max_concurrency > 0 ? absl::StrCat(config.max_concurrency)
                                                        : std::string("None")));
  absl::StrAppend(&out, Line("Benchmark duration (s):", m.duration_s));
  absl::StrAppend(&out, Line("Total input tokens:", m.total_input_tokens));
  absl::StrAppend(&out, Line("Total generated tokens:", m.total_output_tokens));
  absl::StrAppend(&out, Line("Request throughput (req/s):", m.request_throughput));
  if (m.request_goodput.has_value()) {
    absl::StrAppend(&out, Line("Request goodput (req/s):", *m.request_goodput));
  }
  absl::StrAppend(&out, Line("Output token throughput (tok/s):", m.output_throughput));
  absl::StrAppend(&out, Line("Total Token throughput (tok/s):", m.total_token_throughput));
  Stats("Time to First Token", "TTFT", m.ttft, &out);
  Stats("Time per Output Token (excl. 1st token)", "TPOT", m.tpot, &out);
  Stats("Inter-token Latency", "ITL", m.itl, &out);
  Stats("End-to-end Latency", "E2EL", m.e2el, &out);
  if (run.server.has_value()) {
    absl::StrAppend(&out, Title("Server breakdown (/metrics)", '-'));
    for (const auto& [stage, d] : run.server->stages) {
      absl::StrAppend(&out,
                      Line(absl::StrCat("Mean ", stage, " (ms, ", d.count, " obs):"), d.mean_ms));
    }
    for (const auto& [name, growth] : run.server->counters) {
      if (growth != 0) absl::StrAppend(&out, Line(absl::StrCat(name, ":"), growth));
    }
  } else if (!run.server_error.empty()) {
    absl::StrAppend(&out, Title("Server breakdown (/metrics)", '-'));
    absl::StrAppend(&out, "not available: ", run.server_error, "\n");
  }
  if (m.failed > 0) {
    std::map<std::string, int> reasons;
    for (const RequestRecord& r : run.records) {
      if (!r.success) ++reasons[r.error.substr(0, 120)];
    }
    absl::StrAppend(&out, Title("Failures", '-'));
    for (const auto& [reason, count] : reasons) absl::StrAppend(&out, count, " x ", reason, "\n");
  }
  absl::StrAppend(&out, std::string(kWidth, '='), "\n");
  return out;
}

}  // namespace tessera::bench
