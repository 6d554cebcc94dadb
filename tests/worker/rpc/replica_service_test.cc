// The Replica gRPC service end to end: a real Engine over the FakeExecutor
// (tests/worker/fake_executor.h), a ReplicaServer on a free port, and a gRPC stub. The executor
// passes each step through a Gate, so that a test can hold a request in flight.
#include "worker/rpc/replica_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tessera/v1/replica.grpc.pb.h"
#include "tests/await.h"
#include "tests/worker/fake_executor.h"
#include "worker/engine.h"
#include "worker/rpc/replica_service.h"

namespace tessera::worker::rpc {
namespace {

namespace v1 = ::tessera::v1;
using testing::FakeAlone;
using testing::FakeExecutor;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);
constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// Lets a given number of executor steps through; the others wait (at most kWait).
class Gate {
 public:
  void Allow(int64_t steps) {
    absl::MutexLock lock(&mu_);
    allowed_ = steps;
  }
  void Pass() {
    absl::MutexLock lock(&mu_);
    auto open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return allowed_ > 0; };
    mu_.AwaitWithTimeout(absl::Condition(&open), kWait);
    if (allowed_ != kUnlimited && allowed_ > 0) --allowed_;
  }

 private:
  absl::Mutex mu_;
  int64_t allowed_ ABSL_GUARDED_BY(mu_) = kUnlimited;
};

// Polls `done` until it holds or kWait passed.
bool Await(const std::function<bool()>& done) { return tessera::testing::Await(done, kWait); }

ExecutorLimits FakeLimits() {
  ExecutorLimits l;
  l.num_blocks = 64;
  l.block_size = 4;
  l.max_blocks_per_seq = 64;
  l.max_num_tokens = 256;
  l.max_num_seqs = 16;
  return l;
}

v1::GenerateRequest Req(int32_t max_tokens, const std::string& request_id = "") {
  v1::GenerateRequest r;
  r.set_request_id(request_id);
  for (int32_t t : {5, 6, 7}) r.add_prompt_token_ids(t);
  v1::SamplingParams* s = r.mutable_sampling();
  s->set_top_p(1.0f);
  s->set_repetition_penalty(1.0f);
  s->set_max_tokens(max_tokens);
  s->set_ignore_eos(true);
  return r;
}

struct Streamed {
  std::vector<v1::GenerateResponse> responses;
  grpc::Status status;
  std::vector<int32_t> tokens() const {
    std::vector<int32_t> out;
    for (const auto& r : responses)
      out.insert(out.end(), r.token_ids().begin(), r.token_ids().end());
    return out;
  }
};

Streamed ReadAll(grpc::ClientReader<v1::GenerateResponse>& reader) {
  Streamed s;
  v1::GenerateResponse response;
  while (reader.Read(&response)) s.responses.push_back(response);
  s.status = reader.Finish();
  return s;
}

class ReplicaServiceTest : public ::testing::Test {
 protected:
  ReplicaServiceTest() : executor_(FakeLimits(), /*vocab_size=*/100) {
    executor_.on_step = [this] { gate_.Pass(); };
    config_.vocab_size = 100;
    config_.eos_token_ids = {2};
    options_.scheduler.max_model_len = 200;
    options_.scheduler.max_num_seqs = 16;
    options_.scheduler.max_num_batched_tokens = 64;
    options_.idle_wait = absl::Milliseconds(5);
  }
  ~ReplicaServiceTest() override {
    gate_.Allow(kUnlimited);
    if (server_ != nullptr) server_->Shutdown(absl::Now() + absl::Seconds(5));
    if (engine_ != nullptr) {
      EXPECT_TRUE(engine_->Shutdown(absl::ZeroDuration()).ok());
    }
  }

  void Start() {
    auto engine = Engine::Create(executor_, config_, options_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    ReplicaServerOptions server_options;
    server_options.service.poll_interval = absl::Milliseconds(10);
    auto server = ReplicaServer::Create(*engine_, server_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
    stub_ = v1::Replica::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                                     grpc::InsecureChannelCredentials()));
  }

  Streamed Generate(const v1::GenerateRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
    auto reader = stub_->Generate(&context, request);
    return ReadAll(*reader);
  }

  Gate gate_;  // declared first: outlives the executor's callers
  FakeExecutor executor_;
  model::ModelConfig config_;
  EngineOptions options_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<ReplicaServer> server_;
  std::unique_ptr<v1::Replica::Stub> stub_;
};

TEST_F(ReplicaServiceTest, StreamsTokensInOrderWithTheFinishReason) {
  Start();
  v1::GenerateRequest request = Req(8);
  request.mutable_sampling()->set_logprobs(2);
  const Streamed out = Generate(request);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.tokens(), FakeAlone({5, 6, 7}, 8, 100));
  ASSERT_EQ(out.responses.size(), 8u);
  for (size_t i = 0; i < out.responses.size(); ++i) {
    const v1::GenerateResponse& r = out.responses[i];
    ASSERT_EQ(r.token_ids_size(), 1);
    ASSERT_EQ(r.logprobs_size(), 1);
    EXPECT_EQ(r.logprobs(0), FakeExecutor::LogprobOf(r.token_ids(0)));
    ASSERT_EQ(r.top_logprobs_size(), 1);
    ASSERT_EQ(r.top_logprobs(0).entries_size(), 2);
    EXPECT_EQ(r.top_logprobs(0).entries(0).token_id(), r.token_ids(0));
    EXPECT_EQ(r.finished(), i + 1 == out.responses.size());
  }
  const v1::GenerateResponse& last = out.responses.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.status_code(), 0);
  EXPECT_TRUE(last.status_message().empty());
}

TEST_F(ReplicaServiceTest, ReportsCachedPromptTokensOnTheFirstMessage) {
  Start();
  v1::GenerateRequest request = Req(2);
  request.clear_prompt_token_ids();
  for (int32_t t = 10; t < 22; ++t) request.add_prompt_token_ids(t);  // three full blocks
  const Streamed cold = Generate(request);
  ASSERT_TRUE(cold.status.ok());
  EXPECT_EQ(cold.responses.front().num_cached_tokens(), 0);
  const Streamed warm = Generate(request);
  ASSERT_TRUE(warm.status.ok());
  EXPECT_GT(warm.responses.front().num_cached_tokens(), 0);
  EXPECT_EQ(warm.responses.back().num_cached_tokens(), 0);
  EXPECT_EQ(warm.tokens(), cold.tokens());
}

TEST_F(ReplicaServiceTest, BadRequestsAreInvalidArgumentWithTheEnginesMessage) {
  Start();
  v1::GenerateRequest zero_tokens = Req(0);
  const absl::Status direct =
      engine_->Submit(*RequestFromProto(zero_tokens, absl::InfiniteDuration())).status();
  ASSERT_EQ(direct.code(), absl::StatusCode::kInvalidArgument);
  const Streamed out = Generate(zero_tokens);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.status.error_message(), direct.message());
  EXPECT_TRUE(out.responses.empty());

  v1::GenerateRequest empty = Req(4);
  empty.clear_prompt_token_ids();
  EXPECT_EQ(Generate(empty).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest bad_token = Req(4);
  bad_token.add_prompt_token_ids(100);  // vocab_size is 100
  EXPECT_EQ(Generate(bad_token).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // logit_bias travels as two parallel lists, which must pair up.
  v1::GenerateRequest biased = Req(4);
  biased.mutable_sampling()->add_logit_bias_token_ids(7);
  biased.mutable_sampling()->add_logit_bias_values(-3.5f);
  absl::StatusOr<Request> parsed = RequestFromProto(biased, absl::InfiniteDuration());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->sampling.logit_bias, (std::vector<model::LogitBias>{{7, -3.5f}}));
  biased.mutable_sampling()->add_logit_bias_token_ids(8);
  EXPECT_THAT(std::string(RequestFromProto(biased, absl::InfiniteDuration()).status().message()),
              HasSubstr("2 logit_bias tokens with 1 values"));
  EXPECT_EQ(Generate(biased).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A structured output arrives as kind and spec; an unknown kind is refused.
  v1::GenerateRequest shaped = Req(4);
  shaped.mutable_sampling()->mutable_structured_output()->set_kind(
      v1::StructuredOutput::KIND_CHOICE);
  shaped.mutable_sampling()->mutable_structured_output()->set_spec(R"(["a"])");
  parsed = RequestFromProto(shaped, absl::InfiniteDuration());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->sampling.structured_output,
            (model::StructuredOutput{model::StructuredOutput::Kind::kChoice, R"(["a"])"}));
  // A reasoning model's grammar waits for its end-of-thinking token; a negative id is refused.
  shaped.mutable_sampling()->mutable_structured_output()->set_start_after_token(9);
  parsed = RequestFromProto(shaped, absl::InfiniteDuration());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->sampling.structured_output.start_after_token, 9);
  shaped.mutable_sampling()->mutable_structured_output()->set_start_after_token(-2);
  EXPECT_THAT(std::string(RequestFromProto(shaped, absl::InfiniteDuration()).status().message()),
              HasSubstr("start_after_token must be >= 0"));
  shaped.mutable_sampling()->mutable_structured_output()->clear_start_after_token();
  shaped.mutable_sampling()->mutable_structured_output()->set_kind(
      static_cast<v1::StructuredOutput::Kind>(9));
  EXPECT_THAT(std::string(RequestFromProto(shaped, absl::InfiniteDuration()).status().message()),
              HasSubstr("unknown structured_output kind 9"));
}

TEST_F(ReplicaServiceTest, TooManyRequestsAreResourceExhausted) {
  options_.max_requests_in_flight = 1;
  Start();
  gate_.Allow(0);
  grpc::ClientContext context;
  auto first = stub_->Generate(&context, Req(4));
  ASSERT_TRUE(Await([&] { return server_->service().calls_in_flight() == 1; }));
  const Streamed second = Generate(Req(4));
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(second.status.error_message(), HasSubstr("max_requests_in_flight"));
  gate_.Allow(kUnlimited);
  const Streamed done = ReadAll(*first);
  ASSERT_TRUE(done.status.ok());
  EXPECT_EQ(done.tokens(), FakeAlone({5, 6, 7}, 4, 100));
}

TEST_F(ReplicaServiceTest, CancellingTheClientContextCancelsTheRequestInTheEngine) {
  Start();
  const EngineCounters initial = engine_->counters();
  ASSERT_EQ(initial.kv_blocks_in_use, 0);
  gate_.Allow(2);  // prefill and one decode, then the engine waits inside its third step
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, Req(150));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  context.TryCancel();
  // The handler cancels the request in the engine before it returns.
  ASSERT_TRUE(Await([&] { return server_->service().calls_in_flight() == 0; }));
  gate_.Allow(kUnlimited);
  ASSERT_TRUE(Await([&] {
    const EngineCounters c = engine_->counters();
    return c.requests_in_flight == 0 && c.kv_blocks_in_use == 0;
  }));
  const EngineCounters after = engine_->counters();
  EXPECT_EQ(after.requests_aborted, 1);
  EXPECT_EQ(after.requests_finished, 0);
  EXPECT_EQ(after.kv_blocks_free + after.kv_blocks_cached, initial.kv_blocks_free);
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ReplicaServiceTest, AbortCancelsByTheCoordinatorsRequestId) {
  Start();
  gate_.Allow(1);
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, Req(150, "cmpl-7"));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));

  v1::AbortRequest abort;
  abort.set_request_id("cmpl-8");
  v1::AbortResponse found;
  {
    grpc::ClientContext c;
    ASSERT_TRUE(stub_->Abort(&c, abort, &found).ok());
  }
  EXPECT_FALSE(found.found());
  abort.set_request_id("cmpl-7");
  {
    grpc::ClientContext c;
    ASSERT_TRUE(stub_->Abort(&c, abort, &found).ok());
  }
  EXPECT_TRUE(found.found());
  gate_.Allow(kUnlimited);
  const Streamed rest = ReadAll(*reader);
  ASSERT_TRUE(rest.status.ok()) << rest.status.error_message();
  ASSERT_FALSE(rest.responses.empty());
  const v1::GenerateResponse& last = rest.responses.back();
  EXPECT_TRUE(last.finished());
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_ABORT);
  EXPECT_EQ(last.status_code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_LT(rest.tokens().size(), 149u);
}

TEST_F(ReplicaServiceTest, DrainLetsRequestsFinishThenRefusesNewOnes) {
  Start();
  gate_.Allow(1);
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, Req(6));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  v1::DrainResponse drained;
  grpc::Status drain_status;
  std::thread drain([&] {
    v1::DrainRequest request;
    request.set_timeout_ms(absl::ToInt64Milliseconds(kWait));
    grpc::ClientContext c;
    drain_status = stub_->Drain(&c, request, &drained);
  });
  ASSERT_TRUE(Await([&] { return server_->service().draining(); }));
  gate_.Allow(kUnlimited);
  const Streamed rest = ReadAll(*reader);
  drain.join();
  ASSERT_TRUE(drain_status.ok());
  EXPECT_EQ(drained.aborted(), 0);
  ASSERT_TRUE(rest.status.ok());
  EXPECT_EQ(rest.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(rest.tokens().size(), 5u);

  const Streamed refused = Generate(Req(4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(refused.status.error_message(), "replica is draining");
}

TEST_F(ReplicaServiceTest, DrainCancelsWhatDidNotFinishInTime) {
  Start();
  gate_.Allow(1);
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, Req(150));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  v1::DrainRequest request;
  request.set_timeout_ms(20);
  v1::DrainResponse drained;
  {
    grpc::ClientContext c;
    ASSERT_TRUE(stub_->Drain(&c, request, &drained).ok());
  }
  EXPECT_EQ(drained.aborted(), 1);
  gate_.Allow(kUnlimited);
  const Streamed rest = ReadAll(*reader);
  ASSERT_TRUE(rest.status.ok());
  const v1::GenerateResponse& last = rest.responses.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_ABORT);
  EXPECT_EQ(last.status_code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_THAT(last.status_message(), HasSubstr("draining"));
}

TEST_F(ReplicaServiceTest, GetStatsReportsTheEnginesCounters) {
  Start();
  ASSERT_TRUE(Generate(Req(8)).status.ok());
  ASSERT_TRUE(Await([&] { return engine_->counters().requests_in_flight == 0; }));
  v1::ReplicaStats stats;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->GetStats(&context, v1::StatsRequest(), &stats).ok());
  EXPECT_EQ(stats.kv_blocks_total(), 64);
  EXPECT_EQ(stats.kv_blocks_free(), 64);  // free plus evictable cached blocks
  EXPECT_EQ(stats.num_requests_running(), 0);
  EXPECT_EQ(stats.num_requests_waiting(), 0);
  EXPECT_EQ(stats.requests_in_flight(), 0);
  EXPECT_GE(stats.prompt_tokens_total(), 3);
  EXPECT_GE(stats.generation_tokens_total(), 7);
  EXPECT_GE(stats.steps_total(), 8);
  EXPECT_GE(stats.prefix_cache_queries_total(), stats.prefix_cache_hits_total());
}

TEST_F(ReplicaServiceTest, KvReservationNeedsAKvTransport) {
  Start();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
  v1::ReserveKvRequest request;
  *request.mutable_request() = Req(8);
  v1::ReserveKvResponse response;
  const grpc::Status status = stub_->ReserveKv(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("no KV transport"));
}

TEST_F(ReplicaServiceTest, MalformedKvMessagesAreInvalidArgument) {
  Start();
  v1::GenerateRequest bad_destination = Req(8);
  bad_destination.set_kv_destination("\xff\xff not a message");
  Streamed out = Generate(bad_destination);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), ::testing::HasSubstr("kv_destination"));
  v1::GenerateRequest no_ranks = Req(8);
  v1::KvDestination empty;
  empty.set_token(3);
  no_ranks.set_kv_destination(empty.SerializeAsString());
  out = Generate(no_ranks);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), ::testing::HasSubstr("0 ranks"));
  v1::GenerateRequest bad_import = Req(8);
  bad_import.mutable_kv_import()->set_token(5);
  bad_import.mutable_kv_import()->set_checksums("\xff\xff");
  out = Generate(bad_import);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), ::testing::HasSubstr("checksums"));
}

}  // namespace
}  // namespace tessera::worker::rpc
