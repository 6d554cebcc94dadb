#include "bench/arrivals.h"

#include <cmath>

#include "bench/random.h"

namespace tessera::bench {

std::vector<double> ArrivalOffsets(int64_t max_count, double rate, double burstiness, uint64_t seed,
                                   std::optional<double> duration_s) {
  std::vector<double> offsets;
  if (max_count <= 0) return offsets;
  if (std::isinf(rate)) {
    offsets.assign(static_cast<size_t>(max_count), 0.0);
    return offsets;
  }
  Rng rng(Mix64(seed ^ 0xa77a1ULL));
  const double scale = 1.0 / (rate * burstiness);
  double t = 0;
  while (static_cast<int64_t>(offsets.size()) < max_count) {
    if (duration_s.has_value() && t >= *duration_s) break;
    offsets.push_back(t);
    t += rng.Gamma(burstiness, scale);
  }
  return offsets;
}

std::vector<double> TraceOffsets(absl::Span<const double> timestamps_ms,
                                 std::optional<double> rate) {
  std::vector<double> offsets;
  offsets.reserve(timestamps_ms.size());
  if (timestamps_ms.empty()) return offsets;
  const double first = timestamps_ms.front();
  const double span_s = (timestamps_ms.back() - first) / 1000.0;
  double factor = 1.0;  // seconds of offset per second of trace time
  if (rate.has_value()) {
    if (std::isinf(*rate) || span_s <= 0) {
      factor = 0.0;
    } else {
      const double trace_rate = static_cast<double>(timestamps_ms.size() - 1) / span_s;
      factor = trace_rate / *rate;
    }
  }
  for (double ts : timestamps_ms) offsets.push_back((ts - first) / 1000.0 * factor);
  return offsets;
}

}  // namespace tessera::bench
