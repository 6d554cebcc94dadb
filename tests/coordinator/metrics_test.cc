#include "coordinator/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(MetricsTest, CounterWithoutLabelsRendersHelpTypeAndValue) {
  MetricsRegistry registry;
  Family<Counter>& requests = registry.AddCounter("vllm:requests_total", "Requests seen.", {});
  requests.WithLabels({}).Increment();
  requests.WithLabels({}).Increment(2);
  EXPECT_EQ(registry.Render(),
            "# HELP vllm:requests_total Requests seen.\n"
            "# TYPE vllm:requests_total counter\n"
            "vllm:requests_total 3\n");
}

TEST(MetricsTest, FamilyWithoutChildrenRendersOnlyHeader) {
  MetricsRegistry registry;
  registry.AddGauge("tessera_replicas", "Replicas.", {"state"});
  EXPECT_EQ(registry.Render(),
            "# HELP tessera_replicas Replicas.\n"
            "# TYPE tessera_replicas gauge\n");
}

TEST(MetricsTest, CounterIgnoresNegativeIncrements) {
  MetricsRegistry registry;
  Counter& counter = registry.AddCounter("c_total", "c", {}).WithLabels({});
  counter.Increment(5);
  counter.Increment(-3);
  counter.Increment(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(counter.value(), 5);
}

TEST(MetricsTest, GaugeSetAndAdd) {
  MetricsRegistry registry;
  Gauge& gauge = registry.AddGauge("g", "g", {}).WithLabels({});
  gauge.Set(10);
  gauge.Add(-2.5);
  EXPECT_EQ(gauge.value(), 7.5);
  EXPECT_THAT(registry.Render(), HasSubstr("\ng 7.5\n"));
}

TEST(MetricsTest, WithLabelsReturnsTheSameChildForTheSameValues) {
  MetricsRegistry registry;
  Family<Counter>& family = registry.AddCounter("c_total", "c", {"model", "code"});
  Counter& a = family.WithLabels({"m", "200"});
  Counter& b = family.WithLabels({"m", "200"});
  Counter& c = family.WithLabels({"m", "500"});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
}

TEST(MetricsTest, LabelsRenderInDeclaredOrderWithEscapedValues) {
  MetricsRegistry registry;
  Family<Gauge>& family = registry.AddGauge("g", "g", {"zeta", "alpha"});
  family.WithLabels({"a\"b", "c\\d\ne"}).Set(1);
  EXPECT_THAT(registry.Render(), HasSubstr("g{zeta=\"a\\\"b\",alpha=\"c\\\\d\\ne\"} 1\n"));
}

TEST(MetricsTest, HelpTextEscapesBackslashAndNewlineButNotQuotes) {
  MetricsRegistry registry;
  registry.AddGauge("g", "a \\ b\nc \"d\"", {});
  EXPECT_THAT(registry.Render(), HasSubstr("# HELP g a \\\\ b\\nc \"d\"\n"));
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  MetricsRegistry registry;
  Family<Histogram>& family = registry.AddHistogram("vllm:e2e_request_latency_seconds", "Latency.",
                                                    {"model_name"}, {0.1, 0.5, 1, 2.5});
  Histogram& histogram = family.WithLabels({"m"});
  for (double v : {0.05, 0.1, 0.3, 0.7, 3.0, 10.0}) histogram.Observe(v);
  EXPECT_THAT(histogram.bucket_counts(), ElementsAre(2, 1, 1, 0, 2));
  EXPECT_EQ(histogram.count(), 6u);
  EXPECT_DOUBLE_EQ(histogram.sum(), 14.15);
  const std::string text = registry.Render();
  const std::string expected_head =
      "# HELP vllm:e2e_request_latency_seconds Latency.\n"
      "# TYPE vllm:e2e_request_latency_seconds histogram\n"
      "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"0.1\"} 2\n"
      "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"0.5\"} 3\n"
      "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"1\"} 4\n"
      "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"2.5\"} 4\n"
      "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 6\n"
      "vllm:e2e_request_latency_seconds_sum{model_name=\"m\"} ";
  ASSERT_EQ(text.substr(0, expected_head.size()), expected_head);
  const std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 9u);
  EXPECT_EQ(std::strtod(lines[7].substr(lines[7].rfind(' ') + 1).c_str(), nullptr),
            histogram.sum());
  EXPECT_EQ(lines[8], "vllm:e2e_request_latency_seconds_count{model_name=\"m\"} 6");
}

TEST(MetricsTest, HistogramWithoutLabelsHasOnlyLe) {
  MetricsRegistry registry;
  registry.AddHistogram("h", "h", {}, {1}).WithLabels({}).Observe(1);
  EXPECT_EQ(registry.Render(),
            "# HELP h h\n# TYPE h histogram\n"
            "h_bucket{le=\"1\"} 1\n"
            "h_bucket{le=\"+Inf\"} 1\n"
            "h_sum 1\n"
            "h_count 1\n");
}

TEST(MetricsTest, HistogramAcceptsExplicitInfBound) {
  Histogram histogram({1, 2, std::numeric_limits<double>::infinity()});
  EXPECT_THAT(histogram.upper_bounds(), ElementsAre(1, 2));
  histogram.Observe(5);
  EXPECT_THAT(histogram.bucket_counts(), ElementsAre(0, 0, 1));
}

TEST(MetricsTest, ValuesAreFormattedSoTheyParseBack) {
  MetricsRegistry registry;
  Family<Gauge>& family = registry.AddGauge("g", "g", {"k"});
  const std::vector<std::pair<std::string, double>> cases = {
      {"zero", 0.0},   {"int", 42.0},    {"negint", -7.0}, {"big", 9007199254740991.0},
      {"huge", 1e300}, {"tiny", 1e-300}, {"frac", 0.1},    {"third", 1.0 / 3.0},
  };
  for (const auto& [key, value] : cases) family.WithLabels({key}).Set(value);
  family.WithLabels({"pinf"}).Set(std::numeric_limits<double>::infinity());
  family.WithLabels({"ninf"}).Set(-std::numeric_limits<double>::infinity());
  family.WithLabels({"nan"}).Set(std::numeric_limits<double>::quiet_NaN());
  const std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr("g{k=\"zero\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"int\"} 42\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"negint\"} -7\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"big\"} 9007199254740991\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"frac\"} 0.1\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"pinf\"} +Inf\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"ninf\"} -Inf\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"nan\"} NaN\n"));
  for (const auto& [key, value] : cases) {
    const std::string prefix = absl::StrCat("g{k=\"", key, "\"} ");
    const size_t at = text.find(prefix);
    ASSERT_NE(at, std::string::npos) << key;
    const size_t end = text.find('\n', at);
    const std::string rendered = text.substr(at + prefix.size(), end - at - prefix.size());
    EXPECT_EQ(std::strtod(rendered.c_str(), nullptr), value) << key << " rendered " << rendered;
    if (value == std::trunc(value) && std::fabs(value) < 1e15) {
      EXPECT_EQ(rendered.find_first_of("e."), std::string::npos)
          << key << ": integers print without exponent or fraction, rendered " << rendered;
    }
  }
}

TEST(MetricsTest, GaugeCallbackIsReadAtRenderTime) {
  MetricsRegistry registry;
  int calls = 0;
  double kv_usage = 0.25;
  registry.AddGaugeCallback("vllm:kv_cache_usage_perc", "KV usage.", {"replica"}, [&] {
    ++calls;
    return std::vector<std::pair<std::vector<std::string>, double>>{{{"r0"}, kv_usage},
                                                                    {{"r1"}, 0.5}};
  });
  EXPECT_EQ(calls, 0);
  EXPECT_THAT(registry.Render(), HasSubstr("vllm:kv_cache_usage_perc{replica=\"r0\"} 0.25\n"
                                           "vllm:kv_cache_usage_perc{replica=\"r1\"} 0.5\n"));
  kv_usage = 0.75;
  EXPECT_THAT(registry.Render(), HasSubstr("vllm:kv_cache_usage_perc{replica=\"r0\"} 0.75\n"));
  EXPECT_EQ(calls, 2);
  EXPECT_THAT(registry.Render(), HasSubstr("# TYPE vllm:kv_cache_usage_perc gauge\n"));
}

TEST(MetricsTest, FamiliesRenderInTheOrderAdded) {
  MetricsRegistry registry;
  registry.AddGauge("b_second", "x", {}).WithLabels({}).Set(1);
  registry.AddCounter("a_first_total", "x", {}).WithLabels({}).Increment();
  registry.AddGaugeCallback("c_third", "x", {}, [] {
    return std::vector<std::pair<std::vector<std::string>, double>>{{{}, 3}};
  });
  const std::string text = registry.Render();
  const size_t b = text.find("# HELP b_second");
  const size_t a = text.find("# HELP a_first_total");
  const size_t c = text.find("# HELP c_third");
  ASSERT_NE(b, std::string::npos);
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(c, std::string::npos);
  EXPECT_LT(b, a);
  EXPECT_LT(a, c);
}

TEST(MetricsTest, ConcurrentUpdatesAndRendersFromSeveralThreads) {
  MetricsRegistry registry;
  Family<Counter>& counters = registry.AddCounter("c_total", "c", {"thread_group"});
  Family<Gauge>& gauges = registry.AddGauge("g", "g", {});
  Family<Histogram>& histograms = registry.AddHistogram("h", "h", {}, {0.5, 1.5});
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        counters.WithLabels({absl::StrCat(t % 2)}).Increment();
        gauges.WithLabels({}).Add(1);
        histograms.WithLabels({}).Observe(i % 2);
        if (i % 5000 == 0) {
          const std::string text = registry.Render();
          EXPECT_THAT(text, HasSubstr("# TYPE h histogram"));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  constexpr double kHalf = kThreads / 2 * kIterations;
  EXPECT_EQ(counters.WithLabels({"0"}).value(), kHalf);
  EXPECT_EQ(counters.WithLabels({"1"}).value(), kHalf);
  EXPECT_EQ(gauges.WithLabels({}).value(), kThreads * kIterations);
  Histogram& histogram = histograms.WithLabels({});
  EXPECT_EQ(histogram.count(), static_cast<uint64_t>(kThreads * kIterations));
  EXPECT_EQ(histogram.sum(), kHalf);
  EXPECT_THAT(histogram.bucket_counts(), ElementsAre(kHalf, kHalf, 0));
  const std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr(absl::StrCat("c_total{thread_group=\"0\"} ", kHalf, "\n")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("h_count ", kThreads * kIterations, "\n")));
}

TEST(MetricsDeathTest, AddingANameTwiceIsAProgrammingError) {
  MetricsRegistry registry;
  registry.AddCounter("c_total", "c", {});
  EXPECT_DEATH(registry.AddGauge("c_total", "g", {}), "added twice");
}

TEST(MetricsDeathTest, WrongLabelCountIsAProgrammingError) {
  MetricsRegistry registry;
  Family<Counter>& family = registry.AddCounter("c_total", "c", {"a"});
  EXPECT_DEATH(family.WithLabels({"x", "y"}), "wrong number of label values");
}

TEST(MetricsDeathTest, InvalidLabelNameIsAProgrammingError) {
  MetricsRegistry registry;
  EXPECT_DEATH(registry.AddCounter("c_total", "c", {"bad-name"}), "invalid label name");
}

// The rendered text read back by the reference parser (python prometheus_client), when
// installed: every family, type, label and value must survive the round trip.
TEST(MetricsTest, PrometheusClientParserReadsTheOutputBack) {
  if (std::system("python3 -c 'import prometheus_client' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 with prometheus_client is not installed (pip install "
                    "prometheus-client)";
  }
  MetricsRegistry registry;
  registry
      .AddCounter("vllm:prompt_tokens_total", "Prompt tokens \\ \"processed\"\nin total.",
                  {"model_name"})
      .WithLabels({"llama \"3\"\n\\x"})
      .Increment(1234);
  registry.AddGauge("vllm:num_requests_running", "Running.", {"model_name"})
      .WithLabels({"m"})
      .Set(0.1);
  registry.AddGauge("tessera_special", "Special values.", {"kind"})
      .WithLabels({"inf"})
      .Set(std::numeric_limits<double>::infinity());
  Histogram& histogram = registry
                             .AddHistogram("vllm:time_to_first_token_seconds", "TTFT.",
                                           {"model_name"}, {0.001, 0.5, 1, 2.5})
                             .WithLabels({"m"});
  histogram.Observe(0.0005);
  histogram.Observe(0.75);
  histogram.Observe(100);
  registry.AddGaugeCallback("tessera_replica_kv_usage", "KV.", {"replica"}, [] {
    return std::vector<std::pair<std::vector<std::string>, double>>{{{"r0"}, 0.125}};
  });

  const std::string dir = ::testing::TempDir();
  const std::string input = dir + "/metrics_test_input.txt";
  const std::string output = dir + "/metrics_test_output.txt";
  {
    std::ofstream file(input);
    file << registry.Render();
  }
  const std::string script =
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "out = open(sys.argv[2], 'w')\n"
      "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
      "    out.write('F %s %s %r\\n' % (f.name, f.type, f.documentation))\n"
      "    for s in f.samples:\n"
      "        labels = ','.join('%s=%r' % kv for kv in sorted(s.labels.items()))\n"
      "        out.write('S %s {%s} %r\\n' % (s.name, labels, s.value))\n";
  const std::string script_path = dir + "/metrics_test_parse.py";
  {
    std::ofstream file(script_path);
    file << script;
  }
  ASSERT_EQ(std::system(absl::StrCat("python3 ", script_path, " ", input, " ", output).c_str()), 0);
  std::ifstream file(output);
  const std::string parsed((std::istreambuf_iterator<char>(file)),
                           std::istreambuf_iterator<char>());
  // The parser strips _total from a counter family's name (OpenMetrics naming).
  EXPECT_THAT(parsed,
              HasSubstr("F vllm:prompt_tokens counter 'Prompt tokens \\\\ \"processed\"\\nin "
                        "total.'\n"
                        "S vllm:prompt_tokens_total {model_name='llama \"3\"\\n\\\\x'} 1234\n"));
  EXPECT_THAT(parsed, HasSubstr("S vllm:num_requests_running {model_name='m'} 0.1\n"));
  EXPECT_THAT(parsed, HasSubstr("S tessera_special {kind='inf'} inf\n"));
  EXPECT_THAT(parsed, HasSubstr("F vllm:time_to_first_token_seconds histogram 'TTFT.'\n"
                                "S vllm:time_to_first_token_seconds_bucket "
                                "{le='0.001',model_name='m'} 1\n"
                                "S vllm:time_to_first_token_seconds_bucket "
                                "{le='0.5',model_name='m'} 1\n"
                                "S vllm:time_to_first_token_seconds_bucket "
                                "{le='1',model_name='m'} 2\n"
                                "S vllm:time_to_first_token_seconds_bucket "
                                "{le='2.5',model_name='m'} 2\n"
                                "S vllm:time_to_first_token_seconds_bucket "
                                "{le='+Inf',model_name='m'} 3\n"
                                "S vllm:time_to_first_token_seconds_sum {model_name='m'} 100.7505\n"
                                "S vllm:time_to_first_token_seconds_count {model_name='m'} 3\n"));
  EXPECT_THAT(parsed, HasSubstr("F tessera_replica_kv_usage gauge 'KV.'\n"
                                "S tessera_replica_kv_usage {replica='r0'} 0.125\n"));
}

}  // namespace
}  // namespace tessera::coordinator
