// The Llama-family forward against Hugging Face transformers: logits of every position of a batch
// of prompts of different lengths, and 16 greedy tokens, from the committed fixtures
// (tests/reference/make_fixtures.py). Tolerance: |ours - theirs| <= 1e-4 * max(1, max |logit| of
// the row), i.e. 1e-4 relative to the row's scale (both compute in f32).
#include "worker/llama_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "tests/kernels/test_backends.h"
#include "tests/worker/test_util.h"

namespace tessera::worker {
namespace {

using testing::Fixture;
using testing::LoadFixture;
using testing::MakeTestEngine;
using testing::ReferencePrompt;
using testing::TestEngine;

constexpr float kRelativeTolerance = 1e-4f;

// Compares `rows` logit rows of `ours` (contiguous [rows, vocab]) to the reference rows starting
// at `first_row` of `prompt`.
void ExpectLogitsMatch(const float* ours, int64_t rows, const ReferencePrompt& prompt,
                       int64_t first_row, int64_t vocab, const std::string& what,
                       float tolerance = kRelativeTolerance) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* theirs = prompt.logits.data() + (first_row + r) * vocab;
    float scale = 1.0f;
    for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::fabs(theirs[v]));
    float worst = 0;
    int64_t worst_v = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const float diff = std::fabs(ours[r * vocab + v] - theirs[v]);
      if (diff > worst) {
        worst = diff;
        worst_v = v;
      }
    }
    ASSERT_LE(worst, tolerance * scale)
        << what << ": position " << first_row + r << ", vocab " << worst_v << ": ours "
        << ours[r * vocab + worst_v] << " vs transformers " << theirs[worst_v];
  }
}

// (fixture, backend): every fixture on every backend; "cuda" skips where there is no GPU.
using FixtureOnBackend = std::tuple<std::string, std::string>;

class LlamaModelFixtureTest : public ::testing::TestWithParam<FixtureOnBackend> {
 protected:
  void SetUp() override {
    auto backend = kernels::testing::MakeBackend(Backend());
    if (absl::IsUnavailable(backend.status())) GTEST_SKIP() << backend.status();
    ASSERT_TRUE(backend.ok()) << backend.status();
    auto fixture = LoadFixture(Name());
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    fixture_ = std::move(*fixture);
  }
  const std::string& Name() const { return std::get<0>(GetParam()); }
  const std::string& Backend() const { return std::get<1>(GetParam()); }
  absl::StatusOr<TestEngine> Engine() {
    testing::TestEngineOptions options;
    options.backend = Backend();
    return MakeTestEngine(fixture_.config, *fixture_.weights, options);
  }
  // `logits` ([rows, vocab] f32 on the engine's device) on the host.
  static std::vector<float> ToHost(TestEngine& engine, const TensorView& logits, Stream& stream) {
    std::vector<float> host(static_cast<size_t>(logits.numel()));
    TESSERA_CHECK_OK(
        engine.backend->CopyToHost(logits.data(), host.data(), host.size() * 4, stream));
    TESSERA_CHECK_OK(stream.Synchronize());
    return host;
  }
  Fixture fixture_;
};

// All prompts in one step (a batch of prefills of different lengths); logits of every position.
TEST_P(LlamaModelFixtureTest, BatchedPrefillLogitsMatchTransformers) {
  auto engine = Engine();
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int32_t bs = engine->cache->config().block_size;
  const int32_t width = engine->model->options().max_blocks_per_seq;
  std::vector<int32_t> ids, positions, query_start{0}, seq_lens, tables, rows;
  std::vector<int64_t> slots;
  int32_t next_block = 0;
  // Blocks handed out in reverse so that block ids are not simply position / block_size.
  for (const ReferencePrompt& p : fixture_.prompts) {
    const int32_t n = static_cast<int32_t>(p.ids.size());
    const int32_t blocks = (n + bs - 1) / bs;
    std::vector<int32_t> table(width, 0);
    for (int32_t j = 0; j < blocks; ++j) table[j] = next_block + blocks - 1 - j;
    next_block += blocks;
    for (int32_t pos = 0; pos < n; ++pos) {
      rows.push_back(static_cast<int32_t>(ids.size()));
      ids.push_back(p.ids[pos]);
      positions.push_back(pos);
      slots.push_back(static_cast<int64_t>(table[pos / bs]) * bs + pos % bs);
    }
    query_start.push_back(static_cast<int32_t>(ids.size()));
    seq_lens.push_back(n);
    tables.insert(tables.end(), table.begin(), table.end());
  }
  auto stream = engine->backend->CreateStream();
  ASSERT_TRUE(stream.ok());
  auto logits = engine->model->Forward({ids, positions, slots, query_start, seq_lens, tables, rows},
                                       *engine->cache, **stream);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_TRUE((*stream)->Synchronize().ok());
  const int64_t vocab = fixture_.config.vocab_size;
  ASSERT_EQ(logits->dim(0), static_cast<int64_t>(ids.size()));
  ASSERT_EQ(logits->dim(1), vocab);
  const std::vector<float> host = ToHost(*engine, *logits, **stream);
  for (size_t i = 0; i < fixture_.prompts.size(); ++i) {
    const int64_t start = query_start[i];
    ExpectLogitsMatch(host.data() + start * vocab,
                      static_cast<int64_t>(fixture_.prompts[i].ids.size()), fixture_.prompts[i], 0,
                      vocab, absl::StrCat(Name(), " prompt ", i));
  }
}

// The longest prompt fed in chunks of 6 over several steps: each chunk attends to the cached K/V
// of the earlier ones.
TEST_P(LlamaModelFixtureTest, ChunkedPrefillLogitsMatchTransformers) {
  auto engine = Engine();
  ASSERT_TRUE(engine.ok()) << engine.status();
  const ReferencePrompt& p =
      *std::max_element(fixture_.prompts.begin(), fixture_.prompts.end(),
                        [](const auto& a, const auto& b) { return a.ids.size() < b.ids.size(); });
  const int32_t bs = engine->cache->config().block_size;
  const int32_t width = engine->model->options().max_blocks_per_seq;
  std::vector<int32_t> table(width);
  for (int32_t j = 0; j < width; ++j) table[j] = 3 * j + 1;  // scattered blocks
  auto stream = engine->backend->CreateStream();
  ASSERT_TRUE(stream.ok());
  const int32_t n = static_cast<int32_t>(p.ids.size());
  const int64_t vocab = fixture_.config.vocab_size;
  constexpr int32_t kChunk = 6;
  for (int32_t begin = 0; begin < n; begin += kChunk) {
    const int32_t end = std::min(n, begin + kChunk);
    std::vector<int32_t> ids, positions, rows;
    std::vector<int64_t> slots;
    for (int32_t pos = begin; pos < end; ++pos) {
      rows.push_back(pos - begin);
      ids.push_back(p.ids[pos]);
      positions.push_back(pos);
      slots.push_back(static_cast<int64_t>(table[pos / bs]) * bs + pos % bs);
    }
    const std::vector<int32_t> query_start = {0, end - begin};
    const std::vector<int32_t> seq_lens = {end};
    auto logits = engine->model->Forward(
        {ids, positions, slots, query_start, seq_lens, table, rows}, *engine->cache, **stream);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ExpectLogitsMatch(ToHost(*engine, *logits, **stream).data(), end - begin, p, begin, vocab,
                      absl::StrCat(Name(), " chunk at ", begin));
  }
}

// Greedy generation for all prompts at once through the Engine (prefill, then batched decode
// steps) equals transformers' 16 greedy tokens.
TEST_P(LlamaModelFixtureTest, GreedyTokensMatchTransformers) {
  auto engine = Engine();
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::vector<int32_t>> prompts;
  for (const ReferencePrompt& p : fixture_.prompts) prompts.push_back(p.ids);
  SchedulerConfig scheduler;
  scheduler.max_model_len = 128;
  scheduler.max_num_seqs = 16;
  scheduler.max_num_batched_tokens = 64;
  auto outputs =
      testing::GenerateGreedy(*engine->executor, fixture_.config, prompts,
                              static_cast<int32_t>(fixture_.prompts[0].greedy.size()), scheduler);
  ASSERT_TRUE(outputs.ok()) << outputs.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ((*outputs)[i].token_ids, fixture_.prompts[i].greedy) << Name() << " prompt " << i;
  }
}

// The model in bf16 on a GPU (LlamaModelOptions::activation_dtype, what the engine runs a bf16
// checkpoint in there): the residual stream, projections and attention in bf16, logits f32.
// Every position's logits of a batch of all prompts within bf16 tolerance of transformers' f32
// ones: 5% of the row's scale (bf16 keeps 8 bits; a few layers of roundings add up). The CPU
// backend computes in f32 only, and refuses.
TEST_P(LlamaModelFixtureTest, Bf16ActivationLogitsWithinBf16Tolerance) {
  testing::TestEngineOptions options;
  options.backend = Backend();
  options.activation_dtype = DataType::kBF16;
  options.kv_dtype = DataType::kBF16;
  auto engine = MakeTestEngine(fixture_.config, *fixture_.weights, options);
  if (Backend() == "cpu") {
    ASSERT_FALSE(engine.ok());
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(engine.status().message(), ::testing::HasSubstr("activations in f32 only"));
    return;
  }
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int32_t bs = engine->cache->config().block_size;
  const int32_t width = engine->model->options().max_blocks_per_seq;
  std::vector<int32_t> ids, positions, query_start{0}, seq_lens, tables, rows;
  std::vector<int64_t> slots;
  for (size_t i = 0; i < fixture_.prompts.size(); ++i) {
    const ReferencePrompt& p = fixture_.prompts[i];
    const auto n = static_cast<int32_t>(p.ids.size());
    for (int32_t pos = 0; pos < n; ++pos) {
      rows.push_back(static_cast<int32_t>(ids.size()));
      ids.push_back(p.ids[pos]);
      positions.push_back(pos);
      slots.push_back((static_cast<int64_t>(i) * width + pos / bs) * bs + pos % bs);
    }
    query_start.push_back(static_cast<int32_t>(ids.size()));
    seq_lens.push_back(n);
    for (int32_t j = 0; j < width; ++j) tables.push_back(static_cast<int32_t>(i) * width + j);
  }
  auto stream = engine->backend->CreateStream();
  ASSERT_TRUE(stream.ok());
  auto logits = engine->model->Forward({ids, positions, slots, query_start, seq_lens, tables, rows},
                                       *engine->cache, **stream);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_EQ(logits->dtype(), DataType::kF32);
  const int64_t vocab = fixture_.config.vocab_size;
  const std::vector<float> host = ToHost(*engine, *logits, **stream);
  for (size_t i = 0; i < fixture_.prompts.size(); ++i) {
    ExpectLogitsMatch(host.data() + static_cast<int64_t>(query_start[i]) * vocab,
                      static_cast<int64_t>(fixture_.prompts[i].ids.size()), fixture_.prompts[i], 0,
                      vocab, absl::StrCat(Name(), " prompt ", i, " in bf16"), 0.05f);
  }
}

// Decode steps recorded as graphs and replayed (LlamaModelOptions::graph_batch_sizes; on the CPU
// the backend's emulation, which replays by running the recorded body again): each prompt's first
// half is prefilled eagerly, then its other tokens go one a step, the prompts together, so that
// the batch shrinks from 4 (a graph of 4) through 3 (padded to 4) to 2 and 1 as the shorter
// prompts end. Every row's logits match transformers', padded steps included.
TEST_P(LlamaModelFixtureTest, DecodeGraphLogitsMatchTransformers) {
  testing::TestEngineOptions options;
  options.backend = Backend() == "cpu" ? "cpu_graphs" : Backend();
  options.graph_batch_sizes = {4, 1, 2};
  auto engine = MakeTestEngine(fixture_.config, *fixture_.weights, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_EQ(engine->model->graph_batch_sizes(), (std::vector<int32_t>{1, 2, 4}));
  ASSERT_EQ(fixture_.prompts.size(), 4u);
  const int32_t bs = engine->cache->config().block_size;
  const int32_t width = engine->model->options().max_blocks_per_seq;
  // The longest prompt owns block 0, where padded rows look: its logits show a padded row that
  // wrote there.
  std::vector<int32_t> base(fixture_.prompts.size());
  for (size_t i = 0; i < base.size(); ++i) {
    for (size_t j = 0; j < base.size(); ++j) {
      const size_t a = fixture_.prompts[i].ids.size(), b = fixture_.prompts[j].ids.size();
      if (b > a || (b == a && j < i)) base[i] += width;
    }
  }
  auto slot = [&](size_t prompt, int32_t pos) {
    return (static_cast<int64_t>(base[prompt]) + pos / bs) * bs + pos % bs;
  };
  auto table = [&](size_t prompt) {
    std::vector<int32_t> t(static_cast<size_t>(width));
    for (int32_t j = 0; j < width; ++j) t[j] = base[prompt] + j;
    return t;
  };
  auto stream = engine->backend->CreateStream();
  ASSERT_TRUE(stream.ok());
  const int64_t vocab = fixture_.config.vocab_size;
  std::vector<int32_t> half(fixture_.prompts.size());
  {
    std::vector<int32_t> ids, positions, query_start{0}, seq_lens, tables, rows;
    std::vector<int64_t> slots;
    for (size_t i = 0; i < fixture_.prompts.size(); ++i) {
      const ReferencePrompt& p = fixture_.prompts[i];
      half[i] = std::max<int32_t>(1, static_cast<int32_t>(p.ids.size()) / 2);
      for (int32_t pos = 0; pos < half[i]; ++pos) {
        ids.push_back(p.ids[pos]);
        positions.push_back(pos);
        slots.push_back(slot(i, pos));
      }
      rows.push_back(static_cast<int32_t>(ids.size()) - 1);
      query_start.push_back(static_cast<int32_t>(ids.size()));
      seq_lens.push_back(half[i]);
      const std::vector<int32_t> t = table(i);
      tables.insert(tables.end(), t.begin(), t.end());
    }
    auto logits = engine->model->Forward(
        {ids, positions, slots, query_start, seq_lens, tables, rows}, *engine->cache, **stream);
    ASSERT_TRUE(logits.ok()) << logits.status();
  }
  std::set<int64_t> batches;
  for (int32_t step = 0;; ++step) {
    std::vector<int32_t> ids, positions, query_start{0}, seq_lens, tables, rows;
    std::vector<int64_t> slots;
    std::vector<std::pair<size_t, int32_t>> decoded;  // (prompt, position)
    for (size_t i = 0; i < fixture_.prompts.size(); ++i) {
      const int32_t pos = half[i] + step;
      if (pos >= static_cast<int32_t>(fixture_.prompts[i].ids.size())) continue;
      rows.push_back(static_cast<int32_t>(ids.size()));
      ids.push_back(fixture_.prompts[i].ids[pos]);
      positions.push_back(pos);
      slots.push_back(slot(i, pos));
      query_start.push_back(static_cast<int32_t>(ids.size()));
      seq_lens.push_back(pos + 1);
      const std::vector<int32_t> t = table(i);
      tables.insert(tables.end(), t.begin(), t.end());
      decoded.emplace_back(i, pos);
    }
    if (decoded.empty()) break;
    batches.insert(static_cast<int64_t>(decoded.size()));
    auto logits = engine->model->Forward(
        {ids, positions, slots, query_start, seq_lens, tables, rows}, *engine->cache, **stream);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->dim(0), static_cast<int64_t>(decoded.size()));
    const std::vector<float> host = ToHost(*engine, *logits, **stream);
    for (size_t r = 0; r < decoded.size(); ++r) {
      const auto [prompt, pos] = decoded[r];
      ExpectLogitsMatch(host.data() + static_cast<int64_t>(r) * vocab, 1, fixture_.prompts[prompt],
                        pos, vocab,
                        absl::StrCat(Name(), " step ", step, " (batch ", decoded.size(), ")"));
    }
  }
  const GraphStats& stats = engine->model->graph_stats();
  EXPECT_EQ(stats.failed, 0);
  // One recording per size the steps ran at; every other decode step replayed one.
  std::set<int32_t> sizes;
  for (const int64_t b : batches) sizes.insert(b <= 1 ? 1 : b <= 2 ? 2 : 4);
  EXPECT_EQ(stats.recorded, static_cast<int64_t>(sizes.size()));
  EXPECT_GT(stats.replayed, 0);
  EXPECT_TRUE(batches.contains(3)) << "no step was padded";
}

INSTANTIATE_TEST_SUITE_P(Transformers, LlamaModelFixtureTest,
                         ::testing::Combine(::testing::Values("llama_gqa", "qwen2_bias", "mistral",
                                                              "qwen3_qknorm"),
                                            ::testing::Values("cpu", "cuda")),
                         [](const ::testing::TestParamInfo<FixtureOnBackend>& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param);
                         });

TEST(LlamaModelTest, RejectsWeightsThatDoNotMatchTheConfig) {
  auto fixture = LoadFixture("llama_gqa");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  model::ModelConfig wrong = fixture->config;
  wrong.intermediate_size *= 2;
  auto engine = MakeTestEngine(wrong, *fixture->weights);
  ASSERT_FALSE(engine.ok());
  EXPECT_THAT(engine.status().message(), ::testing::HasSubstr("mlp.gate_proj.weight"));
}

TEST(LlamaModelTest, ForwardRejectsAnInconsistentBatch) {
  auto fixture = LoadFixture("llama_gqa");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto engine = MakeTestEngine(fixture->config, *fixture->weights);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto stream = engine->backend->CreateStream();
  ASSERT_TRUE(stream.ok());
  const int32_t width = engine->model->options().max_blocks_per_seq;
  std::vector<int32_t> table(width, 0);
  const std::vector<int32_t> ids = {1, 100000}, positions = {0, 1}, query_start = {0, 2},
                             seq_lens = {2}, rows = {1};
  const std::vector<int64_t> slots = {0, 1};
  auto logits = engine->model->Forward({ids, positions, slots, query_start, seq_lens, table, rows},
                                       *engine->cache, **stream);
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(logits.status().message(), ::testing::HasSubstr("token id 100000"));
}

}  // namespace
}  // namespace tessera::worker
