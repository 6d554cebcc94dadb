#include "bench/metrics.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace tessera::bench {

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (values[hi] - values[lo]) * (rank - static_cast<double>(lo));
}

LatencyStats Summarize(absl::Span<const double> seconds) {
  LatencyStats stats;
  if (seconds.empty()) return stats;
  std::vector<double> ms;
  ms.reserve(seconds.size());
  for (double s : seconds) ms.push_back(s * 1000.0);
  double sum = 0;
  for (double v : ms) sum += v;
  const double n = static_cast<double>(ms.size());
  stats.mean_ms = sum / n;
  double squares = 0;
  for (double v : ms) squares += (v - stats.mean_ms) * (v - stats.mean_ms);
  stats.std_ms = std::sqrt(squares / n);
  stats.median_ms = Percentile(ms, 50);
  stats.p90_ms = Percentile(ms, 90);
  stats.p99_ms = Percentile(std::move(ms), 99);
  return stats;
}

BenchMetrics ComputeMetrics(absl::Span<const RequestRecord> records, double duration_s,
                            const Slos& slos) {
  BenchMetrics m;
  m.duration_s = duration_s;
  std::vector<double> ttfts, tpots, itls, e2els;
  int64_t good = 0;
  for (const RequestRecord& r : records) {
    if (!r.success) {
      ++m.failed;
      continue;
    }
    ++m.completed;
    m.total_input_tokens += r.prompt_tokens;
    m.total_output_tokens += r.output_tokens;
    // vLLM: TPOT only for outputs of more than one token; for goodput such a request's TPOT is 0.
    double tpot = 0;
    if (r.output_tokens > 1) {
      tpot = (r.latency_s - r.ttft_s) / static_cast<double>(r.output_tokens - 1);
      tpots.push_back(tpot);
    }
    itls.insert(itls.end(), r.itl_s.begin(), r.itl_s.end());
    ttfts.push_back(r.ttft_s);
    e2els.push_back(r.latency_s);
    // Each SLO holds when the metric is at most its limit, compared in seconds as vLLM does
    // (`slo_ms / 1000 >= metric_s`), so that boundary cases round the same way.
    const bool is_good = (!slos.ttft_ms || *slos.ttft_ms / 1000.0 >= r.ttft_s) &&
                         (!slos.tpot_ms || *slos.tpot_ms / 1000.0 >= tpot) &&
                         (!slos.e2el_ms || *slos.e2el_ms / 1000.0 >= r.latency_s);
    if (is_good) ++good;
  }
  if (duration_s > 0) {
    m.request_throughput = static_cast<double>(m.completed) / duration_s;
    m.output_throughput = static_cast<double>(m.total_output_tokens) / duration_s;
    m.total_token_throughput =
        static_cast<double>(m.total_input_tokens + m.total_output_tokens) / duration_s;
    if (slos.any()) m.request_goodput = static_cast<double>(good) / duration_s;
  } else if (slos.any()) {
    m.request_goodput = 0.0;
  }
  m.ttft = Summarize(ttfts);
  m.tpot = Summarize(tpots);
  m.itl = Summarize(itls);
  m.e2el = Summarize(e2els);
  return m;
}

}  // namespace tessera::bench
