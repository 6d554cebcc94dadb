#include "bench/arrivals.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<double> Gaps(const std::vector<double>& offsets) {
  std::vector<double> gaps;
  for (size_t i = 1; i < offsets.size(); ++i) gaps.push_back(offsets[i] - offsets[i - 1]);
  return gaps;
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double CoefficientOfVariation(const std::vector<double>& v) {
  const double m = Mean(v);
  double sq = 0;
  for (double x : v) sq += (x - m) * (x - m);
  return std::sqrt(sq / static_cast<double>(v.size())) / m;
}

TEST(ArrivalsTest, SameSeedSameOffsets) {
  EXPECT_EQ(ArrivalOffsets(100, 4.0, 1.0, 7), ArrivalOffsets(100, 4.0, 1.0, 7));
  EXPECT_NE(ArrivalOffsets(100, 4.0, 1.0, 7), ArrivalOffsets(100, 4.0, 1.0, 8));
}

TEST(ArrivalsTest, StartAtZeroAndAscend) {
  const std::vector<double> offsets = ArrivalOffsets(1000, 10.0, 0.5, 1);
  ASSERT_EQ(offsets.size(), 1000u);
  EXPECT_EQ(offsets[0], 0.0);
  for (size_t i = 1; i < offsets.size(); ++i) EXPECT_GE(offsets[i], offsets[i - 1]);
}

TEST(ArrivalsTest, MeanRateMatchesForEveryBurstiness) {
  for (double burstiness : {0.25, 1.0, 4.0}) {
    for (uint64_t seed : {1u, 2u}) {
      const std::vector<double> gaps = Gaps(ArrivalOffsets(40001, 5.0, burstiness, seed));
      EXPECT_NEAR(1.0 / Mean(gaps), 5.0, 5.0 * 0.04)
          << "burstiness " << burstiness << " seed " << seed;
    }
  }
}

TEST(ArrivalsTest, BurstinessSetsTheSpreadOfGaps) {
  // Gamma(k, .) gaps have a coefficient of variation of 1/sqrt(k): 1 for Poisson.
  for (double burstiness : {0.25, 1.0, 4.0}) {
    const uint64_t seed = 3;
    const double cv = CoefficientOfVariation(Gaps(ArrivalOffsets(40001, 2.0, burstiness, seed)));
    EXPECT_NEAR(cv, 1.0 / std::sqrt(burstiness), 0.08 / std::sqrt(burstiness))
        << "burstiness " << burstiness << " seed " << seed;
  }
}

TEST(ArrivalsTest, InfiniteRateSendsAllAtOnce) {
  EXPECT_EQ(ArrivalOffsets(5, kInf, 1.0, 0), std::vector<double>(5, 0.0));
}

TEST(ArrivalsTest, DurationBoundsTheOffsets) {
  const std::vector<double> offsets =
      ArrivalOffsets(std::numeric_limits<int64_t>::max(), 50.0, 1.0, 9, 20.0);
  EXPECT_NEAR(static_cast<double>(offsets.size()), 1000, 120);
  EXPECT_LT(offsets.back(), 20.0);
  EXPECT_EQ(ArrivalOffsets(3, 50.0, 1.0, 9, 20.0).size(), 3u);  // max_count still binds
}

TEST(TraceOffsetsTest, ReplaysAsRecorded) {
  EXPECT_EQ(TraceOffsets({1000, 1500, 4000}, std::nullopt), (std::vector<double>{0, 0.5, 3.0}));
}

TEST(TraceOffsetsTest, ScalesToTheRequestedMeanRate) {
  // 3 requests over 3 s: 2 gaps in 3 s = 0.667 req/s; at 2 req/s the span is 1 s.
  const std::vector<double> offsets = TraceOffsets({1000, 1500, 4000}, 2.0);
  ASSERT_EQ(offsets.size(), 3u);
  EXPECT_NEAR(offsets[1], 0.5 / 3, 1e-12);
  EXPECT_NEAR(offsets[2], 1.0, 1e-12);
  EXPECT_EQ(TraceOffsets({1000, 1500, 4000}, kInf), (std::vector<double>{0, 0, 0}));
}

}  // namespace
}  // namespace tessera::bench
