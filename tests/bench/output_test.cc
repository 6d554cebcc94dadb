// What a bench writes: the JSON result's keys, the SVG plot, the summary table, and the flags.
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_flags.h"
#include "bench/progress.h"
#include "bench/report.h"
#include "bench/result_json.h"
#include "bench/svg_plot.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

using ::testing::HasSubstr;

BenchResult MakeResult(std::vector<std::optional<double>> rates) {
  BenchResult result;
  result.config.slos.ttft_ms = 100;
  result.server.model = "demo";
  result.server.max_model_len = 1024;
  result.target = "openai http://127.0.0.1:8000";
  result.token_id_range = 384;
  result.started_at = "2026-01-01T00:00:00Z";
  for (size_t i = 0; i < rates.size(); ++i) {
    RunResult run;
    run.request_rate = rates[i];
    RequestRecord ok;
    ok.success = true;
    ok.prompt_tokens = 8;
    ok.output_tokens = 3;
    ok.ttft_s = 0.01 * static_cast<double>(i + 1);
    ok.latency_s = 0.05 * static_cast<double>(i + 1);
    ok.itl_s = {0.02, 0.02};
    RequestRecord bad;
    bad.prompt_tokens = 8;
    bad.error = "HTTP 429: too many requests";
    run.records = {ok, bad};
    run.metrics = ComputeMetrics(run.records, 1.0, result.config.slos);
    if (i == 0) {
      ServerBreakdown server;
      server.stages["ttft"] = StageDelta{"vllm:time_to_first_token_seconds", 1, 9.5, 9.0, {}};
      server.counters["vllm:generation_tokens_total"] = 3;
      run.server = server;
    } else {
      run.server_error = "GET http://x/metrics: cannot reach the server";
    }
    result.runs.push_back(std::move(run));
  }
  return result;
}

TEST(ResultJsonTest, HasTheDocumentedKeys) {
  const nlohmann::json j = ResultToJson(MakeResult({1.0, kInfiniteRate}));
  for (const char* key :
       {"tessera_bench_version", "date", "backend", "target", "model_id", "dataset_name",
        "dataset_path", "num_prompts", "burstiness", "max_concurrency", "seed", "token_id_range",
        "max_model_len", "metrics_url", "goodput", "runs"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["goodput"]["ttft_ms"], 100.0);
  EXPECT_TRUE(j["goodput"]["tpot_ms"].is_null());
  ASSERT_EQ(j["runs"].size(), 2u);
  const nlohmann::json& run = j["runs"][0];
  for (const char* key : {"request_rate",
                          "client_threads",
                          "completed",
                          "failed",
                          "duration",
                          "total_input_tokens",
                          "total_output_tokens",
                          "request_throughput",
                          "request_goodput",
                          "output_throughput",
                          "total_token_throughput",
                          "input_lens",
                          "output_lens",
                          "start_times",
                          "ttfts",
                          "e2els",
                          "itls",
                          "errors",
                          "server_breakdown",
                          "server_breakdown_error"}) {
    EXPECT_TRUE(run.contains(key)) << key;
  }
  for (const char* metric : {"ttft", "tpot", "itl", "e2el"}) {
    for (const char* stat : {"mean", "median", "std", "p90", "p99"}) {
      const std::string key = std::string(stat) + "_" + metric + "_ms";
      EXPECT_TRUE(run.contains(key)) << key;
      EXPECT_TRUE(run[key].is_number()) << key;
    }
  }
  EXPECT_EQ(run["request_rate"], 1.0);
  EXPECT_EQ(j["runs"][1]["request_rate"], "inf");  // JSON has no infinity
  EXPECT_EQ(run["completed"], 1);
  EXPECT_EQ(run["failed"], 1);
  EXPECT_EQ(run["errors"][1], "HTTP 429: too many requests");
  EXPECT_EQ(run["itls"][0].size(), 2u);
  EXPECT_EQ(run["server_breakdown"]["stages"]["ttft"]["mean_ms"], 9.5);
  EXPECT_TRUE(run["server_breakdown"]["stages"]["ttft"]["p99_ms"].is_null());
  EXPECT_TRUE(j["runs"][1]["server_breakdown"].is_null());
  EXPECT_THAT(j["runs"][1]["server_breakdown_error"].get<std::string>(), HasSubstr("cannot reach"));
}

// A minimal well-formedness check: tags balance, attributes are quoted, entities are known.
bool WellFormedXml(const std::string& xml, std::string* why) {
  std::vector<std::string> open;
  size_t i = 0;
  if (xml.rfind("<?xml", 0) == 0) i = xml.find("?>") + 2;
  while (i < xml.size()) {
    const size_t lt = xml.find('<', i);
    const std::string text = xml.substr(i, lt == std::string::npos ? std::string::npos : lt - i);
    for (size_t a = text.find('&'); a != std::string::npos; a = text.find('&', a + 1)) {
      const size_t semi = text.find(';', a);
      const std::string entity = text.substr(a, semi == std::string::npos ? 1 : semi - a + 1);
      if (entity != "&amp;" && entity != "&lt;" && entity != "&gt;" && entity != "&quot;") {
        *why = "bad entity " + entity;
        return false;
      }
    }
    if (lt == std::string::npos) break;
    const size_t gt = xml.find('>', lt);
    if (gt == std::string::npos) {
      *why = "unterminated tag";
      return false;
    }
    std::string tag = xml.substr(lt + 1, gt - lt - 1);
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) {
      *why = "unbalanced quotes in <" + tag + ">";
      return false;
    }
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (open.empty() || open.back() != name) {
        *why = "</" + name + "> closes " + (open.empty() ? std::string("nothing") : open.back());
        return false;
      }
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(tag.substr(0, tag.find_first_of(" \n")));
    }
    i = gt + 1;
  }
  if (!open.empty()) {
    *why = "<" + open.back() + "> never closed";
    return false;
  }
  return true;
}

size_t Count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1))
    ++n;
  return n;
}

TEST(SvgPlotTest, WellFormedWithOnePointPerRatePerSeries) {
  const BenchResult result = MakeResult({0.5, 2.0, 8.0, kInfiniteRate});
  const std::string svg = RenderLatencyPlot(PlotPoints(result), "a <title> & \"quotes\"");
  std::string why;
  EXPECT_TRUE(WellFormedXml(svg, &why)) << why << "\n" << svg;
  EXPECT_THAT(svg, HasSubstr("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  // 3 panels x (mean, p99) x 4 rates.
  EXPECT_EQ(Count(svg, "<circle class=\"point mean\""), 3u * 4u);
  EXPECT_EQ(Count(svg, "<circle class=\"point p99\""), 3u * 4u);
  EXPECT_EQ(Count(svg, "<g class=\"panel\""), 3u);
  EXPECT_THAT(svg, HasSubstr(">inf</text>"));
  EXPECT_THAT(svg, HasSubstr("a &lt;title&gt; &amp; &quot;quotes&quot;"));
}

TEST(SvgPlotTest, WritesOnlySvg) {
  const BenchResult result = MakeResult({1.0});
  EXPECT_EQ(WriteLatencyPlot(result, "/tmp/plot.png").code(), absl::StatusCode::kInvalidArgument);
  const std::string path = ::testing::TempDir() + "/bench_plot.svg";
  EXPECT_TRUE(WriteLatencyPlot(result, path).ok());
}

TEST(ReportTest, TableLooksLikeVllms) {
  const BenchResult result = MakeResult({2.0});
  const std::string table = FormatRunTable(result.config, result.runs[0]);
  EXPECT_EQ(table.rfind("============ Serving Benchmark Result ============\n", 0), 0u) << table;
  for (const char* line :
       {"Successful requests:                     1", "Failed requests:                         1",
        "Request rate configured (RPS):           2",
        "Request goodput (req/s):", "---------------Time to First Token----------------",
        "-----Time per Output Token (excl. 1st token)------", "Mean TTFT (ms):", "P90 TTFT (ms):",
        "P99 ITL (ms):", "Median E2EL (ms):", "Server breakdown (/metrics)",
        "1 x HTTP 429: too many requests"}) {
    EXPECT_THAT(table, HasSubstr(line));
  }
}

TEST(ProgressTest, PlainLinesWhenNotATerminal) {
  char* buffer = nullptr;
  size_t size = 0;
  std::FILE* out = open_memstream(&buffer, &size);
  {
    TerminalProgress progress(out, /*tty=*/false, absl::Seconds(5));
    progress.OnRunStart(0, 2, 4.0, 10);
    progress.OnProgress(1, 0, 10, 0.3);
    progress.OnProgress(2, 0, 10, 1.0);   // within 5 s of the last line: quiet
    progress.OnProgress(10, 1, 10, 2.0);  // the end is always shown
    progress.OnRunEnd(RunResult{});
  }
  std::fclose(out);
  const std::string text(buffer, size);
  std::free(buffer);
  EXPECT_EQ(text,
            "run 1/2: 10 requests at rate 4\n"
            "  1/10 done (0 failed) after 0.3 s\n"
            "  10/10 done (1 failed) after 2.0 s\n");
}

TEST(BenchFlagsTest, ParsesRatesAndGoodput) {
  auto rates = ParseRates({"1,2.5", "inf"});
  ASSERT_TRUE(rates.ok());
  EXPECT_EQ(*rates, (std::vector<double>{1, 2.5, kInfiniteRate}));
  EXPECT_FALSE(ParseRates({"0"}).ok());
  EXPECT_FALSE(ParseRates({"fast"}).ok());
  auto slos = ParseGoodput({"ttft:500", "tpot:50,e2el:2000"});
  ASSERT_TRUE(slos.ok());
  EXPECT_EQ(*slos->ttft_ms, 500);
  EXPECT_EQ(*slos->tpot_ms, 50);
  EXPECT_EQ(*slos->e2el_ms, 2000);
  EXPECT_THAT(std::string(ParseGoodput({"ttfb:1"}).status().message()),
              HasSubstr("'ttfb' is not one of ttft, tpot, e2el"));
  EXPECT_FALSE(ParseGoodput({"ttft"}).ok());
  EXPECT_FALSE(ParseGoodput({"ttft:-1"}).ok());
}

TEST(BenchFlagsTest, CommandLineBecomesAConfig) {
  CLI::App app;
  BenchFlags flags;
  AddBenchFlags(app, flags);
  std::vector<std::string> args = {"--backend",
                                   "tessera-grpc",
                                   "--port",
                                   "9001",
                                   "--dataset-name",
                                   "prefix",
                                   "--prefix-len",
                                   "32",
                                   "--num-prefixes",
                                   "4",
                                   "--request-rate",
                                   "1,2",
                                   "--request-rate",
                                   "inf",
                                   "--goodput",
                                   "ttft:300",
                                   "tpot:20",
                                   "--seed",
                                   "7",
                                   "--max-concurrency",
                                   "16",
                                   "--no-ignore-eos"};
  std::reverse(args.begin(), args.end());  // CLI11 takes them last-first
  app.parse(args);
  auto config = BenchConfigFromFlags(flags);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->endpoint, Endpoint::kKServeGrpc);
  EXPECT_EQ(EffectivePort(*config), 9001);
  EXPECT_EQ(config->workload.dataset, Dataset::kPrefix);
  EXPECT_EQ(config->workload.prefix_len, 32);
  EXPECT_EQ(config->request_rates, (std::vector<double>{1, 2, kInfiniteRate}));
  EXPECT_EQ(*config->slos.tpot_ms, 20);
  EXPECT_EQ(config->seed, 7u);
  EXPECT_EQ(config->max_concurrency, 16);
  EXPECT_FALSE(config->ignore_eos);
  EXPECT_EQ(config->num_prompts, 1000);
}

absl::Status ConfigError(const BenchFlags& flags) { return BenchConfigFromFlags(flags).status(); }

TEST(BenchFlagsTest, BadCombinationsNameTheFlag) {
  BenchFlags flags;
  flags.structured_outputs = "[1]";
  EXPECT_THAT(std::string(ConfigError(flags).message()), HasSubstr("--structured-outputs"));
  flags = BenchFlags{};
  flags.dataset_name = "mooncake";
  EXPECT_THAT(std::string(ConfigError(flags).message()), HasSubstr("--dataset-path"));
  flags = BenchFlags{};
  flags.dataset_name = "prefix";
  EXPECT_THAT(std::string(ConfigError(flags).message()), HasSubstr("--prefix-len"));
  flags = BenchFlags{};
  flags.duration_s = 10;  // with the default rate, inf
  EXPECT_THAT(std::string(ConfigError(flags).message()), HasSubstr("--duration"));
  flags = BenchFlags{};
  flags.plot = "out.png";
  EXPECT_THAT(std::string(ConfigError(flags).message()), HasSubstr("--plot"));
  flags = BenchFlags{};
  flags.base_url = "https://x:1";
  EXPECT_THAT(std::string(ConfigError(flags).message()), HasSubstr("--base-url"));
  flags = BenchFlags{};
  flags.random_range_ratio = 1.0;
  EXPECT_THAT(std::string(ConfigError(flags).message()), HasSubstr("--random-range-ratio"));
  flags = BenchFlags{};
  flags.duration_s = 5;
  flags.request_rates = {"2"};
  auto config = BenchConfigFromFlags(flags);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_GT(config->num_prompts, 1000000);  // --duration alone bounds the run
}

}  // namespace
}  // namespace tessera::bench
