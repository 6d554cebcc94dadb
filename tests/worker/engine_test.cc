// The engine end to end: a tiny random Llama on the CPU backend (LocalExecutor) for numerics,
// and the FakeExecutor (tests/worker/fake_executor.h) with a FakeClock for timing, failures and
// shutdown.
#include "worker/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/synchronization/notification.h"
#include "model/structured_output.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "tests/worker/fake_executor.h"
#include "tests/worker/test_util.h"

namespace tessera::worker {
namespace {

using ::testing::ElementsAreArray;
using testing::FakeAlone;
using testing::FakeExecutor;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(60);

model::ModelConfig TinyConfig() {
  model::ModelConfig c;
  c.vocab_size = 128;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.eos_token_ids = {2};
  return c;
}

struct EngineSetup {
  int32_t num_blocks = 256;
  int32_t max_num_batched_tokens = 64;
  int32_t max_num_seqs = 16;
  bool prefix_caching = true;
  bool chunked_prefill = true;
  const model::TokenVocabulary* token_vocabulary = nullptr;  // structured outputs
};

// A tiny model behind an engine.
class ModelEngine {
 public:
  ModelEngine(const model::ModelConfig& config, const model::WeightSource& weights,
              const EngineSetup& setup) {
    testing::TestEngineOptions options;
    options.num_blocks = setup.num_blocks;
    options.max_model_len = 128;
    options.max_num_seqs = 16;
    options.max_num_batched_tokens = 128;
    auto parts = testing::MakeTestEngine(config, weights, options);
    EXPECT_TRUE(parts.ok()) << parts.status();
    parts_ = *std::move(parts);
    EngineOptions engine;
    engine.scheduler.max_model_len = 128;
    engine.scheduler.max_num_seqs = setup.max_num_seqs;
    engine.scheduler.max_num_batched_tokens = setup.max_num_batched_tokens;
    engine.scheduler.enable_prefix_caching = setup.prefix_caching;
    engine.scheduler.enable_chunked_prefill = setup.chunked_prefill;
    engine.token_vocabulary = setup.token_vocabulary;
    auto e = Engine::Create(*parts_.executor, config, engine);
    EXPECT_TRUE(e.ok()) << e.status();
    engine_ = *std::move(e);
  }
  Engine& operator*() { return *engine_; }
  Engine* operator->() { return engine_.get(); }

 private:
  testing::TestEngine parts_;
  std::unique_ptr<Engine> engine_;
};

class EngineModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = TinyConfig();
    // A large init spreads the logits: greedy choices do not depend on summation order.
    weights_ = model::MakeRandomWeights(config_, DataType::kF32, /*seed=*/11, /*init_std=*/0.5f);
  }

  std::vector<Request> RandomRequests(int n, uint32_t seed, int max_prompt = 40,
                                      int max_tokens = 24) {
    std::mt19937 rng(seed);
    std::vector<Request> requests(n);
    for (Request& r : requests) {
      const int len = 1 + static_cast<int>(rng() % max_prompt);
      for (int i = 0; i < len; ++i) r.prompt.push_back(3 + static_cast<int32_t>(rng() % 120));
      r.sampling.max_tokens = 1 + static_cast<int32_t>(rng() % max_tokens);
      r.sampling.ignore_eos = true;
    }
    return requests;
  }

  // A 300-token byte-level tokenizer (files_, tokenizer_) and its vocabulary (vocabulary_) for
  // structured outputs, with the model's vocabulary and EOS made to match.
  void UseByteLevelVocabulary() {
    auto files = model::MakeByteLevelTokenizerFiles(300);
    ASSERT_TRUE(files.ok()) << files.status();
    files_ = *files;
    auto tokenizer = model::Tokenizer::FromJson(files_.tokenizer_json, "test");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
    config_.vocab_size = 300;
    config_.eos_token_ids = {files_.eos_token_id};
    weights_ = model::MakeRandomWeights(config_, DataType::kF32, /*seed=*/12, /*init_std=*/0.5f);
    auto vocabulary = model::TokenVocabulary::Create(*tokenizer_, 300);
    ASSERT_TRUE(vocabulary.ok()) << vocabulary.status();
    vocabulary_ = *std::move(vocabulary);
  }

  // Every request alone: one at a time, no prefix cache.
  std::vector<RequestOutput> Alone(const std::vector<Request>& requests) {
    EngineSetup setup;
    setup.prefix_caching = false;
    ModelEngine engine(config_, *weights_, setup);
    std::vector<RequestOutput> out;
    for (const Request& r : requests) {
      auto stream = engine->Submit(r);
      EXPECT_TRUE(stream.ok()) << stream.status();
      auto output = (*stream)->Collect(kWait);
      EXPECT_TRUE(output.ok()) << output.status();
      out.push_back(*std::move(output));
    }
    return out;
  }

  // All at once; returns outputs in request order.
  std::vector<RequestOutput> Together(Engine& engine, const std::vector<Request>& requests) {
    std::vector<std::shared_ptr<ResponseStream>> streams;
    for (const Request& r : requests) {
      auto stream = engine.Submit(r);
      EXPECT_TRUE(stream.ok()) << stream.status();
      streams.push_back(*stream);
    }
    return CollectAll(streams);
  }

  static std::vector<RequestOutput> CollectAll(
      const std::vector<std::shared_ptr<ResponseStream>>& streams) {
    std::vector<RequestOutput> out;
    for (const auto& stream : streams) {
      auto output = stream->Collect(kWait);
      EXPECT_TRUE(output.ok()) << output.status();
      out.push_back(output.ok() ? *std::move(output) : RequestOutput{});
    }
    return out;
  }

  static void ExpectSameTokens(const std::vector<RequestOutput>& a,
                               const std::vector<RequestOutput>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].token_ids, b[i].token_ids) << "request " << i;
      EXPECT_EQ(a[i].finish_reason, b[i].finish_reason) << "request " << i;
      EXPECT_TRUE(a[i].status.ok() && b[i].status.ok()) << a[i].status << " " << b[i].status;
    }
  }

  // After Shutdown: every block is free or cached, nothing in flight.
  static void ExpectAllBlocksBack(Engine& engine) {
    ASSERT_TRUE(engine.Shutdown(kWait).ok());
    const EngineCounters c = engine.counters();
    EXPECT_EQ(c.kv_blocks_in_use, 0);
    EXPECT_EQ(c.kv_blocks_free + c.kv_blocks_cached, c.kv_blocks_total);
    EXPECT_EQ(c.requests_in_flight, 0);
    EXPECT_EQ(c.num_running + c.num_waiting, 0);
  }

  model::ModelConfig config_;
  std::unique_ptr<model::InMemoryWeights> weights_;
  model::ByteLevelTokenizerFiles files_;  // UseByteLevelVocabulary
  std::unique_ptr<model::Tokenizer> tokenizer_;
  std::unique_ptr<model::TokenVocabulary> vocabulary_;
};

TEST_F(EngineModelTest, SixtyFourRequestsAtRandomTimesMatchEachAlone) {
  const std::vector<Request> requests = RandomRequests(64, /*seed=*/21);
  const std::vector<RequestOutput> alone = Alone(requests);
  EngineSetup setup;
  setup.max_num_batched_tokens = 32;  // long prompts go in chunks
  setup.num_blocks = 120;             // and the cache is short at times
  ModelEngine engine(config_, *weights_, setup);
  std::vector<std::shared_ptr<ResponseStream>> streams(requests.size());
  std::thread submitter([&] {
    std::mt19937 rng(22);
    for (size_t i = 0; i < requests.size(); ++i) {
      absl::SleepFor(absl::Microseconds(rng() % 3000));  // an arrival pattern, not a sync
      auto stream = engine->Submit(requests[i]);
      EXPECT_TRUE(stream.ok()) << stream.status();
      if (stream.ok()) streams[i] = *stream;
    }
  });
  submitter.join();
  ExpectSameTokens(CollectAll(streams), alone);
  const EngineCounters c = engine->counters();
  EXPECT_EQ(c.requests_submitted, 64);
  EXPECT_GT(c.decode_tokens, 0);
  ExpectAllBlocksBack(*engine);
  EXPECT_EQ(engine->counters().requests_finished, 64);
}

TEST_F(EngineModelTest, SharedPrefixesHitTheCacheWithIdenticalOutputs) {
  std::mt19937 rng(23);
  std::vector<std::vector<int32_t>> systems(3);
  for (auto& s : systems) {
    for (int i = 0; i < 24; ++i) s.push_back(3 + static_cast<int32_t>(rng() % 120));
  }
  std::vector<Request> requests = RandomRequests(30, /*seed=*/24, /*max_prompt=*/10, 12);
  for (size_t i = 0; i < requests.size(); ++i) {
    std::vector<int32_t> p = systems[i % 3];
    p.insert(p.end(), requests[i].prompt.begin(), requests[i].prompt.end());
    requests[i].prompt = p;
  }
  const std::vector<RequestOutput> alone = Alone(requests);
  for (int32_t num_blocks : {256, 40}) {  // plenty; then eviction under pressure
    SCOPED_TRACE(::testing::Message() << num_blocks << " blocks");
    EngineSetup setup;
    setup.num_blocks = num_blocks;
    ModelEngine engine(config_, *weights_, setup);
    // A first wave warms the cache; the second is served from it.
    const std::vector<Request> first(requests.begin(), requests.begin() + 3);
    const std::vector<Request> rest(requests.begin() + 3, requests.end());
    std::vector<RequestOutput> outputs = Together(*engine, first);
    const std::vector<RequestOutput> more = Together(*engine, rest);
    outputs.insert(outputs.end(), more.begin(), more.end());
    ExpectSameTokens(outputs, alone);
    int32_t cached = 0;
    for (const RequestOutput& o : more) cached += o.num_cached_tokens;
    const EngineCounters c = engine->counters();
    EXPECT_GT(cached, 0);
    EXPECT_GT(c.prefix_cache_hits, 0);
    EXPECT_GT(c.prefix_cache_hit_rate(), 0.2);
    if (num_blocks == 40) {
      EXPECT_GT(c.prefix_cache_evictions, 0);
    }
    ExpectAllBlocksBack(*engine);
  }
}

TEST_F(EngineModelTest, TinyCacheForcesPreemptionWithIdenticalOutputs) {
  const std::vector<Request> requests = RandomRequests(16, /*seed=*/25, 40, 30);
  const std::vector<RequestOutput> alone = Alone(requests);
  EngineSetup setup;
  setup.num_blocks = 18;  // 72 tokens: one long request, or a few short ones
  ModelEngine engine(config_, *weights_, setup);
  ExpectSameTokens(Together(*engine, requests), alone);
  EXPECT_GT(engine->counters().preemptions, 0);
  ExpectAllBlocksBack(*engine);
}

TEST_F(EngineModelTest, WithoutChunkedPrefillOutputsAreTheSame) {
  const std::vector<Request> requests = RandomRequests(12, /*seed=*/26);
  EngineSetup setup;
  setup.chunked_prefill = false;
  setup.max_num_batched_tokens = 128;
  ModelEngine engine(config_, *weights_, setup);
  ExpectSameTokens(Together(*engine, requests), Alone(requests));
}

TEST_F(EngineModelTest, CancellationAtRandomPointsReturnsEveryBlock) {
  std::vector<Request> requests = RandomRequests(30, /*seed=*/27, 30, 1);
  for (Request& r : requests) r.sampling.max_tokens = 60;
  EngineSetup setup;
  setup.num_blocks = 60;
  ModelEngine engine(config_, *weights_, setup);
  std::vector<std::shared_ptr<ResponseStream>> streams;
  for (const Request& r : requests) streams.push_back(*engine->Submit(r));
  std::set<RequestId> cancelled;
  std::thread canceller([&] {
    std::mt19937 rng(28);
    for (int i = 0; i < 15; ++i) {
      absl::SleepFor(absl::Microseconds(rng() % 4000));
      const RequestId id = streams[rng() % streams.size()]->request_id();
      cancelled.insert(id);
      engine->Cancel(id);
    }
  });
  canceller.join();
  int ended_by_cancel = 0;
  for (const auto& stream : streams) {
    auto output = stream->Collect(kWait);
    ASSERT_TRUE(output.ok()) << output.status();
    if (output->finish_reason == FinishReason::kAbort) {
      ++ended_by_cancel;
      EXPECT_EQ(output->status.code(), absl::StatusCode::kCancelled);
      EXPECT_TRUE(cancelled.contains(stream->request_id()));
    } else {
      EXPECT_EQ(output->token_ids.size(), 60u);
    }
  }
  EXPECT_GT(ended_by_cancel, 0);
  engine->Cancel(12345);  // unknown: ignored
  ExpectAllBlocksBack(*engine);
}

TEST_F(EngineModelTest, RejectsARequestThatCanNeverFit) {
  EngineSetup setup;
  setup.num_blocks = 10;  // 40 tokens
  ModelEngine engine(config_, *weights_, setup);
  Request r;
  r.prompt = std::vector<int32_t>(35, 5);
  r.sampling.max_tokens = 10;
  auto stream = engine->Submit(r);
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(stream.status().message(), HasSubstr("could never run"));
  r.prompt = std::vector<int32_t>(200, 5);
  EXPECT_THAT(engine->Submit(r).status().message(), HasSubstr("max_model_len"));
  EXPECT_EQ(engine->counters().requests_rejected, 2);
  EXPECT_EQ(engine->Submit(r, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EngineModelTest, SeededSamplingIsReproducibleAcrossBatchingAndPreemption) {
  std::vector<Request> requests = RandomRequests(12, /*seed=*/29, 30, 30);
  for (size_t i = 0; i < requests.size(); ++i) {
    SamplingParams& s = requests[i].sampling;
    s.temperature = 0.9f;
    s.top_p = 0.95f;
    s.top_k = i % 2 == 0 ? 40 : 0;
    s.min_p = i % 3 == 0 ? 0.05f : 0.0f;
    s.repetition_penalty = i % 4 == 1 ? 1.2f : 1.0f;
    s.frequency_penalty = i % 4 == 2 ? 0.5f : 0.0f;
    s.presence_penalty = i % 4 == 3 ? 0.5f : 0.0f;
    s.seed = 1000 + static_cast<int64_t>(i);
    s.logprobs = 3;
  }
  const std::vector<RequestOutput> alone = Alone(requests);
  EngineSetup setup;
  setup.num_blocks = 16;
  setup.max_num_batched_tokens = 16;
  ModelEngine engine(config_, *weights_, setup);
  const std::vector<RequestOutput> batched = Together(*engine, requests);
  ExpectSameTokens(batched, alone);
  EXPECT_GT(engine->counters().preemptions, 0);
  for (size_t i = 0; i < batched.size(); ++i) {
    for (size_t t = 0; t < batched[i].token_ids.size(); ++t) {
      const auto& top = batched[i].top_logprobs[t];
      ASSERT_EQ(top.size(), 3u);
      EXPECT_GE(top[0].logprob, top[1].logprob);
      EXPECT_GE(top[1].logprob, top[2].logprob);
      EXPECT_LE(batched[i].logprobs[t], top[0].logprob + 1e-6f);
      EXPECT_NEAR(batched[i].logprobs[t], alone[i].logprobs[t], 1e-4f);
    }
  }
  // Another seed draws another sequence.
  Request other = requests[0];
  other.sampling.seed = 7;
  auto stream = engine->Submit(other);
  ASSERT_TRUE(stream.ok());
  EXPECT_NE((*stream)->Collect(kWait)->token_ids, alone[0].token_ids);
}

TEST_F(EngineModelTest, GreedyTopLogprobsLeadWithTheChosenToken) {
  ModelEngine engine(config_, *weights_, EngineSetup{});
  Request r = RandomRequests(1, /*seed=*/30)[0];
  r.sampling.max_tokens = 6;
  r.sampling.logprobs = 5;
  auto output = (*engine->Submit(r))->Collect(kWait);
  ASSERT_TRUE(output.ok());
  for (size_t t = 0; t < output->token_ids.size(); ++t) {
    ASSERT_EQ(output->top_logprobs[t].size(), 5u);
    EXPECT_EQ(output->top_logprobs[t][0].token_id, output->token_ids[t]);
    EXPECT_EQ(output->top_logprobs[t][0].logprob, output->logprobs[t]);
  }
}

TEST_F(EngineModelTest, LogitBiasSteersAndBansTokensInABatch) {
  ModelEngine engine(config_, *weights_, EngineSetup{});
  std::vector<Request> requests = RandomRequests(3, /*seed=*/41);
  for (Request& r : requests) r.sampling.max_tokens = 8;
  const std::vector<RequestOutput> plain = Together(*engine, requests);
  // Request 0: token 77 pushed up by 100 wins every greedy step. Request 1: its own greedy tokens
  // pushed down by 100 never come back. Request 2: no bias, unchanged beside the others.
  requests[0].sampling.logit_bias = {{77, 100.0f}};
  for (int32_t id : plain[1].token_ids) {
    bool seen = false;
    for (const model::LogitBias& b : requests[1].sampling.logit_bias) seen |= b.token_id == id;
    if (!seen) requests[1].sampling.logit_bias.push_back({id, -100.0f});
  }
  const std::vector<RequestOutput> biased = Together(*engine, requests);
  EXPECT_EQ(biased[0].token_ids, std::vector<int32_t>(8, 77));
  for (int32_t id : biased[1].token_ids) {
    for (const model::LogitBias& b : requests[1].sampling.logit_bias) EXPECT_NE(id, b.token_id);
  }
  EXPECT_EQ(biased[2].token_ids, plain[2].token_ids);
  // A bias outside [-100, 100] or the vocabulary is refused by name.
  Request bad = requests[2];
  bad.sampling.logit_bias = {{5, 150.0f}};
  EXPECT_THAT(std::string(engine->Submit(bad).status().message()), HasSubstr("logit_bias"));
  bad.sampling.logit_bias = {{static_cast<int32_t>(config_.vocab_size), 1.0f}};
  EXPECT_THAT(std::string(engine->Submit(bad).status().message()), HasSubstr("logit_bias"));
}

// Structured outputs on a random model whose vocabulary is a byte-level tokenizer's: sampled or
// greedy, every output that ends is a value of its grammar, and a request without one beside them
// is unchanged.
TEST_F(EngineModelTest, StructuredOutputsHoldWhateverTheModelPrefers) {
  ASSERT_NO_FATAL_FAILURE(UseByteLevelVocabulary());
  EngineSetup setup;
  setup.token_vocabulary = vocabulary_.get();
  ModelEngine engine(config_, *weights_, setup);
  using Kind = model::StructuredOutput::Kind;
  const model::StructuredOutput schema{Kind::kJsonSchema, R"({"type": "object",
      "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "integer"}},
      "required": ["answer", "n"]})"};
  std::vector<Request> requests = RandomRequests(8, /*seed=*/43, /*max_prompt=*/20);
  for (size_t i = 0; i < requests.size(); ++i) {
    Request& r = requests[i];
    r.sampling.ignore_eos = false;
    r.sampling.max_tokens = 100;
    if (i < 6) r.sampling.structured_output = schema;
    if (i == 6) r.sampling.structured_output = {Kind::kChoice, R"(["alpha", "beta"])"};
    if (i % 2 == 1) {  // sampled, seeded
      r.sampling.temperature = 1.0f;
      r.sampling.seed = static_cast<int64_t>(i);
    }
  }
  requests[7].sampling.ignore_eos = true;  // no constraint: as alone
  requests[7].sampling.max_tokens = 10;
  const std::vector<RequestOutput> outputs = Together(*engine, requests);
  for (size_t i = 0; i < 7; ++i) {
    ASSERT_TRUE(outputs[i].status.ok()) << outputs[i].status;
    std::vector<int32_t> ids = outputs[i].token_ids;
    if (!ids.empty() && ids.back() == files_.eos_token_id) ids.pop_back();
    auto text = tokenizer_->Decode(ids, /*skip_special_tokens=*/false);
    ASSERT_TRUE(text.ok());
    SCOPED_TRACE(absl::StrCat("request ", i, ": ", *text));
    ASSERT_EQ(outputs[i].finish_reason, FinishReason::kStop);
    if (i == 6) {
      EXPECT_TRUE(*text == "alpha" || *text == "beta");
      continue;
    }
    const nlohmann::json value = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(value.is_object());
    EXPECT_TRUE(value["answer"] == "yes" || value["answer"] == "no");
    EXPECT_TRUE(value["n"].is_number_integer());
    EXPECT_EQ(value.size(), 2u);
  }
  EXPECT_EQ(outputs[7].token_ids, Alone({requests[7]})[0].token_ids);
  // A schema the grammar cannot enforce is refused by name; so is a replica without a vocabulary.
  Request bad = requests[0];
  bad.sampling.structured_output = {Kind::kJsonSchema, R"({"type": "integer", "minimum": 0})"};
  EXPECT_THAT(std::string(engine->Submit(bad).status().message()), HasSubstr("minimum"));
  ModelEngine plain(config_, *weights_, EngineSetup{});
  EXPECT_THAT(std::string(plain->Submit(requests[0]).status().message()),
              HasSubstr("need the model's tokenizer"));
}

// A reasoning model's grammar holds after its end-of-thinking token (start_after_token): before
// it the output is the model's own, after it the schema's.
TEST_F(EngineModelTest, StructuredOutputsWaitForTheEndOfReasoning) {
  ASSERT_NO_FATAL_FAILURE(UseByteLevelVocabulary());
  EngineSetup setup;
  setup.token_vocabulary = vocabulary_.get();
  ModelEngine engine(config_, *weights_, setup);
  const int32_t end_of_thinking = tokenizer_->Encode("#", false)->at(0);
  model::StructuredOutput schema{model::StructuredOutput::Kind::kJsonSchema,
                                 R"({"type": "object", "properties": {"n": {"type": "integer"}},
                                     "required": ["n"]})"};
  schema.start_after_token = end_of_thinking;
  std::vector<Request> requests = RandomRequests(3, /*seed=*/44, /*max_prompt=*/12);
  for (Request& r : requests) {
    r.sampling.ignore_eos = false;
    r.sampling.max_tokens = 60;
    r.sampling.structured_output = schema;
  }
  // The bias makes the model end its thinking at once; then it answers in the grammar.
  requests[0].sampling.logit_bias = {{end_of_thinking, 100.0f}};
  requests[1].sampling.logit_bias = {{end_of_thinking, 100.0f}};
  requests[1].sampling.temperature = 1.0f;
  requests[1].sampling.seed = 3;
  // Never ends its thinking: never constrained, as the same request without a grammar.
  requests[2].sampling.logit_bias = {{end_of_thinking, -100.0f}};
  requests[2].sampling.max_tokens = 12;
  const std::vector<RequestOutput> outputs = Together(*engine, requests);
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(outputs[i].status.ok()) << outputs[i].status;
    std::vector<int32_t> ids = outputs[i].token_ids;
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.front(), end_of_thinking);
    ids.erase(ids.begin());
    if (!ids.empty() && ids.back() == files_.eos_token_id) ids.pop_back();
    auto text = tokenizer_->Decode(ids, /*skip_special_tokens=*/false);
    ASSERT_TRUE(text.ok());
    SCOPED_TRACE(absl::StrCat("request ", i, ": ", *text));
    EXPECT_EQ(outputs[i].finish_reason, FinishReason::kStop);
    const nlohmann::json value = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(value.is_object());
    EXPECT_TRUE(value["n"].is_number_integer());
  }
  Request free = requests[2];
  free.sampling.structured_output = {};
  EXPECT_EQ(outputs[2].token_ids, Alone({free})[0].token_ids);
}

// --- The FakeExecutor behind the engine: time, failures, shutdown ---------------------------

ExecutorLimits FakeLimits() {
  ExecutorLimits l;
  l.num_blocks = 64;
  l.block_size = 4;
  l.max_blocks_per_seq = 64;
  l.max_num_tokens = 256;
  l.max_num_seqs = 16;
  return l;
}

class EngineFakeTest : public ::testing::Test {
 protected:
  EngineFakeTest() : executor_(FakeLimits(), /*vocab_size=*/100) {
    config_.vocab_size = 100;
    config_.eos_token_ids = {2};
    options_.scheduler.max_model_len = 200;
    options_.scheduler.max_num_seqs = 16;
    options_.scheduler.max_num_batched_tokens = 64;
    options_.idle_wait = absl::Milliseconds(5);
  }
  std::unique_ptr<Engine> Make() {
    auto engine = Engine::Create(executor_, config_, options_, clock_);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *std::move(engine) : nullptr;
  }
  static Request Req(int32_t max_tokens, absl::Duration timeout = absl::InfiniteDuration()) {
    Request r;
    r.prompt = {5, 6, 7};
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    r.timeout = timeout;
    return r;
  }

  FakeClock clock_;
  FakeExecutor executor_;
  model::ModelConfig config_;
  EngineOptions options_;
};

TEST_F(EngineFakeTest, TimeoutOnTheInjectedClockAbortsTheRequest) {
  executor_.on_step = [this] { clock_.Advance(absl::Seconds(1)); };  // one second per step
  auto engine = Make();
  auto timed = engine->Submit(Req(150, absl::Seconds(10)));
  auto patient = engine->Submit(Req(30));
  ASSERT_TRUE(timed.ok() && patient.ok());
  auto out = (*timed)->Collect(kWait);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->finish_reason, FinishReason::kAbort);
  EXPECT_EQ(out->status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(out->token_ids.size(), 9u);
  EXPECT_LE(out->token_ids.size(), 11u);
  auto done = (*patient)->Collect(kWait);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->token_ids, FakeAlone({5, 6, 7}, 30, 100));
  EXPECT_EQ(done->finish_reason, FinishReason::kLength);
}

TEST_F(EngineFakeTest, TheLastEventSaysWhereTheRequestsTimeWent) {
  options_.scheduler.max_num_seqs = 1;  // B waits for A
  // One second per step; the first step waits until B is queued too (under load the engine
  // thread could otherwise run steps before the test submits B).
  absl::Notification both_submitted;
  executor_.on_step = [this, &both_submitted] {
    both_submitted.WaitForNotification();
    clock_.Advance(absl::Seconds(1));
  };
  auto engine = Make();
  auto a = engine->Submit(Req(3));
  auto b = engine->Submit(Req(2));
  both_submitted.Notify();
  ASSERT_TRUE(a.ok() && b.ok());
  std::optional<RequestTimings> ta;
  std::optional<RequestTimings> tb;
  for (auto [stream, timings] : {std::pair{&*a, &ta}, std::pair{&*b, &tb}}) {
    while (true) {
      absl::StatusOr<TokenEvent> e = (*stream)->Next(kWait);
      ASSERT_TRUE(e.ok()) << e.status();
      if (!e->finish_reason.has_value()) {
        EXPECT_FALSE(e->timings.has_value()) << "timings come with the last event only";
        continue;
      }
      *timings = e->timings;
      break;
    }
  }
  ASSERT_TRUE(ta.has_value() && tb.has_value());
  // A: admitted at once, its first token after one step, two more steps to its end.
  EXPECT_DOUBLE_EQ(ta->queue_seconds, 0);
  EXPECT_DOUBLE_EQ(ta->prefill_seconds, 1);
  EXPECT_DOUBLE_EQ(ta->decode_seconds, 2);
  EXPECT_DOUBLE_EQ(ta->kv_send_seconds, 0);
  // B waited for A's three steps.
  EXPECT_DOUBLE_EQ(tb->queue_seconds, 3);
  EXPECT_DOUBLE_EQ(tb->prefill_seconds, 1);
  EXPECT_DOUBLE_EQ(tb->decode_seconds, 1);
}

TEST_F(EngineFakeTest, ShutdownDrainsThenAbortsAtTheDeadline) {
  auto engine = Make();
  auto quick = engine->Submit(Req(5));
  ASSERT_TRUE(quick.ok());
  EXPECT_TRUE(engine->Shutdown(kWait).ok());  // drains: the request completes
  EXPECT_EQ((*quick)->Collect(kWait)->finish_reason, FinishReason::kLength);
  EXPECT_EQ(engine->Submit(Req(5)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(engine->Shutdown(kWait).ok());  // idempotent

  // A gate holds the engine in its first step: a zero drain aborts what is in flight.
  absl::Notification entered, release;
  executor_.on_step = [&] {
    if (!entered.HasBeenNotified()) entered.Notify();
    release.WaitForNotificationWithTimeout(kWait);
  };
  auto second = Make();
  auto held = second->Submit(Req(150));
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(kWait));
  std::thread stopper([&] {
    const absl::Status status = second->Shutdown(absl::ZeroDuration());
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  });
  // Shutdown has begun once Submit is refused (requests that slipped in are aborted too).
  std::vector<std::shared_ptr<ResponseStream>> slipped;
  const absl::Time give_up = absl::Now() + kWait;
  for (;;) {
    auto probe = second->Submit(Req(150));
    if (!probe.ok()) {
      EXPECT_EQ(probe.status().code(), absl::StatusCode::kUnavailable);
      break;
    }
    slipped.push_back(*probe);
    ASSERT_LT(absl::Now(), give_up);
    absl::SleepFor(absl::Milliseconds(1));
  }
  release.Notify();
  stopper.join();
  slipped.push_back(*held);
  for (const auto& stream : slipped) {
    auto out = stream->Collect(kWait);
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->finish_reason, FinishReason::kAbort);
    EXPECT_EQ(out->status.code(), absl::StatusCode::kAborted);
  }
}

TEST_F(EngineFakeTest, DestructorWithRequestsInFlightDoesNotHang) {
  auto engine = Make();
  std::vector<std::shared_ptr<ResponseStream>> streams;
  for (int i = 0; i < 8; ++i) streams.push_back(*engine->Submit(Req(190)));
  engine.reset();
  for (const auto& stream : streams) {
    auto out = stream->Collect(kWait);
    ASSERT_TRUE(out.ok());
    EXPECT_TRUE(out->finish_reason == FinishReason::kAbort || out->token_ids.size() == 190u);
  }
}

TEST_F(EngineFakeTest, ExecutorFailureEndsEveryRequestAndStopsTheEngine) {
  executor_.FailNextStep(absl::UnavailableError("rank 3 lost"));
  auto engine = Make();
  auto a = engine->Submit(Req(10));
  ASSERT_TRUE(a.ok());
  auto out = (*a)->Collect(kWait);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->finish_reason, FinishReason::kAbort);
  EXPECT_THAT(out->status.message(), HasSubstr("rank 3 lost"));
  // The failure was recorded before the last event went out: nothing more is accepted.
  EXPECT_EQ(engine->Submit(Req(10)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(engine->Shutdown(kWait).message(), HasSubstr("rank 3 lost"));
}

// A pipelined executor (two steps in flight): the engine plans the second step over other
// sequences while the first is out, applies results in order, and cancellations of sequences
// whose step is out free their blocks once it is back. Outputs equal each request alone.
TEST_F(EngineFakeTest, TwoStepsInFlightKeepOutputsCancelsAndBlocks) {
  executor_.steps_in_flight = 2;
  // Steps long enough that the cancellations below land while requests run.
  executor_.on_step = [] { absl::SleepFor(absl::Microseconds(300)); };
  auto engine = Make();
  std::mt19937 rng(31);
  std::vector<Request> requests;
  std::vector<std::shared_ptr<ResponseStream>> streams;
  for (int i = 0; i < 24; ++i) {
    Request r = Req(5 + static_cast<int32_t>(rng() % 40));
    r.prompt.clear();
    for (int j = 0, n = 1 + static_cast<int>(rng() % 12); j < n; ++j) {
      r.prompt.push_back(3 + static_cast<int32_t>(rng() % 90));
    }
    requests.push_back(r);
    streams.push_back(*engine->Submit(r));
  }
  std::set<RequestId> cancelled;
  for (int i = 0; i < 6; ++i) {
    absl::SleepFor(absl::Microseconds(rng() % 2000));
    const RequestId id = streams[rng() % streams.size()]->request_id();
    cancelled.insert(id);
    engine->Cancel(id);
  }
  int ended_by_cancel = 0;
  for (size_t i = 0; i < streams.size(); ++i) {
    auto out = streams[i]->Collect(kWait);
    ASSERT_TRUE(out.ok()) << out.status();
    if (out->finish_reason == FinishReason::kAbort) {
      ++ended_by_cancel;
      EXPECT_TRUE(cancelled.contains(streams[i]->request_id()));
      continue;
    }
    EXPECT_THAT(out->token_ids, ElementsAreArray(FakeAlone(requests[i].prompt,
                                                           requests[i].sampling.max_tokens, 100)))
        << "request " << i;
  }
  EXPECT_GT(ended_by_cancel, 0);
  EXPECT_EQ(executor_.max_outstanding(), 2);
  ASSERT_TRUE(engine->Shutdown(kWait).ok());
  const EngineCounters c = engine->counters();
  EXPECT_EQ(c.kv_blocks_in_use, 0);
  EXPECT_EQ(c.kv_blocks_free + c.kv_blocks_cached, c.kv_blocks_total);
  EXPECT_EQ(c.requests_aborted, ended_by_cancel);
}

// Shutting down at once with steps in flight: the requests end aborted and the blocks of the
// sequences whose steps were still out come back too.
TEST_F(EngineFakeTest, AShutdownWithStepsInFlightReturnsEveryBlock) {
  executor_.steps_in_flight = 2;
  executor_.on_step = [] { absl::SleepFor(absl::Microseconds(500)); };
  auto engine = Make();
  std::vector<std::shared_ptr<ResponseStream>> streams;
  for (int i = 0; i < 6; ++i) streams.push_back(*engine->Submit(Req(150)));
  // Both steps out at least once before the shutdown.
  const absl::Time give_up = absl::Now() + kWait;
  while (executor_.max_outstanding() < 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(engine->Shutdown(absl::ZeroDuration()).code(), absl::StatusCode::kDeadlineExceeded);
  for (const auto& stream : streams) {
    auto out = stream->Collect(kWait);
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->finish_reason, FinishReason::kAbort);
  }
  const EngineCounters c = engine->counters();
  EXPECT_EQ(c.kv_blocks_in_use, 0);
  EXPECT_EQ(c.kv_blocks_free + c.kv_blocks_cached, c.kv_blocks_total);
}

// An executor that samples a token the request's grammar refuses (the fake ignores masks) ends
// that request with an internal error, without the token, and returns its blocks.
TEST_F(EngineFakeTest, ATokenTheGrammarRefusesEndsTheRequestWithAnError) {
  Request r = Req(4);
  const int32_t sampled = FakeExecutor::NextToken(r.prompt, 100, SamplingRow{});
  std::vector<std::string> bytes(100, "a");
  bytes[(sampled + 1) % 100 < FakeExecutor::kFirstToken ? FakeExecutor::kFirstToken
                                                        : (sampled + 1) % 100] = "zz";
  std::unique_ptr<model::TokenVocabulary> vocabulary =
      model::TokenVocabulary::FromTokenBytes(std::move(bytes));
  options_.token_vocabulary = vocabulary.get();
  std::unique_ptr<Engine> engine = Make();
  r.sampling.structured_output = {model::StructuredOutput::Kind::kChoice, R"(["zz"])"};
  auto stream = engine->Submit(r);
  ASSERT_TRUE(stream.ok()) << stream.status();
  absl::StatusOr<RequestOutput> out = (*stream)->Collect(kWait);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->status.code(), absl::StatusCode::kInternal) << out->status;
  EXPECT_THAT(std::string(out->status.message()), HasSubstr("structured output"));
  EXPECT_TRUE(out->token_ids.empty());
  ASSERT_TRUE(engine->Shutdown(kWait).ok());
  EXPECT_EQ(engine->counters().kv_blocks_in_use, 0);
}

TEST_F(EngineFakeTest, TooManyRequestsInFlightAreShed) {
  options_.max_requests_in_flight = 2;
  absl::Notification release;
  executor_.on_step = [&] { release.WaitForNotificationWithTimeout(kWait); };
  auto engine = Make();
  auto a = engine->Submit(Req(3));
  auto b = engine->Submit(Req(3));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(engine->Submit(Req(3)).status().code(), absl::StatusCode::kResourceExhausted);
  release.Notify();
  EXPECT_TRUE((*a)->Collect(kWait).ok());
  EXPECT_TRUE((*b)->Collect(kWait).ok());
  EXPECT_TRUE(engine->Submit(Req(3)).ok());
}

class StopAt : public StopMatcher {
 public:
  explicit StopAt(int32_t token) : token_(token) {}
  bool Matches(int32_t token) override { return token == token_; }

 private:
  int32_t token_;
};

class StopAtFactory : public StopMatcherFactory {
 public:
  absl::StatusOr<std::unique_ptr<StopMatcher>> Create(
      const std::vector<std::string>& stop) override {
    return std::make_unique<StopAt>(std::stoi(stop[0]));
  }
};

TEST_F(EngineFakeTest, StopStringsNeedAMatcherFactory) {
  Request r = Req(12);
  r.sampling.stop = {"x"};
  {
    auto engine = Make();
    EXPECT_EQ(engine->Submit(r).status().code(), absl::StatusCode::kUnimplemented);
  }
  StopAtFactory factory;
  options_.stop_matchers = &factory;
  auto engine = Make();
  const std::vector<int32_t> free_run = FakeAlone({5, 6, 7}, 12, 100);
  r.sampling.stop = {std::to_string(free_run[3])};
  auto out = (*engine->Submit(r))->Collect(kWait);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->finish_reason, FinishReason::kStop);
  EXPECT_EQ(out->token_ids.back(), free_run[3]);
  EXPECT_LE(out->token_ids.size(), 4u);
}

TEST_F(EngineFakeTest, StreamsAreDeadlineBoundedAndEndOnce) {
  absl::Notification release;
  executor_.on_step = [&] { release.WaitForNotificationWithTimeout(kWait); };
  auto engine = Make();
  auto stream = engine->Submit(Req(2));
  ASSERT_TRUE(stream.ok());
  EXPECT_EQ((*stream)->Next(absl::Milliseconds(10)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  release.Notify();
  auto first = (*stream)->Next(kWait);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->finish_reason.has_value());
  auto last = (*stream)->Next(kWait);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->finish_reason, FinishReason::kLength);
  EXPECT_EQ((*stream)->Next(kWait).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(FinishReasonName(FinishReason::kLength), "length");
  EXPECT_EQ(FinishReasonName(FinishReason::kAbort), "abort");
}

}  // namespace
}  // namespace tessera::worker
