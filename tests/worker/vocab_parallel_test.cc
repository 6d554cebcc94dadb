// VocabParallelSampler: TP ranks that each hold their vocabulary columns draw exactly the tokens,
// logprobs and top-N a DeviceSampler draws from the gathered logits — greedy rows and sampled rows
// with a top_k, with penalties and bans that fall in other ranks' columns, ties across shards, a
// padded last shard and a rank that holds no vocabulary — while exchanging a few numbers a row
// instead of the logits.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#include "parallel/comm/timed_communicator.h"
#include "worker/local_executor.h"
#include "worker/vocab_parallel.h"

namespace tessera::worker {
namespace {

struct Case {
  int tp;
  int64_t vocab;
};

void PrintTo(const Case& c, std::ostream* os) { *os << "tp" << c.tp << " vocab " << c.vocab; }

std::string Name(const ::testing::TestParamInfo<Case>& info) {
  return absl::StrCat("tp", info.param.tp, "_vocab", info.param.vocab);
}

class VocabParallelSamplerTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    auto backend = kernels::CreateCpuBackend({});
    ASSERT_TRUE(backend.ok());
    backend_ = *std::move(backend);
  }

  // The gathered sampler's answer on the whole logits.
  StepResult Reference(const std::vector<float>& logits, const std::vector<SamplingRow>& rows) {
    auto stream = backend_->CreateStream();
    TESSERA_CHECK_OK(stream.status());
    auto sampler = DeviceSampler::Create(*backend_, 16);
    TESSERA_CHECK_OK(sampler.status());
    const auto n = static_cast<int64_t>(rows.size());
    auto result = (*sampler)->Sample(
        TensorView(logits.data(), DataType::kF32, {n, GetParam().vocab}), rows, **stream);
    TESSERA_CHECK_OK(result.status());
    return *std::move(result);
  }

  // Every rank samples its columns [rank * shard, ...) of `logits` (stored with the shard's row
  // stride and garbage in the padding, as the LM head leaves them); returns each rank's result
  // and the bytes the TP group sent.
  std::vector<absl::StatusOr<StepResult>> Sharded(const std::vector<float>& logits,
                                                  const std::vector<SamplingRow>& rows,
                                                  int64_t* bytes_sent = nullptr) {
    const int tp = GetParam().tp;
    const int64_t vocab = GetParam().vocab;
    const int64_t shard = (vocab + tp - 1) / tp;
    const auto n = static_cast<int64_t>(rows.size());
    auto group = parallel::CreateInProcessGroup(tp, absl::Seconds(20));
    TESSERA_CHECK_OK(group.status());
    parallel::CommStats stats;
    std::vector<absl::StatusOr<StepResult>> results(tp, absl::UnknownError("not run"));
    std::vector<std::thread> threads;
    for (int rank = 0; rank < tp; ++rank) {
      threads.emplace_back([&, rank] {
        parallel::TimedCommunicator comm(*(*group)[rank], stats);
        auto stream = backend_->CreateStream();
        TESSERA_CHECK_OK(stream.status());
        auto sampler = VocabParallelSampler::Create(*backend_, 16);
        TESSERA_CHECK_OK(sampler.status());
        const int64_t begin = rank * shard;
        const int64_t columns = std::clamp<int64_t>(vocab - begin, 0, shard);
        std::vector<float> mine(static_cast<size_t>(n * shard), 1e30f);  // padding: never chosen
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t c = 0; c < columns; ++c) mine[r * shard + c] = logits[r * vocab + begin + c];
        }
        const TensorView view(mine.data(), DataType::kF32, {n, columns}, {shard, 1}, Device::Cpu());
        results[rank] = (*sampler)->Sample(view, begin, vocab, rows, comm, **stream);
      });
    }
    for (std::thread& t : threads) t.join();
    if (bytes_sent != nullptr) *bytes_sent = stats.bytes.load();
    return results;
  }

  void ExpectSame(const StepResult& want, const StepResult& got, const std::string& what) {
    SCOPED_TRACE(what);
    EXPECT_EQ(got.token_ids, want.token_ids);
    ASSERT_EQ(got.logprobs.size(), want.logprobs.size());
    for (size_t i = 0; i < want.logprobs.size(); ++i) {
      EXPECT_NEAR(got.logprobs[i], want.logprobs[i], 1e-5) << "row " << i;
    }
    ASSERT_EQ(got.top_n, want.top_n);
    EXPECT_EQ(got.top_token_ids, want.top_token_ids);
    ASSERT_EQ(got.top_logprobs.size(), want.top_logprobs.size());
    for (size_t i = 0; i < want.top_logprobs.size(); ++i) {
      EXPECT_NEAR(got.top_logprobs[i], want.top_logprobs[i], 1e-5) << "entry " << i;
    }
  }

  std::unique_ptr<kernels::Backend> backend_;
};

std::vector<float> RandomLogits(int64_t rows, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  for (float& x : logits) x = dist(rng);
  return logits;
}

TEST_P(VocabParallelSamplerTest, MatchesTheGatheredSampler) {
  const int64_t vocab = GetParam().vocab;
  const int64_t n = 6;
  std::vector<float> logits = RandomLogits(n, vocab, 7);
  std::vector<SamplingRow> rows(n);
  // Row 1: top logprobs (as many as the vocabulary allows, up to 5).
  rows[1].num_top_logprobs = static_cast<int32_t>(std::min<int64_t>(5, vocab));
  // Row 2: penalties on tokens spread over every shard, the row's best token among them.
  int64_t best = 0;
  for (int64_t c = 1; c < vocab; ++c)
    best = logits[2 * vocab + c] > logits[2 * vocab + best] ? c : best;
  rows[2].repetition_penalty = 1.7f;
  rows[2].presence_penalty = 0.5f;
  rows[2].frequency_penalty = 0.25f;
  for (int64_t c = 0; c < vocab; c += 3) {
    rows[2].penalty_token_ids.push_back(static_cast<int32_t>(c));
    rows[2].penalty_output_counts.push_back(static_cast<int32_t>(c % 4));
  }
  if (best % 3 != 0) {
    rows[2].penalty_token_ids.push_back(static_cast<int32_t>(best));
    rows[2].penalty_output_counts.push_back(2);
  }
  // Row 3: the best and the last token banned (min_tokens), and top logprobs.
  int64_t best3 = 0;
  for (int64_t c = 1; c < vocab; ++c)
    best3 = logits[3 * vocab + c] > logits[3 * vocab + best3] ? c : best3;
  rows[3].banned_token_ids = {static_cast<int32_t>(best3), static_cast<int32_t>(vocab - 1)};
  rows[3].num_top_logprobs = 2;
  // Row 4: the largest logit in the last column (the padded shard's).
  logits[4 * vocab + vocab - 1] = 50.0f;
  // Row 5: equal maxima in the first and the last column (different shards): the lowest id wins.
  logits[5 * vocab] = 40.0f;
  logits[5 * vocab + vocab - 1] = 40.0f;

  const StepResult want = Reference(logits, rows);
  ASSERT_EQ(want.token_ids[4], vocab - 1);
  ASSERT_EQ(want.token_ids[5], 0);
  auto got = Sharded(logits, rows);
  for (int rank = 0; rank < GetParam().tp; ++rank) {
    ASSERT_TRUE(got[rank].ok()) << got[rank].status();
    ExpectSame(want, *got[rank], absl::StrCat("rank ", rank));
  }
}

// Logit bias and an allowed-token mask (structured outputs) reach each rank as its own columns.
TEST_P(VocabParallelSamplerTest, BiasAndAllowedMaskFollowTheColumns) {
  const int64_t vocab = GetParam().vocab;
  const int64_t n = 3;
  std::vector<float> logits = RandomLogits(n, vocab, 9);
  std::vector<SamplingRow> rows(n);
  // Row 0: the last token pushed to the top by a bias, the first pushed down.
  rows[0].bias_token_ids = {static_cast<int32_t>(vocab - 1), 0};
  rows[0].bias_values = {100.0f, -100.0f};
  rows[0].num_top_logprobs = 2;
  // Row 1: only every seventh token allowed; row 2: only the last one.
  const int64_t words = (vocab + 31) / 32;
  rows[1].allowed_mask.assign(words, 0u);
  rows[2].allowed_mask.assign(words, 0u);
  for (int64_t t = 0; t < vocab; t += 7) rows[1].allowed_mask[t / 32] |= 1u << (t % 32);
  rows[2].allowed_mask[(vocab - 1) / 32] |= 1u << ((vocab - 1) % 32);
  const StepResult want = Reference(logits, rows);
  ASSERT_EQ(want.token_ids[0], vocab - 1);
  ASSERT_EQ(want.token_ids[1] % 7, 0);
  ASSERT_EQ(want.token_ids[2], vocab - 1);
  auto got = Sharded(logits, rows);
  for (int rank = 0; rank < GetParam().tp; ++rank) {
    ASSERT_TRUE(got[rank].ok()) << got[rank].status();
    ExpectSame(want, *got[rank], absl::StrCat("rank ", rank));
  }
}

TEST_P(VocabParallelSamplerTest, ExchangesRecordsNotLogits) {
  const int64_t vocab = GetParam().vocab;
  const int64_t n = 4;
  const std::vector<float> logits = RandomLogits(n, vocab, 11);
  std::vector<SamplingRow> rows(n);
  int64_t bytes = 0;
  auto got = Sharded(logits, rows, &bytes);
  ASSERT_TRUE(got[0].ok()) << got[0].status();
  EXPECT_EQ(got[0]->token_ids, Reference(logits, rows).token_ids);
  // Each rank sends 4 words a row (no top logprobs), whatever the vocabulary.
  EXPECT_EQ(bytes, GetParam().tp * n * 4 * 4);
}

TEST_P(VocabParallelSamplerTest, RefusesWhatTheGatheredSamplerRefuses) {
  const int64_t vocab = GetParam().vocab;
  const std::vector<float> logits = RandomLogits(1, vocab, 3);
  std::vector<SamplingRow> rows(1);
  rows[0].repetition_penalty = 1.5f;
  rows[0].penalty_token_ids = {static_cast<int32_t>(vocab)};  // outside the vocabulary
  rows[0].penalty_output_counts = {1};
  for (auto& result : Sharded(logits, rows)) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    EXPECT_NE(std::string(result.status().message()).find("outside the vocabulary"),
              std::string::npos)
        << result.status();
  }
  rows[0] = SamplingRow{};
  rows[0].num_top_logprobs = static_cast<int32_t>(vocab + 1);
  for (auto& result : Sharded(logits, rows)) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  }
}

// Sampled rows with a top_k draw from the union of the shards' top_k: the gathered sampler's
// tokens, over many seeds and every combination of temperature, top-k, top-p, min-p, penalties
// and bans (a top_k past the vocabulary included).
TEST_P(VocabParallelSamplerTest, SampledRowsWithATopKDrawTheGatheredSamplersTokens) {
  const int64_t vocab = GetParam().vocab;
  const int64_t n = 8;
  const float temperatures[] = {0.5f, 1.0f, 1.7f};
  const int32_t top_ks[] = {1, 3, 10, 64};
  const float top_ps[] = {1.0f, 0.9f, 0.5f};
  int draws = 0;
  for (uint64_t seed = 0; seed < 12; ++seed) {
    std::vector<float> logits = RandomLogits(n, vocab, 100 + seed);
    std::vector<SamplingRow> rows(n);
    for (int64_t r = 0; r < n; ++r) {
      SamplingRow& row = rows[r];
      if (r == 0) continue;  // a greedy row in the same step
      row.temperature = temperatures[(seed + r) % 3];
      row.top_k = top_ks[(seed * 3 + r) % 4];
      row.top_p = top_ps[(seed + 2 * r) % 3];
      row.min_p = r % 3 == 0 ? 0.2f : 0.0f;
      row.seed = static_cast<int64_t>(seed * 1000 + r);
      row.step = static_cast<int64_t>(seed + r);
      if (r % 4 == 1) {
        row.repetition_penalty = 1.3f;
        row.frequency_penalty = 0.4f;
        for (int64_t c = 0; c < vocab; c += 2) {
          row.penalty_token_ids.push_back(static_cast<int32_t>(c));
          row.penalty_output_counts.push_back(static_cast<int32_t>(c % 3));
        }
      }
      if (r % 4 == 2) row.banned_token_ids = {0, static_cast<int32_t>(vocab - 1)};
      if (r == 5) row.num_top_logprobs = static_cast<int32_t>(std::min<int64_t>(3, vocab));
      ++draws;
    }
    ASSERT_TRUE(CanSampleVocabParallel(rows));
    const StepResult want = Reference(logits, rows);
    auto got = Sharded(logits, rows);
    for (int rank = 0; rank < GetParam().tp; ++rank) {
      ASSERT_TRUE(got[rank].ok()) << got[rank].status();
      ExpectSame(want, *got[rank], absl::StrCat("seed ", seed, " rank ", rank));
    }
  }
  EXPECT_EQ(draws, 12 * 7);
}

TEST_P(VocabParallelSamplerTest, ASampledRowAddsItsCandidatesToTheExchange) {
  const int64_t vocab = GetParam().vocab;
  const int64_t n = 4;
  const std::vector<float> logits = RandomLogits(n, vocab, 13);
  std::vector<SamplingRow> rows(n);
  rows[2].temperature = 0.8f;
  rows[2].top_k = 5;
  rows[2].seed = 3;
  int64_t bytes = 0;
  auto got = Sharded(logits, rows, &bytes);
  ASSERT_TRUE(got[0].ok()) << got[0].status();
  EXPECT_EQ(got[0]->token_ids, Reference(logits, rows).token_ids);
  // 4 words a row, and 3 per candidate (id, value, raw) for the step's largest top_k.
  EXPECT_EQ(bytes, GetParam().tp * n * (4 + 3 * 5) * 4);
}

TEST(VocabParallelSamplerRowsTest, GreedyAndTopKRowsAreSampledShardByShard) {
  std::vector<SamplingRow> rows(2);
  EXPECT_TRUE(CanSampleVocabParallel(rows));
  rows[1].temperature = 0.7f;  // no top_k: the whole distribution matters
  EXPECT_FALSE(CanSampleVocabParallel(rows));
  rows[1].top_k = 50;
  EXPECT_TRUE(CanSampleVocabParallel(rows));
  rows[1].top_k = kMaxVocabParallelTopK + 1;
  EXPECT_FALSE(CanSampleVocabParallel(rows));
}

INSTANTIATE_TEST_SUITE_P(Splits, VocabParallelSamplerTest,
                         ::testing::Values(Case{2, 50}, Case{3, 50}, Case{4, 50},
                                           Case{4, 5}),  // shards 2, 2, 1 and 0 columns
                         Name);

}  // namespace
}  // namespace tessera::worker
