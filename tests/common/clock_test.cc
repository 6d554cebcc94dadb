#include "common/clock.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace tessera {
namespace {

TEST(ClockTest, FakeClockStartsAtEpochByDefault) {
  FakeClock clock;
  EXPECT_EQ(clock.Now(), absl::UnixEpoch());
  EXPECT_EQ(clock.MonotonicNow(), absl::UnixEpoch());
}

TEST(ClockTest, FakeClockMovesOnlyWhenAdvanced) {
  const absl::Time start = absl::FromUnixSeconds(1700000000);
  FakeClock clock(start);
  EXPECT_EQ(clock.Now(), start);
  EXPECT_EQ(clock.Now(), start);  // no drift
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), start + absl::Seconds(5));
  clock.Advance(absl::Milliseconds(250));
  EXPECT_EQ(clock.Now(), start + absl::Milliseconds(5250));
  EXPECT_EQ(clock.MonotonicNow(), clock.Now());  // the base class default
  clock.Advance(absl::ZeroDuration());
  EXPECT_EQ(clock.Now(), start + absl::Milliseconds(5250));
  clock.Advance(absl::Nanoseconds(1));
  EXPECT_EQ(clock.Now() - start, absl::Milliseconds(5250) + absl::Nanoseconds(1));
}

TEST(ClockTest, FakeClockThroughBaseReference) {
  FakeClock fake;
  const Clock& clock = fake;
  const absl::Time before = clock.Now();
  fake.Advance(absl::Minutes(2));
  EXPECT_EQ(clock.Now() - before, absl::Minutes(2));
  EXPECT_EQ(clock.MonotonicNow() - before, absl::Minutes(2));
}

TEST(ClockTest, FakeClockConcurrentAdvance) {
  FakeClock clock;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&clock] {
      for (int i = 0; i < 1000; ++i) {
        clock.Advance(absl::Microseconds(1));
        (void)clock.Now();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(clock.Now(), absl::UnixEpoch() + absl::Milliseconds(4));
}

TEST(ClockTest, RealClockWallTimeIsNow) {
  RealClock clock;
  const absl::Time before = absl::Now();
  const absl::Time now = clock.Now();
  const absl::Time after = absl::Now();
  EXPECT_LE(before, now);
  EXPECT_LE(now, after);
}

TEST(ClockTest, RealClockMonotonicNonDecreasing) {
  const Clock& clock = RealClock::Get();
  absl::Time previous = clock.MonotonicNow();
  for (int i = 0; i < 100000; ++i) {
    const absl::Time now = clock.MonotonicNow();
    ASSERT_GE(now, previous) << "step " << i;
    previous = now;
  }
  // It actually advances.
  const absl::Time start = clock.MonotonicNow();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const absl::Duration slept = clock.MonotonicNow() - start;
  EXPECT_GE(slept, absl::Milliseconds(2));
  EXPECT_LT(slept, absl::Seconds(10));
}

TEST(ClockTest, RealClockGetIsASingleton) { EXPECT_EQ(&RealClock::Get(), &RealClock::Get()); }

}  // namespace
}  // namespace tessera
