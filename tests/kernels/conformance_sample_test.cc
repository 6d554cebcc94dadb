// Conformance of Sample on every backend. Draws are deterministic functions of (seed, step)
// through SampleUniform, so the statistical checks below use fixed seeds and cannot flake.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "tests/kernels/test_backends.h"

namespace tessera::kernels {
namespace {

using testing::BackendTest;
using testing::RandomFloats;

struct RowSettings {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  int64_t seed = 0;
  int64_t step = 0;
};

// The spec of SampleParams, literally: probabilities as the CPU computes them (f32 exp of
// (logit - max) / T), a full sort, top-k, then top-p over the renormalised top-k mass, then
// inverse CDF with sums in double.
int32_t ReferenceSample(const float* logits, int64_t vocab, const RowSettings& r) {
  if (!(r.temperature > 0)) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  const float max = *std::max_element(logits, logits + vocab);
  std::vector<std::pair<float, int32_t>> sorted;
  for (int64_t i = 0; i < vocab; ++i) {
    sorted.emplace_back(std::exp((logits[i] - max) / r.temperature), static_cast<int32_t>(i));
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  while (!sorted.empty() && sorted.back().first == 0.0f) sorted.pop_back();
  if (r.top_k > 0 && r.top_k < static_cast<int64_t>(sorted.size())) sorted.resize(r.top_k);
  double mass = 0;
  for (const auto& e : sorted) mass += e.first;
  if (r.top_p < 1.0f) {
    double cumulative = 0;
    size_t keep = 0;
    while (keep < sorted.size()) {
      cumulative += sorted[keep++].first;
      if (cumulative >= r.top_p * mass) break;
    }
    sorted.resize(keep);
    mass = 0;
    for (const auto& e : sorted) mass += e.first;
  }
  const double target = SampleUniform(r.seed, r.step) * mass;
  double cumulative = 0;
  for (const auto& e : sorted) {
    cumulative += e.first;
    if (cumulative > target) return e.second;
  }
  return sorted.back().second;
}

class SampleConformance : public BackendTest {
 protected:
  struct Result {
    std::vector<int32_t> ids;
    std::vector<float> logprobs;
  };
  // Samples every row of `logits` ([rows, vocab]) with its settings.
  Result Sample(const std::vector<float>& logits, int64_t vocab,
                const std::vector<RowSettings>& rows, bool logprobs = false) {
    const auto n = static_cast<int64_t>(rows.size());
    std::vector<float> temperature, top_p;
    std::vector<int32_t> top_k;
    std::vector<int64_t> seeds, steps;
    for (const RowSettings& r : rows) {
      temperature.push_back(r.temperature);
      top_k.push_back(r.top_k);
      top_p.push_back(r.top_p);
      seeds.push_back(r.seed);
      steps.push_back(r.step);
    }
    SampleParams params;
    params.logits = Upload(logits, DataType::kF32, {n, vocab});
    params.temperature = Upload(temperature, DataType::kF32, {n});
    params.top_k = UploadI32(top_k, {n});
    params.top_p = Upload(top_p, DataType::kF32, {n});
    params.seeds = UploadI64(seeds, {n});
    params.steps = UploadI64(steps, {n});
    params.output_ids = Uninitialized(DataType::kI32, {n});
    if (logprobs) params.output_logprobs = Uninitialized(DataType::kF32, {n});
    const absl::Status status = kernels::Sample(backend(), params, stream());
    EXPECT_TRUE(status.ok()) << status;
    Result result;
    result.ids = DownloadI32(params.output_ids);
    if (logprobs) result.logprobs = Download(params.output_logprobs);
    return result;
  }

  // The same logits repeated for `draws` rows, steps 0..draws-1.
  std::vector<int32_t> Draws(const std::vector<float>& logits, int64_t draws, RowSettings r) {
    std::vector<float> all;
    std::vector<RowSettings> rows;
    for (int64_t i = 0; i < draws; ++i) {
      all.insert(all.end(), logits.begin(), logits.end());
      r.step = i;
      rows.push_back(r);
    }
    return Sample(all, static_cast<int64_t>(logits.size()), rows).ids;
  }
};

// Filtered, renormalised distribution of the spec, in double.
std::vector<double> Distribution(const std::vector<float>& logits, const RowSettings& r) {
  const auto vocab = static_cast<int64_t>(logits.size());
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  std::vector<double> p(vocab);
  double z = 0;
  for (int64_t i = 0; i < vocab; ++i) z += p[i] = std::exp(logits[i] / r.temperature);
  const int64_t k = r.top_k > 0 ? std::min<int64_t>(r.top_k, vocab) : vocab;
  double kept_mass = 0;
  for (int64_t i = 0; i < k; ++i) kept_mass += p[order[i]];
  std::vector<double> out(vocab, 0.0);
  double cumulative = 0, mass = 0;
  for (int64_t i = 0; i < k; ++i) {
    out[order[i]] = p[order[i]];
    mass += p[order[i]];
    cumulative += p[order[i]] / kept_mass;
    if (cumulative >= r.top_p) break;
  }
  for (double& q : out) q /= mass;
  return out;
}

// Pearson's statistic of `counts` against `expected` probabilities (cells with p = 0 must be
// empty).
double ChiSquare(const std::vector<int32_t>& ids, const std::vector<double>& expected) {
  std::vector<double> counts(expected.size(), 0.0);
  for (int32_t id : ids) counts[id] += 1;
  double chi = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the filtered set";
      continue;
    }
    const double e = expected[i] * static_cast<double>(ids.size());
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

TEST_P(SampleConformance, GreedyTakesLowestIndexOfTiedMaxima) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 3.0f, 1.0f, 3.0f, 3.0f, 0.0f};
  const auto result = Sample(logits, 8, {RowSettings{0.0f}});
  EXPECT_EQ(result.ids, std::vector<int32_t>{3});
  const auto negative = Sample(logits, 8, {RowSettings{-1.0f, 5, 0.5f, 9, 9}});
  EXPECT_EQ(negative.ids, std::vector<int32_t>{3});
}

TEST_P(SampleConformance, TopKOneEqualsGreedy) {
  TESSERA_SEEDED_RNG(rng, 800);
  const int64_t vocab = 500, rows = 40;
  const std::vector<float> logits = RandomFloats(rng, rows * vocab, -5.0f, 5.0f);
  std::vector<RowSettings> sampled, greedy;
  for (int64_t r = 0; r < rows; ++r) {
    sampled.push_back({1.5f, 1, 1.0f, r * 31, r});
    greedy.push_back({0.0f});
  }
  EXPECT_EQ(Sample(logits, vocab, sampled).ids, Sample(logits, vocab, greedy).ids);
}

TEST_P(SampleConformance, SeedAndStepDetermineTheDraw) {
  TESSERA_SEEDED_RNG(rng, 801);
  const int64_t vocab = 64;
  const std::vector<float> row = RandomFloats(rng, vocab, -1.0f, 1.0f);
  // Same (seed, step) in one batch and across calls: the same token.
  const RowSettings settings{1.0f, 0, 1.0f, 1234, 7};
  std::vector<float> logits;
  for (int i = 0; i < 4; ++i) logits.insert(logits.end(), row.begin(), row.end());
  const auto first = Sample(logits, vocab, std::vector<RowSettings>(4, settings)).ids;
  const auto second = Sample(logits, vocab, std::vector<RowSettings>(4, settings)).ids;
  EXPECT_EQ(first, second);
  EXPECT_EQ(std::set<int32_t>(first.begin(), first.end()).size(), 1u);
  // Successive steps spread over the vocabulary; another seed gives another sequence.
  const auto steps = Draws(row, 200, settings);
  EXPECT_GT(std::set<int32_t>(steps.begin(), steps.end()).size(), 30u);
  RowSettings other = settings;
  other.seed = 4321;
  EXPECT_NE(Draws(row, 200, other), steps);
}

TEST_P(SampleConformance, FrequenciesMatchTheTemperatureDistribution) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.7f};
  const RowSettings settings{0.8f, 0, 1.0f, 99, 0};
  const std::vector<int32_t> ids = Draws(logits, 40000, settings);
  // df = 7: P(chi2 > 35) ~ 1e-5. Deterministic given SplitMix64, so it either always passes
  // or always fails.
  EXPECT_LT(ChiSquare(ids, Distribution(logits, settings)), 35.0);
}

TEST_P(SampleConformance, TopKAndTopPCutTheTail) {
  // Probabilities at T = 1 (descending): 0.4, 0.25, 0.15, 0.1, 0.06, 0.04.
  const std::vector<double> probs = {0.15, 0.4, 0.04, 0.25, 0.1, 0.06};
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  const std::vector<RowSettings> settings = {
      {1.0f, 3, 1.0f, 5, 0},    // top-3: tokens 1, 3, 0
      {1.0f, 0, 0.6f, 6, 0},    // 0.4 + 0.25 >= 0.6: tokens 1, 3
      {1.0f, 4, 0.5f, 7, 0},    // top-4 mass 0.9; 0.4/0.9 < 0.5 <= 0.65/0.9: tokens 1, 3
      {1.0f, 0, 0.35f, 8, 0},   // the first token alone reaches 0.35
      {1.0f, 0, 0.0f, 9, 0},    // top_p <= 0 keeps one token
      {2.0f, 2, 0.95f, 10, 0},  // higher temperature, top-2
  };
  const std::vector<std::set<int32_t>> allowed = {{0, 1, 3}, {1, 3}, {1, 3}, {1}, {1}, {1, 3}};
  for (size_t i = 0; i < settings.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("settings ", i));
    const std::vector<int32_t> ids = Draws(logits, 20000, settings[i]);
    const std::vector<double> expected = Distribution(logits, settings[i]);
    std::set<int32_t> seen(ids.begin(), ids.end());
    EXPECT_EQ(seen, allowed[i]);
    // df <= 2: P(chi2 > 25) < 1e-5.
    EXPECT_LT(ChiSquare(ids, expected), 25.0);
  }
}

TEST_P(SampleConformance, MatchesSortedReferenceExactly) {
  TESSERA_SEEDED_RNG(rng, 802);
  for (int64_t vocab : {7, 100, 5000, 50000}) {
    SCOPED_TRACE(absl::StrCat("vocab ", vocab));
    const int64_t rows = 24;
    std::vector<float> logits = RandomFloats(rng, rows * vocab, -8.0f, 8.0f);
    // Some ties in every row.
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 1; i < vocab; i += 3) logits[r * vocab + i] = logits[r * vocab + i - 1];
    }
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    std::vector<RowSettings> settings;
    for (int64_t r = 0; r < rows; ++r) {
      RowSettings s;
      s.temperature = r % 6 == 0 ? 0.0f : 0.2f + 2.0f * unit(rng);
      s.top_k = r % 3 == 0 ? 0 : static_cast<int32_t>(1 + rng() % (2 * vocab));
      s.top_p = r % 4 == 0 ? 1.0f : 0.05f + unit(rng);
      s.seed = static_cast<int64_t>(rng());
      s.step = static_cast<int64_t>(rng() % 1000);
      settings.push_back(s);
    }
    const auto result = Sample(logits, vocab, settings, /*logprobs=*/true);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = &logits[r * vocab];
      EXPECT_EQ(result.ids[r], ReferenceSample(row, vocab, settings[r])) << "row " << r;
      // log_softmax of the raw logits at the chosen token.
      const double max = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t i = 0; i < vocab; ++i) sum += std::exp(row[i] - max);
      const double want = row[result.ids[r]] - max - std::log(sum);
      EXPECT_NEAR(result.logprobs[r], want, 1e-5 * std::abs(want) + 1e-6) << "row " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, SampleConformance, ::testing::ValuesIn(testing::BackendNames()));

}  // namespace
}  // namespace tessera::kernels
