#include "bench/prometheus.h"

#include <cmath>
#include <string>

#include "coordinator/metrics.h"
#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

TEST(PrometheusTest, ParsesNamesLabelsValuesAndTimestamps) {
  auto samples = ParsePrometheusText(
      "# HELP vllm:x X.\n"
      "# TYPE vllm:x counter\n"
      "vllm:x{model_name=\"m\",reason=\"a \\\"b\\\" \\\\ c\\n\"} 3.5\n"
      "plain 7 1700000000000\n"
      "h_bucket{le=\"+Inf\"} 4\n"
      "neg -Inf\n"
      "\n");
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_EQ(samples->size(), 4u);
  const PromSample& x = (*samples)[0];
  EXPECT_EQ(x.name, "vllm:x");
  ASSERT_EQ(x.labels.size(), 2u);
  EXPECT_EQ(x.labels[0].first, "model_name");
  EXPECT_EQ(x.labels[0].second, "m");
  EXPECT_EQ(x.labels[1].second, "a \"b\" \\ c\n");
  EXPECT_EQ(x.value, 3.5);
  EXPECT_EQ((*samples)[1].value, 7);
  EXPECT_EQ((*samples)[2].labels[0].second, "+Inf");
  EXPECT_TRUE(std::isinf((*samples)[3].value));
}

TEST(PrometheusTest, MalformedLinesNameTheLine) {
  EXPECT_EQ(ParsePrometheusText("ok 1\nbad{le=\"1\" 2\n").status().message(),
            "line 2: expected a label name or '}'");
  EXPECT_EQ(ParsePrometheusText("bad{le 2}\n").status().message(),
            "line 1: expected '=' after a label name");
  EXPECT_EQ(ParsePrometheusText("x abc\n").status().message(), "line 1: not a number: 'abc'");
  EXPECT_EQ(ParsePrometheusText("x{a=\"1} 2\n").status().message(),
            "line 1: unterminated label value");
  EXPECT_EQ(ParsePrometheusText("x\n").status().message(),
            "line 1: expected a value (and an optional timestamp) after the name");
}

TEST(PrometheusTest, SnapshotSumsOverLabelSets) {
  auto samples = ParsePrometheusText(
      "c_total{r=\"a\"} 2\nc_total{r=\"b\"} 3\n"
      "h_bucket{m=\"a\",le=\"0.1\"} 1\nh_bucket{m=\"b\",le=\"0.1\"} 2\n"
      "h_bucket{m=\"a\",le=\"+Inf\"} 3\n");
  ASSERT_TRUE(samples.ok());
  const MetricsSnapshot s = MetricsSnapshot::FromSamples(*samples);
  EXPECT_EQ(*s.Sum("c_total"), 5);
  EXPECT_FALSE(s.Sum("missing").has_value());
  const std::map<double, double> buckets = s.Buckets("h");
  EXPECT_EQ(buckets.at(0.1), 3);
  EXPECT_EQ(buckets.at(INFINITY), 3);
}

TEST(PrometheusTest, HistogramQuantileInterpolatesWithinABucket) {
  // 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, 4].
  const std::map<double, double> buckets = {{1, 4}, {2, 8}, {4, 10}, {INFINITY, 10}};
  EXPECT_DOUBLE_EQ(*HistogramQuantile(buckets, 0.5), 1.25);  // rank 5: 1/4 into (1, 2]
  EXPECT_DOUBLE_EQ(*HistogramQuantile(buckets, 0.2), 0.5);
  EXPECT_DOUBLE_EQ(*HistogramQuantile(buckets, 0.9), 3.0);
  EXPECT_FALSE(HistogramQuantile({{1, 0}, {INFINITY, 0}}, 0.5).has_value());
  EXPECT_FALSE(HistogramQuantile({{1, 0}, {INFINITY, 2}}, 0.5).has_value());  // in +Inf
}

// The coordinator's own exposition (coordinator/metrics.h), before and after a "run".
TEST(PrometheusTest, BreakdownDiffsTheCoordinatorsHistogramsAndCounters) {
  coordinator::MetricsRegistry registry;
  coordinator::Histogram& ttft = registry
                                     .AddHistogram("vllm:time_to_first_token_seconds", "TTFT",
                                                   {"model_name"}, {0.01, 0.1, 1.0})
                                     .WithLabels({"m"});
  coordinator::Histogram& e2e =
      registry.AddHistogram("vllm:e2e_request_latency_seconds", "E2E", {"model_name"}, {1.0})
          .WithLabels({"m"});
  coordinator::Counter& bytes =
      registry.AddCounter("tessera_kv_transfer_bytes_total", "B", {"replica", "direction"})
          .WithLabels({"d", "in"});
  coordinator::Counter& tokens =
      registry.AddCounter("vllm:generation_tokens_total", "T", {"model_name"}).WithLabels({"m"});
  ttft.Observe(5.0);  // before the run: must not count
  bytes.Increment(100);
  auto before = ParsePrometheusText(registry.Render());
  ASSERT_TRUE(before.ok()) << before.status();

  ttft.Observe(0.02);
  ttft.Observe(0.04);
  e2e.Observe(0.5);
  bytes.Increment(4096);
  tokens.Increment(30);
  auto after = ParsePrometheusText(registry.Render());
  ASSERT_TRUE(after.ok()) << after.status();

  const ServerBreakdown b =
      DiffSnapshots(MetricsSnapshot::FromSamples(*before), MetricsSnapshot::FromSamples(*after));
  ASSERT_TRUE(b.stages.contains("ttft"));
  const StageDelta& t = b.stages.at("ttft");
  EXPECT_EQ(t.metric, "vllm:time_to_first_token_seconds");
  EXPECT_EQ(t.count, 2);
  EXPECT_NEAR(t.mean_ms, 30, 1e-9);
  ASSERT_TRUE(t.p50_ms.has_value());
  EXPECT_NEAR(*t.p50_ms, 10 + 90 * 0.5, 1e-9);  // rank 1 of 2, both in (0.01, 0.1]
  EXPECT_NEAR(b.stages.at("e2e").mean_ms, 500, 1e-9);
  EXPECT_FALSE(b.stages.contains("queue"));  // not exported: absent, not zero
  EXPECT_FALSE(b.stages.contains("prefill"));
  EXPECT_EQ(b.counters.at("tessera_kv_transfer_bytes_total"), 4096);
  EXPECT_EQ(b.counters.at("vllm:generation_tokens_total"), 30);
  EXPECT_FALSE(b.counters.contains("vllm:prompt_tokens_total"));
}

TEST(PrometheusTest, BreakdownUsesVllmStageHistogramsWhenExported) {
  auto before = ParsePrometheusText(
      "vllm:request_queue_time_seconds_sum 1\nvllm:request_queue_time_seconds_count 1\n"
      "vllm:time_per_output_token_seconds_sum 0\nvllm:time_per_output_token_seconds_count 0\n");
  auto after = ParsePrometheusText(
      "vllm:request_queue_time_seconds_sum 1.5\nvllm:request_queue_time_seconds_count 3\n"
      "vllm:time_per_output_token_seconds_sum 0.1\nvllm:time_per_output_token_seconds_count 10\n");
  ASSERT_TRUE(before.ok() && after.ok());
  const ServerBreakdown b =
      DiffSnapshots(MetricsSnapshot::FromSamples(*before), MetricsSnapshot::FromSamples(*after));
  EXPECT_NEAR(b.stages.at("queue").mean_ms, 250, 1e-9);
  EXPECT_EQ(b.stages.at("itl").metric, "vllm:time_per_output_token_seconds");
  EXPECT_NEAR(b.stages.at("itl").mean_ms, 10, 1e-9);
}

}  // namespace
}  // namespace tessera::bench
