// DeviceSampler: SamplingRow fields reach the kernels (penalties on a copy, bans, min-p, top-N
// logprobs of the raw logits), checked against a host reference of vLLM's semantics.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "common/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/local_executor.h"

namespace tessera::worker {
namespace {

constexpr int64_t kVocab = 50;

class DeviceSamplerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = kernels::CreateCpuBackend({});
    ASSERT_TRUE(backend.ok());
    backend_ = *std::move(backend);
    auto stream = backend_->CreateStream();
    ASSERT_TRUE(stream.ok());
    stream_ = *std::move(stream);
    auto sampler = DeviceSampler::Create(*backend_, /*max_rows=*/8);
    ASSERT_TRUE(sampler.ok());
    sampler_ = *std::move(sampler);
  }

  absl::StatusOr<StepResult> Sample(const std::vector<float>& logits,
                                    const std::vector<SamplingRow>& rows) {
    auto buffer = backend_->Allocate(logits.size() * 4);
    if (!buffer.ok()) return buffer.status();
    buffers_.push_back(*std::move(buffer));
    TESSERA_CHECK_OK(
        backend_->CopyToDevice(logits.data(), buffers_.back().data(), logits.size() * 4, *stream_));
    const TensorView view =
        buffers_.back().View(DataType::kF32, {static_cast<int64_t>(rows.size()), kVocab});
    return sampler_->Sample(view, rows, *stream_);
  }

  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<Stream> stream_;
  std::unique_ptr<DeviceSampler> sampler_;
  std::vector<kernels::DeviceBuffer> buffers_;
};

// vLLM's penalties on one row (dense), then bans.
std::vector<float> Penalised(std::vector<float> row, const std::vector<int32_t>& prompt,
                             const std::vector<int32_t>& output, const SamplingRow& r,
                             const std::vector<int32_t>& banned) {
  std::vector<int32_t> counts(kVocab, 0);
  std::vector<bool> seen(kVocab, false);
  for (int32_t t : prompt) seen[t] = true;
  for (int32_t t : output) ++counts[t];
  for (int64_t i = 0; i < kVocab; ++i) {
    const float penalty = seen[i] || counts[i] > 0 ? r.repetition_penalty : 1.0f;
    row[i] *= row[i] > 0 ? 1.0f / penalty : penalty;
    row[i] -= r.frequency_penalty * static_cast<float>(counts[i]);
    row[i] -= r.presence_penalty * static_cast<float>(counts[i] > 0);
  }
  for (int32_t t : banned) row[t] = -INFINITY;
  return row;
}

double LogSoftmax(const std::vector<float>& row, int32_t i) {
  const double max = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float x : row) sum += std::exp(x - max);
  return row[i] - max - std::log(sum);
}

TEST_F(DeviceSamplerTest, PenaltiesBansAndTopLogprobsMatchReference) {
  SCOPED_TRACE("seed 31");
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> unit(-4.0f, 4.0f);
  const int rows = 6;
  std::vector<float> logits(rows * kVocab);
  for (float& x : logits) x = unit(rng);
  std::vector<SamplingRow> settings(rows);
  std::vector<std::vector<int32_t>> prompts(rows), outputs(rows);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < 8; ++i) prompts[r].push_back(static_cast<int32_t>(rng() % kVocab));
    for (int i = 0; i < 12; ++i) outputs[r].push_back(static_cast<int32_t>(rng() % 10));
    SamplingRow& s = settings[r];
    s.repetition_penalty = r == 0 ? 1.0f : 1.3f + 0.2f * r;
    s.presence_penalty = r % 2 == 0 ? 0.0f : 0.8f;
    s.frequency_penalty = r % 3 == 0 ? 0.0f : 0.4f;
    s.num_top_logprobs = r % 3 == 2 ? 0 : 4;
    if (r == 4) s.banned_token_ids = {static_cast<int32_t>(rng() % kVocab), 1};
    std::map<int32_t, int32_t> distinct;
    for (int32_t t : prompts[r]) distinct.emplace(t, 0);
    for (int32_t t : outputs[r]) ++distinct[t];
    for (auto [t, c] : distinct) {
      s.penalty_token_ids.push_back(t);
      s.penalty_output_counts.push_back(c);
    }
  }
  auto result = Sample(logits, settings);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->top_n, 4);
  for (int r = 0; r < rows; ++r) {
    SCOPED_TRACE(::testing::Message() << "row " << r);
    const std::vector<float> raw(logits.begin() + r * kVocab, logits.begin() + (r + 1) * kVocab);
    const std::vector<float> want =
        Penalised(raw, prompts[r], outputs[r], settings[r], settings[r].banned_token_ids);
    const int32_t greedy =
        static_cast<int32_t>(std::max_element(want.begin(), want.end()) - want.begin());
    EXPECT_EQ(result->token_ids[r], greedy);
    // Logprobs are of the raw logits (vLLM's raw_logprobs), not the penalised ones.
    EXPECT_NEAR(result->logprobs[r], LogSoftmax(raw, greedy), 1e-5);
    std::vector<int32_t> order(kVocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return raw[a] > raw[b]; });
    for (int j = 0; j < 4; ++j) {
      EXPECT_EQ(result->top_token_ids[r * 4 + j], order[j]);
      EXPECT_NEAR(result->top_logprobs[r * 4 + j], LogSoftmax(raw, order[j]), 1e-5);
    }
  }
  // The logits given were not modified (penalties work on a copy).
  std::vector<float> after(logits.size());
  ASSERT_TRUE(
      backend_->CopyToHost(buffers_.back().data(), after.data(), after.size() * 4, *stream_).ok());
  EXPECT_EQ(after, logits);
}

TEST_F(DeviceSamplerTest, MinPRowsAndPlainRowsShareAStep) {
  // Row 0: min-p 0.5 at T = 1 keeps only tokens within a factor 2 of the best; row 1 samples the
  // same logits without it.
  std::vector<float> row(kVocab, 0.0f);
  row[7] = 3.0f;
  row[8] = 3.0f - std::log(1.5f);  // p / p_max = 2/3: kept
  row[9] = 3.0f - std::log(3.0f);  // 1/3: dropped
  std::set<int32_t> with_min_p, without;
  for (int64_t step = 0; step < 200; ++step) {
    SamplingRow a;
    a.temperature = 1.0f;
    a.min_p = 0.5f;
    a.seed = 5;
    a.step = step;
    SamplingRow b = a;
    b.min_p = 0.0f;
    std::vector<float> logits = row;
    logits.insert(logits.end(), row.begin(), row.end());
    auto result = Sample(logits, {a, b});
    ASSERT_TRUE(result.ok()) << result.status();
    with_min_p.insert(result->token_ids[0]);
    without.insert(result->token_ids[1]);
    buffers_.clear();
  }
  EXPECT_EQ(with_min_p, (std::set<int32_t>{7, 8}));
  EXPECT_GT(without.size(), 3u);
}

TEST_F(DeviceSamplerTest, RejectsMismatchedPenaltyLists) {
  SamplingRow r;
  r.repetition_penalty = 1.2f;
  r.penalty_token_ids = {1, 2};
  r.penalty_output_counts = {1};
  EXPECT_EQ(Sample(std::vector<float>(kVocab, 0.0f), {r}).status().code(),
            absl::StatusCode::kInvalidArgument);
  r.penalty_output_counts = {1, 0};
  r.penalty_token_ids = {1, 99};
  EXPECT_EQ(Sample(std::vector<float>(kVocab, 0.0f), {r}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera::worker
