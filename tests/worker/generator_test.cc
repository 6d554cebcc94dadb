#include "worker/generator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "model/weights.h"
#include "tests/worker/test_util.h"

namespace tessera::worker {
namespace {

using ::testing::HasSubstr;
using testing::MakeTestEngine;
using testing::TestEngineOptions;

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

class GeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = TinyConfig();
    // A large init spreads the logits, so greedy choices are robust to summation order.
    weights_ = model::MakeRandomWeights(config_, DataType::kF32, /*seed=*/11, /*init_std=*/0.5f);
  }

  std::vector<GenerateRequest> RandomRequests(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<GenerateRequest> requests(n);
    for (auto& r : requests) {
      const int len = 1 + static_cast<int>(rng() % 30);
      for (int i = 0; i < len; ++i) r.prompt.push_back(3 + static_cast<int32_t>(rng() % 120));
      r.sampling.max_tokens = 1 + static_cast<int32_t>(rng() % 20);
      r.sampling.ignore_eos = true;
    }
    return requests;
  }

  std::vector<GenerateResult> Run(const std::vector<GenerateRequest>& requests,
                                  const TestEngineOptions& options = {}) {
    auto engine = MakeTestEngine(config_, *weights_, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return {};
    auto results = engine->generator->Generate(requests);
    EXPECT_TRUE(results.ok()) << results.status();
    EXPECT_EQ(engine->generator->allocator().num_free(), options.num_blocks);
    return results.ok() ? *results : std::vector<GenerateResult>{};
  }

  model::ModelConfig config_;
  std::unique_ptr<model::InMemoryWeights> weights_;
};

TEST_F(GeneratorTest, BatchedGreedyEqualsEachRequestAlone) {
  const auto requests = RandomRequests(12, /*seed=*/5);
  const auto batched = Run(requests);
  ASSERT_EQ(batched.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto alone = Run({requests[i]});
    ASSERT_EQ(alone.size(), 1u);
    EXPECT_EQ(batched[i].tokens, alone[0].tokens) << "request " << i;
    EXPECT_EQ(batched[i].tokens.size(), static_cast<size_t>(requests[i].sampling.max_tokens));
    EXPECT_EQ(batched[i].finish_reason, FinishReason::kLength);
  }
}

TEST_F(GeneratorTest, SmallTokenBudgetChunksPrefillsWithSameTokens) {
  const auto requests = RandomRequests(8, /*seed=*/6);
  TestEngineOptions chunked;
  chunked.max_num_batched_tokens = 7;  // prompts of up to 30 tokens take several steps
  const auto a = Run(requests, chunked);
  const auto b = Run(requests);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << i;
}

TEST_F(GeneratorTest, FewBlocksMakeRequestsWaitWithSameTokens) {
  const auto requests = RandomRequests(10, /*seed=*/7);
  TestEngineOptions tight;
  tight.num_blocks = 14;  // one or two requests at a time
  tight.max_model_len = 52;
  const auto a = Run(requests, tight);
  const auto b = Run(requests);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << i;
}

TEST_F(GeneratorTest, SeededSamplingIsReproducibleAndSeedsDiffer) {
  GenerateRequest r;
  r.prompt = {5, 6, 7};
  r.sampling.max_tokens = 24;
  r.sampling.temperature = 1.0f;
  r.sampling.ignore_eos = true;
  r.sampling.seed = 1;
  GenerateRequest other = r;
  other.sampling.seed = 2;
  const auto first = Run({r, other});
  const auto again = Run({r});
  EXPECT_EQ(first[0].tokens, again[0].tokens);
  EXPECT_NE(first[0].tokens, first[1].tokens);
  for (float lp : first[0].logprobs) EXPECT_LE(lp, 0.0f);
}

TEST_F(GeneratorTest, StopsAtStopTokenAndEos) {
  GenerateRequest r;
  r.prompt = {5, 6, 7};
  r.sampling.max_tokens = 10;
  r.sampling.ignore_eos = true;
  const auto free_run = Run({r});
  ASSERT_EQ(free_run[0].tokens.size(), 10u);
  GenerateRequest stop = r;
  stop.sampling.stop_token_ids = {free_run[0].tokens[2]};
  const auto stopped = Run({stop});
  const auto first_stop =
      std::find(free_run[0].tokens.begin(), free_run[0].tokens.end(), free_run[0].tokens[2]) -
      free_run[0].tokens.begin();
  EXPECT_EQ(stopped[0].tokens.size(), static_cast<size_t>(first_stop + 1));
  EXPECT_EQ(stopped[0].finish_reason, FinishReason::kStop);

  config_.eos_token_ids = {free_run[0].tokens[0]};
  GenerateRequest eos = r;
  eos.sampling.ignore_eos = false;
  const auto eos_run = Run({eos});
  EXPECT_EQ(eos_run[0].tokens.size(), 1u);
  EXPECT_EQ(eos_run[0].finish_reason, FinishReason::kStop);
}

TEST_F(GeneratorTest, RejectsBadRequestsNamingThem) {
  auto engine = MakeTestEngine(config_, *weights_);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto expect_error = [&](GenerateRequest bad, const std::string& text) {
    GenerateRequest good;
    good.prompt = {1, 2};
    auto results = engine->generator->Generate({good, bad});
    ASSERT_FALSE(results.ok());
    EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(results.status().message(), HasSubstr("request 1: "));
    EXPECT_THAT(results.status().message(), HasSubstr(text));
  };
  GenerateRequest r;
  expect_error(r, "empty prompt");
  r.prompt = {1, 500};
  expect_error(r, "prompt token 500 outside the vocabulary");
  r.prompt = std::vector<int32_t>(120, 1);
  r.sampling.max_tokens = 20;
  expect_error(r, "exceeds max_model_len 128");
  r.prompt = {1};
  r.sampling.max_tokens = 4;
  r.sampling.top_p = 0.0f;
  expect_error(r, "top_p must be in (0, 1]");
  r.sampling.top_p = 1.0f;
  r.sampling.temperature = -1.0f;
  expect_error(r, "temperature");
  EXPECT_EQ(engine->generator->allocator().num_free(), engine->cache->config().num_blocks);
}

TEST(KvCacheTest, RejectsBadSizesAndDtypes) {
  auto engine_backend = testing::MakeTestEngine(
      TinyConfig(), *model::MakeRandomWeights(TinyConfig(), DataType::kF32, 1));
  ASSERT_TRUE(engine_backend.ok());
  KvCacheConfig c;
  c.num_layers = 2;
  c.num_blocks = 0;
  c.kv_heads = 2;
  c.head_dim = 8;
  auto cache = KvCache::Create(c, *engine_backend->backend);
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  c.num_blocks = 4;
  c.dtype = DataType::kI32;
  cache = KvCache::Create(c, *engine_backend->backend);
  EXPECT_THAT(cache.status().message(), HasSubstr("f32, f16 or bf16"));
  c.dtype = DataType::kBF16;
  cache = KvCache::Create(c, *engine_backend->backend);
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ((*cache)->key(1).shape(), (Shape{4, 2, 16, 8}));
  EXPECT_EQ(c.BytesPerBlock(), 2u * 2 * 2 * 16 * 8 * 2);
}

}  // namespace
}  // namespace tessera::worker
