// The coordinator's core over in-process replicas (real engines on the fake executor): routing,
// admission, validation, stop strings, leases, cancellation, drain, metrics.
#include "coordinator/coordinator.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/net.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer.h"
#include "tests/await.h"
#include "tests/coordinator/engine_replica.h"

namespace tessera::coordinator {
namespace {

using testing::EngineReplica;
using testing::EngineReplicaConnector;
using ::testing::HasSubstr;

constexpr int32_t kVocab = 512;

std::unique_ptr<model::Tokenizer> MakeTokenizer() {
  auto files = model::MakeByteLevelTokenizerFiles(kVocab);
  EXPECT_TRUE(files.ok());
  auto tokenizer = model::Tokenizer::FromJson(files->tokenizer_json, "tokenizer.json");
  EXPECT_TRUE(tokenizer.ok());
  return std::move(*tokenizer);
}

// The tokens the fake executor generates greedily after `prompt`.
std::vector<int32_t> ExpectedGreedy(std::vector<int32_t> history, int n, int32_t vocab) {
  std::vector<int32_t> out;
  worker::SamplingRow row;
  for (int i = 0; i < n; ++i) {
    const int32_t t = worker::testing::FakeExecutor::NextToken(history, vocab, row);
    out.push_back(t);
    history.push_back(t);
  }
  return out;
}

struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  GenerateEvent last;
  int events = 0;
};

Collected Collect(GenerateStream& stream) {
  Collected c;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::Now() < give_up) {
    absl::StatusOr<GenerateEvent> e = stream.Next(absl::Seconds(1));
    if (absl::IsDeadlineExceeded(e.status())) continue;
    EXPECT_TRUE(e.ok()) << e.status();
    if (!e.ok()) break;
    c.events++;
    c.tokens.insert(c.tokens.end(), e->token_ids.begin(), e->token_ids.end());
    c.text += e->text;
    if (e->finished) {
      c.last = *e;
      break;
    }
  }
  EXPECT_TRUE(c.last.finished) << "the stream did not finish";
  return c;
}

using tessera::testing::Await;

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = MakeTokenizer().release();
    eos_ = *tokenizer_->TokenToId("<|eot_id|>");
    // The fake executor samples below the first id without a token.
    sample_below_ = 0;
    while (tokenizer_->IdToToken(sample_below_).has_value()) ++sample_below_;
  }
  void TearDown() override {
    coordinator_.reset();
    replicas_.clear();
    delete tokenizer_;
  }

  void Start(int num_replicas, CoordinatorOptions options = {}, int max_num_seqs = 8) {
    options.model.name = "m";
    options.model.root = "/models/m";
    options.model.max_model_len = 200;
    options.model.vocab_size = kVocab;
    auto coordinator =
        Coordinator::Create(options, MakeTokenizer(), std::nullopt, connector_, clock_);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = std::move(*coordinator);
    for (int i = 0; i < num_replicas; ++i) AddReplica(absl::StrCat("r", i), max_num_seqs);
  }

  EngineReplica& AddReplica(const std::string& name, int max_num_seqs = 8) {
    return Register(
        std::make_unique<EngineReplica>(name, kVocab, eos_, max_num_seqs, sample_below_));
  }

  // A prefill or decode replica (real KV ports on one in-process fabric).
  EngineReplica& AddRoleReplica(const std::string& name, const std::string& role) {
    return Register(
        std::make_unique<EngineReplica>(name, kVocab, eos_, role, fabric_, 8, sample_below_));
  }

  EngineReplica& Register(std::unique_ptr<EngineReplica> replica) {
    connector_.Add(replica->info("m").address, replica.get());
    auto entry = coordinator_->RegisterReplica(replica->info("m"));
    EXPECT_TRUE(entry.ok()) << entry.status();
    ids_.push_back((*entry)->id());
    replicas_.push_back(std::move(replica));
    return *replicas_.back();
  }

  // Every KV block is back on every replica: nothing in use, reserved or being sent.
  void ExpectAllBlocksBack() {
    for (const auto& r : replicas_) {
      EXPECT_TRUE(Await([&] {
        const worker::EngineCounters c = r->engine().counters();
        return c.kv_blocks_in_use == 0 && c.kv_blocks_reserved == 0 && c.kv_blocks_exporting == 0;
      })) << r->info("m").name
          << " holds blocks";
    }
  }

  GenerateRequest Text(const std::string& text, int max_tokens) {
    GenerateRequest r;
    r.prompt_text = text;
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    return r;
  }

  model::Tokenizer* tokenizer_ = nullptr;
  int32_t eos_ = 0;
  int32_t sample_below_ = 0;
  FakeClock clock_;
  EngineReplicaConnector connector_;
  std::shared_ptr<kvtransfer::InProcessFabric> fabric_ = kvtransfer::InProcessFabric::Create();
  std::vector<std::unique_ptr<EngineReplica>> replicas_;
  std::vector<std::string> ids_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(CoordinatorTest, StreamsTheReplicasTokensWithTheirText) {
  Start(1);
  auto stream = coordinator_->Generate(Text("hello world", 12));
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::vector<int32_t> prompt = *tokenizer_->Encode("hello world", true);
  EXPECT_EQ((*stream)->prompt_token_ids(), prompt);
  Collected c = Collect(**stream);
  EXPECT_EQ(c.tokens, ExpectedGreedy(prompt, 12, sample_below_));
  EXPECT_EQ(c.text, *tokenizer_->Decode(c.tokens, /*skip_special_tokens=*/true));
  EXPECT_TRUE(c.last.status.ok()) << c.last.status;
  EXPECT_EQ(c.last.finish_reason, model::FinishReason::kLength);
  EXPECT_EQ(c.last.completion_tokens, 12);
  EXPECT_EQ(c.last.prompt_tokens, static_cast<int32_t>(prompt.size()));
  EXPECT_EQ(coordinator_->in_flight(), 0);
  EXPECT_EQ((*stream)->Next(absl::Seconds(1)).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(CoordinatorTest, TokenIdPromptsSkipTheTokenizer) {
  Start(1);
  GenerateRequest r;
  r.prompt_token_ids = std::vector<int32_t>{5, 6, 7, 8, 9};
  r.sampling.max_tokens = 5;
  r.sampling.ignore_eos = true;
  auto stream = coordinator_->Generate(r);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ(Collect(**stream).tokens, ExpectedGreedy({5, 6, 7, 8, 9}, 5, sample_below_));
}

TEST_F(CoordinatorTest, RejectsBadInputNamingTheField) {
  Start(1);
  struct Case {
    std::string name;
    std::function<void(GenerateRequest&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"max_tokens 0", [](GenerateRequest& r) { r.sampling.max_tokens = 0; }, "max_tokens"},
      {"top_p 1.5", [](GenerateRequest& r) { r.sampling.top_p = 1.5f; }, "top_p"},
      {"top_p 0", [](GenerateRequest& r) { r.sampling.top_p = 0.0f; }, "top_p"},
      {"negative temperature", [](GenerateRequest& r) { r.sampling.temperature = -1.0f; },
       "temperature"},
      {"beyond the context", [](GenerateRequest& r) { r.sampling.max_tokens = 500; },
       "context of 200"},
      {"id outside the vocabulary",
       [](GenerateRequest& r) {
         r.prompt_token_ids = std::vector<int32_t>{1, 9999};
       },
       "outside the vocabulary"},
      {"empty prompt", [](GenerateRequest& r) { r.prompt_token_ids = std::vector<int32_t>{}; },
       "prompt"},
      {"invalid UTF-8", [](GenerateRequest& r) { r.prompt_text = "ab\xff"; }, "prompt"},
      {"stop token outside the vocabulary",
       [](GenerateRequest& r) { r.sampling.stop_token_ids = {kVocab}; }, "stop token"},
      {"empty stop string", [](GenerateRequest& r) { r.sampling.stop = {""}; }, "stop"},
  };
  for (const Case& c : cases) {
    GenerateRequest r = Text("hi", 4);
    c.edit(r);
    auto stream = coordinator_->Generate(r);
    ASSERT_FALSE(stream.ok()) << c.name;
    EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(stream.status().message()), HasSubstr(c.message)) << c.name;
  }
  EXPECT_EQ(replicas_[0]->generate_calls(), 0);
  EXPECT_THAT(coordinator_->RenderMetrics(),
              HasSubstr("tessera_requests_rejected_total{model_name=\"m\",reason=\"invalid\"} 10"));
}

TEST_F(CoordinatorTest, WithoutReplicasRequestsAreUnavailable) {
  Start(0);
  EXPECT_FALSE(coordinator_->Ready());
  auto stream = coordinator_->Generate(Text("hi", 4));
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(stream.status().message()), HasSubstr("no replica"));
}

TEST_F(CoordinatorTest, AdmissionShedsLoadBeyondCapacity) {
  CoordinatorOptions options;
  options.max_queued_requests = 1;
  Start(1, options, /*max_num_seqs=*/2);
  std::vector<std::unique_ptr<GenerateStream>> held;
  for (int i = 0; i < 3; ++i) {  // 2 running + 1 queued
    auto stream = coordinator_->Generate(Text("hi", 4));
    ASSERT_TRUE(stream.ok()) << stream.status();
    held.push_back(std::move(*stream));
  }
  auto refused = coordinator_->Generate(Text("hi", 4));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("overloaded"));
  Collect(*held[0]);
  EXPECT_TRUE(coordinator_->Generate(Text("hi", 4)).ok());  // room again
}

TEST_F(CoordinatorTest, StopStringsEndTheRequestAndTrimTheText) {
  Start(1);
  // A prompt whose output decodes to enough text to pick a stop string from its middle.
  std::string prompt;
  std::string full;
  std::vector<int32_t> full_tokens;
  for (int attempt = 0; attempt < 50 && full.size() < 8; ++attempt) {
    prompt = absl::StrCat("prompt number ", attempt);
    auto stream = coordinator_->Generate(Text(prompt, 24));
    ASSERT_TRUE(stream.ok());
    Collected c = Collect(**stream);
    full = c.text;
    full_tokens = c.tokens;
  }
  ASSERT_GE(full.size(), 8u) << "no prompt gave enough text";
  // A stop string that starts at a character boundary in the middle.
  size_t at = full.size() / 2;
  while (at > 0 && (static_cast<unsigned char>(full[at]) & 0xC0) == 0x80) --at;
  size_t end = at + 1;
  while (end < full.size() && (static_cast<unsigned char>(full[end]) & 0xC0) == 0x80) ++end;
  const std::string stop = full.substr(at, end - at);
  const size_t first = full.find(stop);

  GenerateRequest r = Text(prompt, 24);
  r.sampling.stop = {stop};
  auto stream = coordinator_->Generate(r);
  ASSERT_TRUE(stream.ok());
  Collected c = Collect(**stream);
  EXPECT_EQ(c.text, full.substr(0, first));
  EXPECT_EQ(c.last.finish_reason, model::FinishReason::kStop);
  EXPECT_TRUE(c.last.status.ok());
  EXPECT_LT(c.tokens.size(), full_tokens.size());

  r.include_stop_str_in_output = true;
  auto with_stop = coordinator_->Generate(r);
  ASSERT_TRUE(with_stop.ok());
  EXPECT_EQ(Collect(**with_stop).text, full.substr(0, first + stop.size()));
}

TEST_F(CoordinatorTest, ALapsedLeaseTakesTheReplicaOutAndFailsItsRequests) {
  Start(2);
  GenerateRequest r = Text("hi", 50);
  auto stream = coordinator_->Generate(r);
  ASSERT_TRUE(stream.ok());
  // Only r1 keeps heartbeating.
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(coordinator_->Heartbeat(ids_[1], replicas_[1]->load()));
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(Await([&] { return coordinator_->registry().Live().size() == 1; }));
  EXPECT_EQ(coordinator_->registry().Live()[0]->info().name, "r1");
  EXPECT_FALSE(coordinator_->Heartbeat(ids_[0], replicas_[0]->load()));  // must re-register
  // New requests go to r1 only.
  const int before = replicas_[1]->generate_calls();
  for (int i = 0; i < 4; ++i) {
    auto s = coordinator_->Generate(Text("x", 2));
    ASSERT_TRUE(s.ok());
    Collect(**s);
  }
  EXPECT_EQ(replicas_[1]->generate_calls(), before + 4);
  // Counted by the lease thread right after it took the replica out.
  EXPECT_TRUE(Await([&] {
    return absl::StrContains(coordinator_->RenderMetrics(),
                             "tessera_replica_lease_expirations_total 1");
  }));
  // The request routed to r0 (if it was) fails with a retryable error.
  if (replicas_[0]->generate_calls() == 1) {
    Collected c = Collect(**stream);
    EXPECT_EQ(c.last.status.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(c.last.status.message()), HasSubstr("retry"));
  }
}

TEST_F(CoordinatorTest, ARequestOnALostReplicaEndsUnavailable) {
  Start(1);
  auto stream = coordinator_->Generate(Text("hi", 100));
  ASSERT_TRUE(stream.ok());
  coordinator_->DeregisterReplica(ids_[0]);
  Collected c = Collect(**stream);
  EXPECT_EQ(c.last.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(c.last.status.message()), HasSubstr("replica r0 was lost"));
  EXPECT_TRUE(Await([&] { return replicas_[0]->engine().counters().requests_in_flight == 0; }));
}

TEST_F(CoordinatorTest, RoutingFollowsCachedPrefixesAndSpreadsLoad) {
  Start(2);
  const std::string long_prompt(64, 'a');
  auto first = coordinator_->Generate(Text(long_prompt + " one", 2));
  ASSERT_TRUE(first.ok());
  Collect(**first);
  const int served_by = replicas_[0]->generate_calls() == 1 ? 0 : 1;
  for (int i = 0; i < 4; ++i) {
    auto again = coordinator_->Generate(Text(long_prompt + " two", 2));
    ASSERT_TRUE(again.ok());
    Collect(**again);
  }
  EXPECT_EQ(replicas_[served_by]->generate_calls(), 5);
  EXPECT_EQ(replicas_[1 - served_by]->generate_calls(), 0);

  // Distinct prompts held in flight spread over both replicas.
  std::vector<std::unique_ptr<GenerateStream>> held;
  for (int i = 0; i < 6; ++i) {
    auto s = coordinator_->Generate(Text(absl::StrCat("distinct ", i), 2));
    ASSERT_TRUE(s.ok());
    held.push_back(std::move(*s));
  }
  EXPECT_EQ(replicas_[0]->generate_calls() + replicas_[1]->generate_calls(), 11);
  EXPECT_GE(replicas_[1 - served_by]->generate_calls(), 2);
}

TEST_F(CoordinatorTest, ARefusingReplicaIsRetriedElsewhere) {
  Start(2);
  replicas_[0]->set_refuse(absl::UnavailableError("replica is draining"));
  for (int i = 0; i < 4; ++i) {
    auto s = coordinator_->Generate(Text(absl::StrCat("p", i), 2));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(Collect(**s).last.status.ok());
  }
  EXPECT_EQ(replicas_[1]->generate_calls(), 4);
  replicas_[1]->set_refuse(absl::UnavailableError("replica is draining"));
  auto s = coordinator_->Generate(Text("p", 2));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(coordinator_->in_flight(), 0);
}

TEST_F(CoordinatorTest, AStreamDroppedEarlyCancelsItsRequestOnTheReplica) {
  Start(1);
  // 150 steps of 5 ms: the request is still running when the stream is dropped.
  replicas_[0]->executor().on_step = [] { absl::SleepFor(absl::Milliseconds(5)); };
  {
    auto stream = coordinator_->Generate(Text("hi", 150));
    ASSERT_TRUE(stream.ok());
    ASSERT_TRUE((*stream)->Next(absl::Seconds(10)).ok());
  }
  EXPECT_EQ(coordinator_->in_flight(), 0);
  EXPECT_TRUE(Await([&] {
    const worker::EngineCounters c = replicas_[0]->engine().counters();
    return c.requests_in_flight == 0 && c.kv_blocks_in_use == 0;
  }));
  EXPECT_EQ(replicas_[0]->engine().counters().requests_aborted, 1);
}

TEST_F(CoordinatorTest, CancelEndsTheStreamWithCancelled) {
  Start(1);
  auto stream = coordinator_->Generate(Text("hi", 150));
  ASSERT_TRUE(stream.ok());
  (*stream)->Cancel();
  Collected c = Collect(**stream);
  EXPECT_EQ(c.last.status.code(), absl::StatusCode::kCancelled);
}

TEST_F(CoordinatorTest, DrainStopsAdmissionAndEndsWhatIsLeft) {
  Start(1);
  auto stream = coordinator_->Generate(Text("hi", 150));
  ASSERT_TRUE(stream.ok());
  absl::Status drained = coordinator_->Drain(absl::Milliseconds(50));
  EXPECT_EQ(drained.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(coordinator_->Ready());
  auto refused = coordinator_->Generate(Text("hi", 4));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("draining"));
  Collected c = Collect(**stream);
  EXPECT_EQ(c.last.status.code(), absl::StatusCode::kUnavailable);
}

TEST_F(CoordinatorTest, RegistrationChecksTheReplica) {
  Start(0);
  EngineReplica replica("x", kVocab, eos_);
  connector_.Add(replica.info("m").address, &replica);
  ReplicaInfo other_model = replica.info("other");
  EXPECT_THAT(std::string(coordinator_->RegisterReplica(other_model).status().message()),
              HasSubstr("serves model \"other\""));
  ReplicaInfo prefill = replica.info("m");
  prefill.role = "prefill";
  ASSERT_TRUE(coordinator_->RegisterReplica(prefill).ok());
  ReplicaInfo decode = replica.info("m");
  decode.name = "d";
  decode.role = "decode";
  decode.block_size = prefill.block_size * 2;
  EXPECT_THAT(std::string(coordinator_->RegisterReplica(decode).status().message()),
              HasSubstr("must use the same --block-size"));
  // The KV's element type, as the workers resolved it, must agree too (when both say it).
  prefill.kv_cache_dtype = "bf16";
  ASSERT_TRUE(coordinator_->RegisterReplica(prefill).ok());
  decode.block_size = prefill.block_size;
  decode.kv_cache_dtype = "f32";
  EXPECT_THAT(std::string(coordinator_->RegisterReplica(decode).status().message()),
              HasSubstr("keeps its KV cache in f32 but prefill replica x keeps bf16"));
  decode.kv_cache_dtype = "bf16";
  auto matched = coordinator_->RegisterReplica(decode);
  ASSERT_TRUE(matched.ok()) << matched.status();
  coordinator_->DeregisterReplica((*matched)->id());
  ReplicaInfo bad_role = replica.info("m");
  bad_role.role = "both";
  EXPECT_EQ(coordinator_->RegisterReplica(bad_role).status().code(),
            absl::StatusCode::kInvalidArgument);
  ReplicaInfo unreachable = replica.info("m");
  unreachable.address = "inproc://nowhere";
  EXPECT_EQ(coordinator_->RegisterReplica(unreachable).status().code(),
            absl::StatusCode::kUnavailable);
  // A replica on another machine that gives a loopback address would have the coordinator dial
  // itself: refused, naming both (192.0.2.0/24 is for documentation: no machine has it). From
  // this machine, over loopback or one of its own addresses, loopback is what it may give.
  ReplicaInfo remote_loopback = replica.info("m");
  remote_loopback.address = "127.0.0.1:5000";
  remote_loopback.registered_from = "192.0.2.7";
  const absl::Status refused = coordinator_->RegisterReplica(remote_loopback).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("registered from 192.0.2.7 but gives the loopback address 127.0.0.1:5000"));
  ReplicaInfo remote = replica.info("m");
  remote.registered_from = "192.0.2.7";
  EXPECT_TRUE(coordinator_->RegisterReplica(remote).ok());
  for (std::string from : {std::string("127.0.0.1"), std::string("::1")}) {
    ReplicaInfo local = replica.info("m");
    local.registered_from = from;
    EXPECT_TRUE(coordinator_->RegisterReplica(local).ok()) << from;
  }
  absl::StatusOr<std::string> own = LocalAddressToward("192.0.2.7");  // a route, nothing sent
  if (own.ok()) {
    ReplicaInfo same_machine = replica.info("m");
    same_machine.registered_from = *own;
    same_machine.address = "127.0.0.1:5000";
    const absl::Status s = coordinator_->RegisterReplica(same_machine).status();
    EXPECT_NE(s.code(), absl::StatusCode::kInvalidArgument) << *own << ": " << s;
  }
  // Registering twice under one name replaces the first entry.
  auto a = coordinator_->RegisterReplica(replica.info("m"));
  auto b = coordinator_->RegisterReplica(replica.info("m"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE((*a)->lost());
  EXPECT_EQ(coordinator_->registry().Live().size(), 1u);
}

TEST_F(CoordinatorTest, MetricsUseVllmNames) {
  Start(1);
  auto stream = coordinator_->Generate(Text("hello", 6));
  ASSERT_TRUE(stream.ok());
  Collect(**stream);
  // The engine publishes its counters after the step that delivered the last token.
  ASSERT_TRUE(Await([&] { return replicas_[0]->load().num_requests_running == 0; }));
  ASSERT_TRUE(coordinator_->Heartbeat(ids_[0], replicas_[0]->load()));
  const std::string text = coordinator_->RenderMetrics();
  EXPECT_THAT(text, HasSubstr("vllm:time_to_first_token_seconds_count{model_name=\"m\"} 1"));
  EXPECT_THAT(text, HasSubstr("vllm:e2e_request_latency_seconds_count{model_name=\"m\"} 1"));
  EXPECT_THAT(text, HasSubstr("vllm:inter_token_latency_seconds_count{model_name=\"m\"} 5"));
  EXPECT_THAT(text, HasSubstr("vllm:generation_tokens_total{model_name=\"m\"} 6"));
  EXPECT_THAT(
      text, HasSubstr("vllm:request_success_total{model_name=\"m\",finished_reason=\"length\"} 1"));
  EXPECT_THAT(text, HasSubstr("vllm:num_requests_running{model_name=\"m\",engine=\"r0\"} 0"));
  EXPECT_THAT(text, HasSubstr("vllm:kv_cache_usage_perc{model_name=\"m\",engine=\"r0\"}"));
  EXPECT_THAT(text, HasSubstr("tessera_replicas{role=\"mixed\"} 1"));
  // Where the time went, from the replica's timings.
  for (const char* phase : {"queue", "prefill", "decode", "inference"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("vllm:request_", phase,
                                             "_time_seconds_count{model_name=\"m\"} 1")));
  }
  EXPECT_THAT(text, HasSubstr("tessera_kv_transfer_seconds_count{model_name=\"m\"} 0"));
  // A replica's cumulative counters become the coordinator's increments.
  ReplicaLoad load = replicas_[0]->load();
  for (int64_t drains : {3, 5}) {
    load.pipeline_drains_total = drains;
    ASSERT_TRUE(coordinator_->Heartbeat(ids_[0], load));
  }
  EXPECT_THAT(coordinator_->RenderMetrics(),
              HasSubstr("tessera_pipeline_drains_total{replica=\"r0\"} 5"));
}

GenerateRequest Ids(std::vector<int32_t> prompt, int max_tokens) {
  GenerateRequest r;
  r.prompt_token_ids = std::move(prompt);
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

TEST_F(CoordinatorTest, DisaggregatedRequestsMatchMixedOnes) {
  Start(0);
  AddRoleReplica("p0", "prefill");
  AddRoleReplica("d0", "decode");
  std::vector<std::unique_ptr<GenerateStream>> streams;
  for (int i = 0; i < 8; ++i) {
    // Long enough prompts that whole blocks (of 4) travel.
    auto s = coordinator_->Generate(Ids({5, 6, 7, 8, 9, 10, 11, 12, 13, 20 + i}, 12));
    ASSERT_TRUE(s.ok()) << s.status();
    streams.push_back(std::move(*s));
  }
  for (int i = 0; i < 8; ++i) {
    Collected c = Collect(*streams[i]);
    EXPECT_TRUE(c.last.status.ok()) << c.last.status;
    EXPECT_EQ(c.tokens, ExpectedGreedy({5, 6, 7, 8, 9, 10, 11, 12, 13, 20 + i}, 12, sample_below_));
    EXPECT_EQ(c.last.finish_reason, model::FinishReason::kLength);
    EXPECT_EQ(c.last.completion_tokens, 12);
  }
  streams.clear();
  EXPECT_EQ(replicas_[1]->kv_port()->counters().commits, 8);
  EXPECT_GT(replicas_[0]->kv_port()->counters().bytes_sent, 0);
  const std::string metrics = coordinator_->RenderMetrics();
  EXPECT_THAT(metrics, HasSubstr("tessera_disaggregated_requests_total{model_name=\"m\"} 8"));
  // Every request's KV transfer was timed on P and reached the coordinator with the handoff.
  EXPECT_THAT(metrics, HasSubstr("tessera_kv_transfer_seconds_count{model_name=\"m\"} 8"));
  EXPECT_THAT(metrics, HasSubstr("vllm:request_decode_time_seconds_count{model_name=\"m\"} 8"));
  EXPECT_THAT(metrics, HasSubstr("tessera_replicas{role=\"prefill\"} 1"));
  ExpectAllBlocksBack();
}

TEST_F(CoordinatorTest, PrefillHeartbeatsLearnTheDecodeReplicasKvDescriptors) {
  Start(0);
  EngineReplica& p = AddRoleReplica("p0", "prefill");
  EngineReplica& d0 = AddRoleReplica("d0", "decode");
  EngineReplica& d1 = AddRoleReplica("d1", "decode");
  std::vector<std::string> peers;
  ASSERT_TRUE(coordinator_->Heartbeat(ids_[0], p.load(), &peers));
  EXPECT_THAT(peers, ::testing::UnorderedElementsAre(d0.kv_port()->layout().descriptor,
                                                     d1.kv_port()->layout().descriptor));
  peers.clear();
  ASSERT_TRUE(coordinator_->Heartbeat(ids_[1], d0.load(), &peers));
  EXPECT_TRUE(peers.empty()) << "decode replicas connect to nobody";
}

TEST_F(CoordinatorTest, AFirstTokenThatEndsTheRequestReleasesTheReservation) {
  Start(0);
  AddRoleReplica("p0", "prefill");
  AddRoleReplica("d0", "decode");
  auto s = coordinator_->Generate(Ids({5, 6, 7, 8, 9}, 1));
  ASSERT_TRUE(s.ok()) << s.status();
  Collected c = Collect(**s);
  EXPECT_EQ(c.tokens, ExpectedGreedy({5, 6, 7, 8, 9}, 1, sample_below_));
  EXPECT_EQ(c.last.finish_reason, model::FinishReason::kLength);
  ExpectAllBlocksBack();
}

TEST_F(CoordinatorTest, CorruptedKvIsDetectedAndTheRequestIsPlacedAgain) {
  Start(0);
  AddRoleReplica("p0", "prefill");
  EngineReplica& d = AddRoleReplica("d0", "decode");
  kvtransfer::FaultPlan plan;
  plan.corrupt_write_at = 1;  // the first segment to land on d0 gets a flipped byte
  d.faults().SetFaultPlan(plan);
  auto s = coordinator_->Generate(Ids({5, 6, 7, 8, 9, 10, 11, 12, 13}, 8));
  ASSERT_TRUE(s.ok()) << s.status();
  Collected c = Collect(**s);
  EXPECT_TRUE(c.last.status.ok()) << c.last.status;
  // Exactly the tokens of an undisturbed run: none missing, none repeated.
  EXPECT_EQ(c.tokens, ExpectedGreedy({5, 6, 7, 8, 9, 10, 11, 12, 13}, 8, sample_below_));
  EXPECT_EQ(d.kv_port()->counters().checksum_failures, 1);
  EXPECT_THAT(coordinator_->RenderMetrics(),
              HasSubstr("tessera_disaggregated_recoveries_total{model_name=\"m\",reason=\""
                        "decode_failed\"} 1"));
  ExpectAllBlocksBack();
}

TEST_F(CoordinatorTest, ALostDecodeReplicaIsReplacedMidStreamWithoutGapsOrRepeats) {
  Start(0);
  AddRoleReplica("p0", "prefill");
  EngineReplica& d0 = AddRoleReplica("d0", "decode");
  EngineReplica& d1 = AddRoleReplica("d1", "decode");
  // Slow decoding down so the request is mid-stream when its replica goes.
  for (EngineReplica* d : {&d0, &d1}) {
    d->executor().on_step = [] { absl::SleepFor(absl::Milliseconds(5)); };
  }
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11};
  auto s = coordinator_->Generate(Ids(prompt, 40));
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<int32_t> tokens;
  while (tokens.size() < 6) {
    auto e = (*s)->Next(absl::Seconds(10));
    ASSERT_TRUE(e.ok()) << e.status();
    ASSERT_FALSE(e->finished) << e->status;
    tokens.insert(tokens.end(), e->token_ids.begin(), e->token_ids.end());
  }
  // Whichever decode replica holds it deregisters (a clean shutdown, or a lapsed lease).
  const int victim = d0.engine().counters().num_running > 0 ? 1 : 2;  // ids_: p0, d0, d1
  coordinator_->DeregisterReplica(ids_[victim]);
  Collected rest = Collect(**s);
  EXPECT_TRUE(rest.last.status.ok()) << rest.last.status;
  tokens.insert(tokens.end(), rest.tokens.begin(), rest.tokens.end());
  EXPECT_EQ(tokens, ExpectedGreedy(prompt, 40, sample_below_));
  EXPECT_EQ(rest.last.completion_tokens, 40);
  EXPECT_THAT(coordinator_->RenderMetrics(),
              HasSubstr("tessera_disaggregated_recoveries_total{model_name=\"m\",reason=\""
                        "decode_lost\"} 1"));
  s->reset();
  ExpectAllBlocksBack();
}

TEST_F(CoordinatorTest, HeartbeatsRenewAReservationWhileItsPrefillRuns) {
  Start(0);
  EngineReplica& p = AddRoleReplica("p0", "prefill");
  EngineReplica& d = AddRoleReplica("d0", "decode");
  d.RestartEngine(absl::Milliseconds(100));
  // Each prefill outlasts D's lease three times over.
  p.executor().on_step = [] { absl::SleepFor(absl::Milliseconds(300)); };
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11, 12, 13};

  // Without heartbeats the reservation lapses under the prefill: its writes are refused, and
  // every placement fails the same way until the request gives up with a retryable error.
  auto lapsed = coordinator_->Generate(Ids(prompt, 6));
  ASSERT_TRUE(lapsed.ok()) << lapsed.status();
  Collected failed = Collect(**lapsed);
  EXPECT_FALSE(failed.last.status.ok());
  EXPECT_GT(d.kv_port()->counters().writes_refused, 0);

  // D's heartbeat loop as worker/rpc/registration runs it: renew what the coordinator names.
  std::atomic<bool> stop{false};
  std::atomic<int> renewals{0};
  std::thread heartbeats([&] {
    while (!stop.load()) {
      std::vector<uint64_t> leases;
      if (coordinator_->Heartbeat(ids_[1], d.load(), nullptr, &leases) && !leases.empty()) {
        d.engine().RenewKv(leases);
        ++renewals;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  const int64_t refused = d.kv_port()->counters().writes_refused;
  auto s = coordinator_->Generate(Ids(prompt, 6));
  ASSERT_TRUE(s.ok()) << s.status();
  Collected c = Collect(**s);
  stop = true;
  heartbeats.join();
  EXPECT_TRUE(c.last.status.ok()) << c.last.status;
  EXPECT_EQ(c.tokens, ExpectedGreedy(prompt, 6, sample_below_));
  EXPECT_GT(renewals.load(), 5);
  EXPECT_EQ(d.kv_port()->counters().writes_refused, refused);
  // Handed over to D, the reservation is no longer the coordinator's to renew.
  std::vector<uint64_t> leases;
  ASSERT_TRUE(coordinator_->Heartbeat(ids_[1], d.load(), nullptr, &leases));
  EXPECT_TRUE(leases.empty());
  ExpectAllBlocksBack();
}

TEST_F(CoordinatorTest, ConcurrentDisaggregatedRequestsSpreadOverTheDecodePool) {
  Start(0);
  EngineReplica& p = AddRoleReplica("p0", "prefill");
  EngineReplica& d0 = AddRoleReplica("d0", "decode");
  EngineReplica& d1 = AddRoleReplica("d1", "decode");
  // Prefills slow enough that every request is placed before any is handed over, and before a
  // heartbeat could tell the coordinator about D's reserved blocks.
  p.executor().on_step = [] { absl::SleepFor(absl::Milliseconds(50)); };
  std::vector<std::unique_ptr<GenerateStream>> streams;
  for (int i = 0; i < 4; ++i) {
    auto s = coordinator_->Generate(Ids({40 + i, 6, 7, 8, 9}, 4));
    ASSERT_TRUE(s.ok()) << s.status();
    streams.push_back(std::move(*s));
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Collect(*streams[i]).tokens, ExpectedGreedy({40 + i, 6, 7, 8, 9}, 4, sample_below_));
  }
  streams.clear();
  EXPECT_EQ(d0.kv_port()->counters().commits, 2);
  EXPECT_EQ(d1.kv_port()->counters().commits, 2);
  ExpectAllBlocksBack();
}

TEST_F(CoordinatorTest, DisaggregatedRoutingFollowsTheDecodeReplicasCachedPrefix) {
  Start(0);
  AddRoleReplica("p0", "prefill");
  // Three decode replicas: with equal loads the router's rotation alone would spread the
  // requests over them.
  std::vector<EngineReplica*> decode = {&AddRoleReplica("d0", "decode"),
                                        &AddRoleReplica("d1", "decode"),
                                        &AddRoleReplica("d2", "decode")};
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
  for (int i = 0; i < 4; ++i) {
    auto s = coordinator_->Generate(Ids(prompt, 3));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(Collect(**s).tokens, ExpectedGreedy(prompt, 3, sample_below_));
  }
  // All four went to the decode replica that held the prompt's blocks after the first.
  EngineReplica* d = nullptr;
  for (EngineReplica* r : decode) {
    const int64_t commits = r->kv_port()->counters().commits;
    EXPECT_TRUE(commits == 0 || commits == 4) << r->info("m").name << ": " << commits;
    if (commits == 4) d = r;
  }
  ASSERT_NE(d, nullptr);
  // ... and from the second on only the last, partial block was sent: the first request moved
  // the prompt's 4 blocks, each later one the 1 block past D's 3 cached full blocks.
  const worker::KvRankLayout& l = d->kv_port()->layout();
  const int64_t block = 2 * (l.layer_end - l.layer_begin) * static_cast<int64_t>(l.BlockBytes());
  EXPECT_EQ(d->kv_port()->counters().bytes_received, block * (4 + 3 * 1));
}

TEST_F(CoordinatorTest, ARefusingPrefillReplicaIsSkipped) {
  Start(0);
  EngineReplica& p0 = AddRoleReplica("p0", "prefill");
  AddRoleReplica("p1", "prefill");
  AddRoleReplica("d0", "decode");
  p0.set_refuse(absl::UnavailableError("p0 is going away"));
  for (int i = 0; i < 4; ++i) {
    auto s = coordinator_->Generate(Ids({5, 6, 7, 30 + i}, 6));
    ASSERT_TRUE(s.ok()) << s.status();
    Collected c = Collect(**s);
    EXPECT_EQ(c.tokens, ExpectedGreedy({5, 6, 7, 30 + i}, 6, sample_below_));
  }
  ExpectAllBlocksBack();
}

TEST_F(CoordinatorTest, WithoutADecodePoolPrefillReplicasServeWholeRequests) {
  Start(0);
  AddRoleReplica("p0", "prefill");
  auto s = coordinator_->Generate(Ids({5, 6, 7}, 6));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Collect(**s).tokens, ExpectedGreedy({5, 6, 7}, 6, sample_below_));
  EXPECT_THAT(coordinator_->RenderMetrics(),
              HasSubstr("tessera_disaggregated_requests_total{model_name=\"m\"} 0"));
}

TEST_F(CoordinatorTest, NoDecodeReplicaWithRoomIsARetryableError) {
  Start(0);
  AddRoleReplica("p0", "prefill");
  EngineReplica& d = AddRoleReplica("d0", "decode");
  d.set_refuse(absl::ResourceExhaustedError("no KV blocks"));
  auto s = coordinator_->Generate(Ids({5, 6, 7}, 6));
  // No mixed replica to fall back to: the prefill replica serves it whole.
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Collect(**s).tokens, ExpectedGreedy({5, 6, 7}, 6, sample_below_));
}

}  // namespace
}  // namespace tessera::coordinator
