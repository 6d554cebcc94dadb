#pragma once
// Polling for tests that wait on another thread or process: one helper instead of a copy per file.

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tessera::testing {

// Polls `condition` every millisecond until it holds (true) or `timeout` passes (false).
template <typename F>
bool Await(F condition, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

}  // namespace tessera::testing
