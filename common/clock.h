// Time as an injected dependency: components take a Clock& so tests advance time by hand
// instead of sleeping. RealClock is thread-safe; FakeClock is thread-safe too (a mutex).
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Monotonic time for durations and deadlines.
  virtual absl::Time MonotonicNow() const { return Now(); }
};

// Wall time from absl::Now(); monotonic time from std::chrono::steady_clock.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override;
  absl::Time MonotonicNow() const override;
  // A process-wide instance (stateless).
  static RealClock& Get();
};

// Starts at `start` and moves only when Advance() is called.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch()) : now_(start) {}
  absl::Time Now() const override;
  void Advance(absl::Duration d);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera
