// The metric arithmetic against hand-computed examples (vLLM's calculate_metrics definitions).
#include "bench/metrics.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

RequestRecord Ok(int64_t prompt, int64_t output, double ttft, double latency,
                 std::vector<double> itl) {
  RequestRecord r;
  r.success = true;
  r.prompt_tokens = prompt;
  r.output_tokens = output;
  r.ttft_s = ttft;
  r.latency_s = latency;
  r.itl_s = std::move(itl);
  return r;
}

// A: 5 tokens, TTFT 100 ms, E2E 500 ms -> TPOT (500-100)/4 = 100 ms; ITLs 4 x 100 ms.
// B: 3 tokens, TTFT 300 ms, E2E 700 ms -> TPOT 400/2 = 200 ms; ITLs 2 x 200 ms.
// C: 1 token,  TTFT 200 ms, E2E 200 ms -> no TPOT (0 for goodput), no ITL.
// D: failed (its 40 prompt tokens count nowhere).
// Duration 2 s.
std::vector<RequestRecord> Example() {
  RequestRecord failed;
  failed.prompt_tokens = 40;
  failed.error = "HTTP 429";
  return {Ok(10, 5, 0.1, 0.5, {0.1, 0.1, 0.1, 0.1}), Ok(20, 3, 0.3, 0.7, {0.2, 0.2}),
          Ok(30, 1, 0.2, 0.2, {}), failed};
}

TEST(PercentileTest, InterpolatesLinearlyLikeNumpy) {
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 90), 3.7);           // np.percentile(.., 90)
  EXPECT_DOUBLE_EQ(Percentile({15, 20, 35, 40, 50}, 40), 29.0);  // rank 1.6
  EXPECT_DOUBLE_EQ(Percentile({50, 15, 40, 35, 20}, 50), 35.0);  // unsorted input
  EXPECT_DOUBLE_EQ(Percentile({7}, 99), 7.0);
  EXPECT_DOUBLE_EQ(Percentile({}, 50), 0.0);
  EXPECT_DOUBLE_EQ(Percentile({1, 2}, 0), 1.0);
  EXPECT_DOUBLE_EQ(Percentile({1, 2}, 100), 2.0);
}

TEST(MetricsTest, CountsAndThroughputs) {
  const BenchMetrics m = ComputeMetrics(Example(), 2.0, Slos{});
  EXPECT_EQ(m.completed, 3);
  EXPECT_EQ(m.failed, 1);
  EXPECT_EQ(m.total_input_tokens, 60);
  EXPECT_EQ(m.total_output_tokens, 9);
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(m.output_throughput, 4.5);
  EXPECT_DOUBLE_EQ(m.total_token_throughput, 34.5);
  EXPECT_FALSE(m.request_goodput.has_value());
}

TEST(MetricsTest, Ttft) {
  const LatencyStats s = ComputeMetrics(Example(), 2.0, Slos{}).ttft;  // 100, 300, 200 ms
  EXPECT_NEAR(s.mean_ms, 200, 1e-9);
  EXPECT_NEAR(s.median_ms, 200, 1e-9);
  EXPECT_NEAR(s.p90_ms, 280, 1e-9);  // rank 1.8 of [100, 200, 300]
  EXPECT_NEAR(s.p99_ms, 298, 1e-9);
  EXPECT_NEAR(s.std_ms, std::sqrt(20000.0 / 3), 1e-9);  // population std
}

TEST(MetricsTest, TpotSkipsSingleTokenRequests) {
  const LatencyStats s = ComputeMetrics(Example(), 2.0, Slos{}).tpot;  // 100, 200 ms
  EXPECT_NEAR(s.mean_ms, 150, 1e-9);
  EXPECT_NEAR(s.median_ms, 150, 1e-9);
  EXPECT_NEAR(s.p90_ms, 190, 1e-9);
  EXPECT_NEAR(s.p99_ms, 199, 1e-9);
  EXPECT_NEAR(s.std_ms, 50, 1e-9);
}

TEST(MetricsTest, ItlPoolsEveryGap) {
  const LatencyStats s = ComputeMetrics(Example(), 2.0, Slos{}).itl;  // 4 x 100, 2 x 200 ms
  EXPECT_NEAR(s.mean_ms, 800.0 / 6, 1e-9);
  EXPECT_NEAR(s.median_ms, 100, 1e-9);
  EXPECT_NEAR(s.p90_ms, 200, 1e-9);
  EXPECT_NEAR(s.p99_ms, 200, 1e-9);
}

TEST(MetricsTest, E2eLatency) {
  const LatencyStats s = ComputeMetrics(Example(), 2.0, Slos{}).e2el;  // 500, 700, 200 ms
  EXPECT_NEAR(s.mean_ms, 1400.0 / 3, 1e-9);
  EXPECT_NEAR(s.median_ms, 500, 1e-9);
  EXPECT_NEAR(s.p90_ms, 660, 1e-9);
  EXPECT_NEAR(s.p99_ms, 696, 1e-9);
}

double Goodput(Slos slos) { return *ComputeMetrics(Example(), 2.0, slos).request_goodput; }

TEST(MetricsTest, GoodputTtftSlo) {
  EXPECT_DOUBLE_EQ(Goodput({.ttft_ms = 250}), 1.0);  // A and C
  EXPECT_DOUBLE_EQ(Goodput({.ttft_ms = 100}), 0.5);  // A, at the limit: <= counts
  EXPECT_DOUBLE_EQ(Goodput({.ttft_ms = 50}), 0.0);
}

TEST(MetricsTest, GoodputTpotSloTakesZeroForOneTokenOutputs) {
  EXPECT_DOUBLE_EQ(Goodput({.tpot_ms = 150}), 1.0);  // A (100) and C (0)
  EXPECT_DOUBLE_EQ(Goodput({.tpot_ms = 50}), 0.5);   // only C
}

TEST(MetricsTest, GoodputE2eSlo) {
  EXPECT_DOUBLE_EQ(Goodput({.e2el_ms = 600}), 1.0);   // A and C
  EXPECT_DOUBLE_EQ(Goodput({.e2el_ms = 1000}), 1.5);  // all three that succeeded
}

TEST(MetricsTest, GoodputNeedsEverySlo) {
  EXPECT_DOUBLE_EQ(Goodput({.ttft_ms = 250, .e2el_ms = 400}), 0.5);  // C only
  EXPECT_DOUBLE_EQ(Goodput({.ttft_ms = 1000, .tpot_ms = 150, .e2el_ms = 600}), 1.0);
}

TEST(MetricsTest, EmptyAndAllFailedRunsGiveZeros) {
  RequestRecord failed;
  failed.prompt_tokens = 5;
  const BenchMetrics m = ComputeMetrics({failed}, 1.0, Slos{.ttft_ms = 10});
  EXPECT_EQ(m.completed, 0);
  EXPECT_EQ(m.failed, 1);
  EXPECT_EQ(m.ttft.mean_ms, 0);
  EXPECT_EQ(m.itl.p99_ms, 0);
  EXPECT_EQ(*m.request_goodput, 0);
  EXPECT_EQ(ComputeMetrics({}, 0.0, Slos{}).request_throughput, 0);
}

}  // namespace
}  // namespace tessera::bench
