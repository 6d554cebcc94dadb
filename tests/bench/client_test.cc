// RunBench through both clients against the real API servers (coordinator/api) over a fake
// Frontend in this process: token counting, timing, failures and discovery, without a cluster.
#include <fstream>
#include <memory>
#include <string>

#include "bench/bench.h"
#include "coordinator/api/kserve_server.h"
#include "coordinator/api/openai_http.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/fake_frontend.h"

namespace tessera::bench {
namespace {

using ::testing::HasSubstr;

enum class Api { kGrpc, kHttp };
// gtest prints a parameter into the test's CTest name.
void PrintTo(Api api, std::ostream* os) { *os << (api == Api::kGrpc ? "grpc" : "http"); }

class ClientTest : public ::testing::TestWithParam<Api> {
 protected:
  void SetUp() override {
    frontend_.token_delay = absl::Milliseconds(2);
    if (GetParam() == Api::kGrpc) {
      auto server = coordinator::KServeServer::Create(frontend_);
      ASSERT_TRUE(server.ok()) << server.status();
      kserve_ = *std::move(server);
      port_ = kserve_->port();
    } else {
      auto server = coordinator::api::OpenAiHttpServer::Create(frontend_, {});
      ASSERT_TRUE(server.ok()) << server.status();
      http_ = *std::move(server);
      port_ = http_->port();
    }
  }

  BenchConfig Config() const {
    BenchConfig config;
    config.endpoint = GetParam() == Api::kGrpc ? Endpoint::kKServeGrpc : Endpoint::kOpenAiHttp;
    config.port = port_;
    config.workload.dataset = Dataset::kFixed;
    config.workload.input_len = 8;
    config.workload.output_len = 5;
    config.num_prompts = 12;
    config.request_rates = {kInfiniteRate, 200.0};
    config.request_timeout = absl::Seconds(30);
    return config;
  }

  coordinator::testing::FakeFrontend frontend_;
  std::unique_ptr<coordinator::KServeServer> kserve_;
  std::unique_ptr<coordinator::api::OpenAiHttpServer> http_;
  int port_ = 0;
};

TEST_P(ClientTest, EveryRequestSucceedsWithExactTokenCounts) {
  absl::StatusOr<BenchResult> result = RunBench(Config(), nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->server.model, "fake-model");
  EXPECT_EQ(result->server.max_model_len, 256);
  EXPECT_EQ(result->token_id_range, GetParam() == Api::kGrpc ? 384 : 256);
  ASSERT_EQ(result->runs.size(), 2u);
  for (const RunResult& run : result->runs) {
    EXPECT_EQ(run.metrics.completed, 12);
    EXPECT_EQ(run.metrics.failed, 0);
    EXPECT_EQ(run.metrics.total_input_tokens, 12 * 8);
    EXPECT_EQ(run.metrics.total_output_tokens, 12 * 5);
    for (const RequestRecord& r : run.records) {
      EXPECT_TRUE(r.success) << r.error;
      EXPECT_EQ(r.output_tokens, 5);
      EXPECT_EQ(r.itl_s.size(), 4u);  // one gap per streamed token after the first
      EXPECT_GT(r.ttft_s, 0);
      EXPECT_GE(r.latency_s, r.ttft_s);
    }
    EXPECT_GT(run.metrics.tpot.mean_ms, 0);
    EXPECT_GT(run.metrics.request_throughput, 0);
  }
  EXPECT_EQ(frontend_.finished.load(), 24);
  // Rate 200/s spreads the sends; inf sends them together.
  EXPECT_GT(result->runs[1].records.back().start_s, result->runs[0].records.back().start_s);
  if (GetParam() == Api::kHttp) {
    EXPECT_TRUE(result->runs[0].server.has_value()) << result->runs[0].server_error;
  } else {
    EXPECT_FALSE(result->runs[0].server.has_value());  // no /metrics over gRPC unless told
  }
}

// --structured-outputs reaches every request, over either API, as vLLM's StructuredOutputsParams.
TEST_P(ClientTest, StructuredOutputsReachEveryRequest) {
  BenchConfig config = Config();
  config.request_rates = {kInfiniteRate};
  config.structured_outputs = R"({"regex": "[a-z]+"})";
  absl::StatusOr<BenchResult> result = RunBench(config, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->runs[0].metrics.completed, 12);
  EXPECT_EQ(frontend_.last_request().sampling.structured_output,
            (model::StructuredOutput{model::StructuredOutput::Kind::kRegex, "[a-z]+"}));
}

TEST_P(ClientTest, RefusedRequestsCountAsFailed) {
  frontend_.generate_error = absl::ResourceExhaustedError("queue full");
  BenchConfig config = Config();
  config.request_rates = {kInfiniteRate};
  absl::StatusOr<BenchResult> result = RunBench(config, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  const RunResult& run = result->runs[0];
  EXPECT_EQ(run.metrics.completed, 0);
  EXPECT_EQ(run.metrics.failed, 12);
  EXPECT_THAT(run.records[0].error, HasSubstr("queue full"));
}

TEST_P(ClientTest, ErrorsMidStreamCountAsFailed) {
  frontend_.fail_after_first_token = absl::InternalError("replica lost");
  BenchConfig config = Config();
  config.request_rates = {kInfiniteRate};
  config.num_prompts = 3;
  absl::StatusOr<BenchResult> result = RunBench(config, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->runs[0].metrics.failed, 3);
  EXPECT_THAT(result->runs[0].records[0].error, HasSubstr("replica lost"));
}

TEST_P(ClientTest, UnknownModelIsNotFound) {
  BenchConfig config = Config();
  config.model = "no-such-model";
  EXPECT_EQ(RunBench(config, nullptr).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(ClientTest, AWorkloadPastTheContextIsRefusedBeforeSending) {
  BenchConfig config = Config();
  config.workload.input_len = 300;  // the fake model's context is 256
  const absl::Status status = RunBench(config, nullptr).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("context of 256"));
  EXPECT_EQ(frontend_.generated.load(), 0);
}

TEST_P(ClientTest, MaxConcurrencySizesThePool) {
  BenchConfig config = Config();
  config.max_concurrency = 2;
  config.request_rates = {kInfiniteRate};
  absl::StatusOr<BenchResult> result = RunBench(config, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->runs[0].client_threads, 2);
  EXPECT_EQ(result->runs[0].metrics.completed, 12);
}

TEST_P(ClientTest, ReplaysAMooncakeTraceAtItsOwnPace) {
  // One file per parameter: ctest runs the two in parallel.
  const std::string path = ::testing::TempDir() + "/bench_client_trace_" +
                           std::to_string(static_cast<int>(GetParam())) + ".jsonl";
  {
    std::ofstream trace(path);
    for (int i = 0; i < 4; ++i) {
      trace << "{\"timestamp\": " << 1000 + 60 * i
            << ", \"input_length\": 20, \"output_length\": 3, \"hash_ids\": [5, " << i << "]}\n";
    }
  }
  BenchConfig config = Config();
  config.workload = WorkloadSpec{};
  config.workload.dataset = Dataset::kMooncake;
  config.workload.dataset_path = path;
  config.workload.trace_block_size = 16;
  config.request_rates.clear();  // the trace's timing
  absl::StatusOr<BenchResult> result = RunBench(config, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->runs.size(), 1u);
  const RunResult& run = result->runs[0];
  EXPECT_FALSE(run.request_rate.has_value());
  ASSERT_EQ(run.records.size(), 4u);
  EXPECT_EQ(run.metrics.completed, 4);
  EXPECT_EQ(run.metrics.total_input_tokens, 80);
  EXPECT_EQ(run.metrics.total_output_tokens, 12);
  EXPECT_GE(run.records[3].start_s, 0.18);  // sent 180 ms after the first
}

INSTANTIATE_TEST_SUITE_P(Apis, ClientTest, ::testing::Values(Api::kGrpc, Api::kHttp),
                         [](const auto& info) {
                           return info.param == Api::kGrpc ? "KServeGrpc" : "OpenAiHttp";
                         });

TEST(ClientDownTest, UnreachableServerIsUnavailableNamingTheAddress) {
  for (Endpoint endpoint : {Endpoint::kKServeGrpc, Endpoint::kOpenAiHttp}) {
    BenchConfig config;
    config.endpoint = endpoint;
    config.port = 1;  // nothing listens there
    config.connect_timeout = absl::Seconds(2);
    const absl::Status status = RunBench(config, nullptr).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("127.0.0.1:1"));
  }
}

}  // namespace
}  // namespace tessera::bench
