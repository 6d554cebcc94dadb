// When requests are sent: offsets in seconds from a run's start, ascending. Pure and seeded: the
// same arguments give the same offsets on every platform (bench/random.h).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/types/span.h"

namespace tessera::bench {

// vLLM's arrival process: the first request at 0, then gaps drawn from a gamma distribution with
// shape `burstiness` and scale 1 / (rate * burstiness), so the mean rate is `rate` whatever the
// burstiness (1: Poisson, exponential gaps; < 1 burstier; > 1 more regular). An infinite rate
// sends everything at 0. At most `max_count` offsets; with `duration_s`, only offsets below it.
// Requires rate > 0, burstiness > 0 (checked by ValidateBenchConfig).
std::vector<double> ArrivalOffsets(int64_t max_count, double rate, double burstiness, uint64_t seed,
                                   std::optional<double> duration_s = std::nullopt);

// A trace's own arrival times (milliseconds, ascending) as offsets from its first request:
// `rate` unset replays them as recorded; a finite rate scales them so the mean rate (requests
// after the first / time span) equals it; an infinite rate sends everything at 0.
std::vector<double> TraceOffsets(absl::Span<const double> timestamps_ms,
                                 std::optional<double> rate);

}  // namespace tessera::bench
