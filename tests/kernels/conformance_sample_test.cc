// Conformance of Sample on every backend. Draws are deterministic functions of (seed, step)
// through SampleUniform, so the statistical checks below use fixed seeds and cannot flake.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <vector>

#include <gmock/gmock.h>
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
  float min_p = 0.0f;
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
  // min-p relative to the most likely token (unnormalised probability 1).
  while (!sorted.empty() && sorted.back().first < std::min(r.min_p, 1.0f)) sorted.pop_back();
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

struct SampleExtras {
  int64_t top_n = 0;                        // top-N logprobs wanted
  const std::vector<float>* raw = nullptr;  // raw_logits
};

class SampleConformance : public BackendTest {
 protected:
  struct Result {
    std::vector<int32_t> ids;
    std::vector<float> logprobs;
    std::vector<int32_t> top_ids;     // [rows, top_n]
    std::vector<float> top_logprobs;  // [rows, top_n]
  };
  // Samples every row of `logits` ([rows, vocab]) with its settings.
  Result Sample(const std::vector<float>& logits, int64_t vocab,
                const std::vector<RowSettings>& rows, bool logprobs = false,
                SampleExtras extras = {}) {
    const auto n = static_cast<int64_t>(rows.size());
    std::vector<float> temperature, top_p, min_p;
    std::vector<int32_t> top_k;
    std::vector<int64_t> seeds, steps;
    bool any_min_p = false;
    for (const RowSettings& r : rows) {
      temperature.push_back(r.temperature);
      top_k.push_back(r.top_k);
      top_p.push_back(r.top_p);
      seeds.push_back(r.seed);
      steps.push_back(r.step);
      min_p.push_back(r.min_p);
      any_min_p |= r.min_p != 0.0f;
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
    if (any_min_p) params.min_p = Upload(min_p, DataType::kF32, {n});
    if (extras.raw != nullptr) params.raw_logits = Upload(*extras.raw, DataType::kF32, {n, vocab});
    if (extras.top_n > 0) {
      params.output_top_ids = Uninitialized(DataType::kI32, {n, extras.top_n});
      params.output_top_logprobs = Uninitialized(DataType::kF32, {n, extras.top_n});
    }
    const absl::Status status = kernels::Sample(backend(), params, stream());
    EXPECT_TRUE(status.ok()) << status;
    Result result;
    result.ids = DownloadI32(params.output_ids);
    if (logprobs) result.logprobs = Download(params.output_logprobs);
    if (extras.top_n > 0) {
      result.top_ids = DownloadI32(params.output_top_ids);
      result.top_logprobs = Download(params.output_top_logprobs);
    }
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
  // min-p keeps the tokens at least min_p times as likely as the most likely one.
  const double p_max = p[order[0]];
  int64_t kept = 0;
  while (kept < vocab && p[order[kept]] >= r.min_p * p_max) ++kept;
  const int64_t k = r.top_k > 0 ? std::min<int64_t>(r.top_k, kept) : kept;
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
      s.min_p = r % 5 == 0 ? 0.0f : 0.3f * unit(rng);
      s.seed = static_cast<int64_t>(rng());
      s.step = static_cast<int64_t>(rng() % 1000);
      settings.push_back(s);
    }
    const int64_t top_n = std::min<int64_t>(vocab, 20);
    const auto result = Sample(logits, vocab, settings, /*logprobs=*/true, {top_n, nullptr});
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = &logits[r * vocab];
      EXPECT_EQ(result.ids[r], ReferenceSample(row, vocab, settings[r])) << "row " << r;
      // log_softmax of the raw logits at the chosen token.
      const double max = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t i = 0; i < vocab; ++i) sum += std::exp(row[i] - max);
      const double want = row[result.ids[r]] - max - std::log(sum);
      EXPECT_NEAR(result.logprobs[r], want, 1e-5 * std::abs(want) + 1e-6) << "row " << r;
      // Top-N: the N largest logits (ties by index), with their log_softmax.
      std::vector<int32_t> order(vocab);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return row[a] > row[b]; });
      for (int64_t j = 0; j < top_n; ++j) {
        ASSERT_EQ(result.top_ids[r * top_n + j], order[j]) << "row " << r << " rank " << j;
        const double lp = row[order[j]] - max - std::log(sum);
        EXPECT_NEAR(result.top_logprobs[r * top_n + j], lp, 1e-5 * std::abs(lp) + 1e-6);
      }
    }
  }
}

TEST_P(SampleConformance, MinPDropsTokensBelowAFractionOfTheMostLikely) {
  // Probabilities at T = 1 (descending): 0.4, 0.25, 0.15, 0.1, 0.06, 0.04.
  const std::vector<double> probs = {0.15, 0.4, 0.04, 0.25, 0.1, 0.06};
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  RowSettings settings{1.0f, 0, 1.0f, 21, 0, /*min_p=*/0.3f};  // keeps p >= 0.12: tokens 1, 3, 0
  const std::vector<int32_t> ids = Draws(logits, 20000, settings);
  EXPECT_EQ(std::set<int32_t>(ids.begin(), ids.end()), (std::set<int32_t>{0, 1, 3}));
  EXPECT_LT(ChiSquare(ids, Distribution(logits, settings)), 25.0);
  // Temperature first: at T = 0.5 the ratios square, 0.25/0.4 squared = 0.39 < 0.5.
  settings = {0.5f, 0, 1.0f, 22, 0, /*min_p=*/0.5f};
  const std::vector<int32_t> hot = Draws(logits, 2000, settings);
  EXPECT_EQ(std::set<int32_t>(hot.begin(), hot.end()), std::set<int32_t>{1});
  // min_p above 1 still keeps the most likely token.
  settings.min_p = 7.0f;
  EXPECT_EQ(Draws(logits, 10, settings), std::vector<int32_t>(10, 1));
}

TEST_P(SampleConformance, LogprobsComeFromRawLogitsWhenGiven) {
  const int64_t vocab = 6;
  const std::vector<float> raw = {0.0f, 3.0f, 1.0f, 3.0f, -1.0f, 2.0f};
  std::vector<float> processed = raw;
  processed[1] = -100.0f;  // a penalty moved the greedy choice to token 3
  const auto result =
      Sample(processed, vocab, {RowSettings{0.0f}}, /*logprobs=*/true, {/*top_n=*/3, &raw});
  EXPECT_EQ(result.ids, std::vector<int32_t>{3});
  double sum = 0;
  for (float x : raw) sum += std::exp(x - 3.0);
  EXPECT_NEAR(result.logprobs[0], -std::log(sum), 1e-6);
  EXPECT_EQ(result.top_ids, (std::vector<int32_t>{1, 3, 5}));  // tie 1/3 by index
  EXPECT_NEAR(result.top_logprobs[0], -std::log(sum), 1e-6);
  EXPECT_NEAR(result.top_logprobs[2], -1.0 - std::log(sum), 1e-6);
}

TEST_P(SampleConformance, ValidatesTheOptionalFields) {
  SampleParams params;
  params.logits = Upload({0.0f, 1.0f, 2.0f, 3.0f}, DataType::kF32, {2, 2});
  params.temperature = Upload({0.0f, 0.0f}, DataType::kF32, {2});
  params.top_k = UploadI32({0, 0}, {2});
  params.top_p = Upload({1.0f, 1.0f}, DataType::kF32, {2});
  params.seeds = UploadI64({0, 0}, {2});
  params.steps = UploadI64({0, 0}, {2});
  params.output_ids = Uninitialized(DataType::kI32, {2});
  params.min_p = Upload({0.1f}, DataType::kF32, {1});
  absl::Status status = kernels::Sample(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("field min_p"));
  params.min_p = {};
  params.output_top_ids = Uninitialized(DataType::kI32, {2, 1});
  status = kernels::Sample(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("both or neither"));
  params.output_top_ids = Uninitialized(DataType::kI32, {2, 3});
  params.output_top_logprobs = Uninitialized(DataType::kF32, {2, 3});
  status = kernels::Sample(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("1 to vocab (2)"));
  params.output_top_ids = Uninitialized(DataType::kI32, {2, 2});
  params.output_top_logprobs = Uninitialized(DataType::kF32, {2, 2});
  params.raw_logits = Upload({0.0f, 1.0f}, DataType::kF32, {1, 2});
  status = kernels::Sample(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("field raw_logits"));
  params.raw_logits = {};
  ASSERT_TRUE(kernels::Sample(backend(), params, stream()).ok());
  EXPECT_EQ(DownloadI32(params.output_top_ids), (std::vector<int32_t>{1, 0, 1, 0}));
}

// vLLM's penalties on dense masks, literally (V1 sampler: apply_all_penalties).
std::vector<float> ReferencePenalties(std::vector<float> logits, int64_t vocab,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const std::vector<std::vector<int32_t>>& outputs,
                                      const std::vector<float>& repetition,
                                      const std::vector<float>& presence,
                                      const std::vector<float>& frequency) {
  for (size_t r = 0; r < prompts.size(); ++r) {
    std::vector<int32_t> counts(vocab, 0);
    std::vector<bool> seen(vocab, false);
    for (int32_t t : prompts[r]) seen[t] = true;
    for (int32_t t : outputs[r]) ++counts[t];
    for (int64_t i = 0; i < vocab; ++i) {
      float& x = logits[r * vocab + i];
      const float penalty = seen[i] || counts[i] > 0 ? repetition[r] : 1.0f;
      x *= x > 0 ? 1.0f / penalty : penalty;
      x -= frequency[r] * static_cast<float>(counts[i]);
      x -= presence[r] * static_cast<float>(counts[i] > 0);
    }
  }
  return logits;
}

class ApplyPenaltiesConformance : public BackendTest {};

TEST_P(ApplyPenaltiesConformance, MatchesDenseReference) {
  TESSERA_SEEDED_RNG(rng, 803);
  const int64_t vocab = 300, rows = 9;
  const std::vector<float> logits = RandomFloats(rng, rows * vocab, -6.0f, 6.0f);
  std::vector<std::vector<int32_t>> prompts(rows), outputs(rows);
  std::vector<float> repetition, presence, frequency;
  std::vector<int32_t> ids, counts, start{0}, banned, banned_start{0};
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int i = 0, n = static_cast<int>(rng() % 40); i < n; ++i) {
      prompts[r].push_back(static_cast<int32_t>(rng() % vocab));
    }
    for (int i = 0, n = static_cast<int>(rng() % 60); i < n; ++i) {
      outputs[r].push_back(static_cast<int32_t>(rng() % 50));  // repeats
    }
    repetition.push_back(r == 0 ? 1.0f : 0.5f + 1.5f * unit(rng));
    presence.push_back(r == 1 ? 0.0f : 4.0f * unit(rng) - 2.0f);
    frequency.push_back(r == 2 ? 0.0f : 4.0f * unit(rng) - 2.0f);
    // The distinct tokens of prompt and output, with output counts.
    std::map<int32_t, int32_t> distinct;
    for (int32_t t : prompts[r]) distinct.emplace(t, 0);
    for (int32_t t : outputs[r]) ++distinct[t];
    for (auto [t, c] : distinct) {
      ids.push_back(t);
      counts.push_back(c);
    }
    start.push_back(static_cast<int32_t>(ids.size()));
    if (r % 2 == 0) banned.push_back(static_cast<int32_t>(r));
    banned_start.push_back(static_cast<int32_t>(banned.size()));
  }
  ApplyPenaltiesParams params;
  const MutableTensorView device_logits = Upload(logits, DataType::kF32, {rows, vocab});
  params.logits = device_logits;
  params.repetition_penalty = Upload(repetition, DataType::kF32, {rows});
  params.presence_penalty = Upload(presence, DataType::kF32, {rows});
  params.frequency_penalty = Upload(frequency, DataType::kF32, {rows});
  params.token_ids = UploadI32(ids, {static_cast<int64_t>(ids.size())});
  params.output_counts = UploadI32(counts, {static_cast<int64_t>(counts.size())});
  params.token_start = UploadI32(start, {rows + 1});
  params.banned_ids = UploadI32(banned, {static_cast<int64_t>(banned.size())});
  params.banned_start = UploadI32(banned_start, {rows + 1});
  ASSERT_TRUE(kernels::ApplyPenalties(backend(), params, stream()).ok());
  const std::vector<float> got = Download(device_logits);
  std::vector<float> want =
      ReferencePenalties(logits, vocab, prompts, outputs, repetition, presence, frequency);
  for (int64_t r = 0; r < rows; r += 2) want[r * vocab + r] = -INFINITY;
  for (int64_t i = 0; i < rows * vocab; ++i) {
    ASSERT_EQ(got[i], want[i]) << "row " << i / vocab << " token " << i % vocab;
  }
}

TEST_P(ApplyPenaltiesConformance, LogitBiasComesBeforeThePenalties) {
  // Row 0: tokens 1 and 3 biased, token 1 also penalised (repetition 2, counted once); row 1: no
  // bias; row 2: token 0 pushed to -100, token 2 up by 100.
  const int64_t vocab = 4, rows = 3;
  const std::vector<float> logits = {1.0f, 3.0f, -1.0f, 0.5f, 2.0f,  -2.0f,
                                     1.0f, 0.0f, 5.0f,  0.0f, -5.0f, 1.0f};
  ApplyPenaltiesParams params;
  const MutableTensorView device_logits = Upload(logits, DataType::kF32, {rows, vocab});
  params.logits = device_logits;
  params.repetition_penalty = Upload({2.0f, 1.0f, 1.0f}, DataType::kF32, {rows});
  params.presence_penalty = Upload({0.0f, 0.0f, 0.0f}, DataType::kF32, {rows});
  params.frequency_penalty = Upload({0.0f, 0.0f, 0.0f}, DataType::kF32, {rows});
  params.token_ids = UploadI32({1}, {1});
  params.output_counts = UploadI32({1}, {1});
  params.token_start = UploadI32({0, 1, 1, 1}, {rows + 1});
  params.bias_ids = UploadI32({1, 3, 0, 2}, {4});
  params.bias_values = Upload({-5.0f, 1.5f, -100.0f, 100.0f}, DataType::kF32, {4});
  params.bias_start = UploadI32({0, 2, 2, 4}, {rows + 1});
  ASSERT_TRUE(kernels::ApplyPenalties(backend(), params, stream()).ok());
  // Token 1 of row 0: 3 - 5 = -2, then the penalty of a negative logit: -2 * 2 = -4.
  EXPECT_EQ(Download(device_logits), (std::vector<float>{1.0f, -4.0f, -1.0f, 2.0f, 2.0f, -2.0f,
                                                         1.0f, 0.0f, -95.0f, 0.0f, 95.0f, 1.0f}));
  // Checked like the other lists: an id outside the vocabulary, a missing part.
  params.bias_ids = UploadI32({1, 3, 0, 4}, {4});
  absl::Status status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("token id 4"));
  params.bias_values = TensorView();
  status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("all three or none"));
}

// Structured outputs: every token whose bit is clear becomes -inf, after the bans; the rest keep
// their (penalised) logits. A vocabulary that is not a multiple of 32 leaves the last word's high
// bits unused.
TEST_P(ApplyPenaltiesConformance, AllowedMaskKeepsOnlyItsTokens) {
  TESSERA_SEEDED_RNG(rng, 811);
  const int64_t vocab = 1000, rows = 3, words = (vocab + 31) / 32;
  const std::vector<float> logits = RandomFloats(rng, rows * vocab, -6.0f, 6.0f);
  std::vector<int32_t> mask(rows * words);
  for (int64_t w = 0; w < words; ++w) {
    mask[w] = -1;                                   // row 0: everything
    mask[words + w] = static_cast<int32_t>(rng());  // row 1: random
  }
  mask[2 * words + 7 / 32] = 1 << 7;  // row 2: token 7 alone
  ApplyPenaltiesParams params;
  const MutableTensorView device_logits = Upload(logits, DataType::kF32, {rows, vocab});
  params.logits = device_logits;
  params.repetition_penalty = Upload({1.0f, 2.0f, 1.0f}, DataType::kF32, {rows});
  params.presence_penalty = Upload({0.0f, 0.0f, 0.0f}, DataType::kF32, {rows});
  params.frequency_penalty = Upload({0.0f, 0.0f, 0.0f}, DataType::kF32, {rows});
  params.token_ids = UploadI32({5}, {1});
  params.output_counts = UploadI32({1}, {1});
  params.token_start = UploadI32({0, 0, 1, 1}, {rows + 1});
  params.banned_ids = UploadI32({3}, {1});
  params.banned_start = UploadI32({0, 1, 1, 1}, {rows + 1});
  params.allowed_mask = UploadI32(mask, {rows, words});
  ASSERT_TRUE(kernels::ApplyPenalties(backend(), params, stream()).ok());
  const std::vector<float> got = Download(device_logits);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < vocab; ++t) {
      float want = logits[r * vocab + t];
      if (r == 1 && t == 5) want *= want > 0 ? 0.5f : 2.0f;
      if (r == 0 && t == 3) want = -INFINITY;
      const uint32_t word = static_cast<uint32_t>(mask[r * words + t / 32]);
      if (((word >> (t % 32)) & 1u) == 0) want = -INFINITY;
      ASSERT_EQ(got[r * vocab + t], want) << "row " << r << " token " << t;
    }
  }
  params.allowed_mask = UploadI32(std::vector<int32_t>(rows * (words - 1), -1), {rows, words - 1});
  const absl::Status status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("allowed_mask"));
}

TEST_P(ApplyPenaltiesConformance, RejectsBadIdsAndOffsetsWithoutWriting) {
  const std::vector<float> logits = {1.0f, -1.0f, 2.0f, 0.5f};
  ApplyPenaltiesParams params;
  const MutableTensorView device_logits = Upload(logits, DataType::kF32, {1, 4});
  params.logits = device_logits;
  params.repetition_penalty = Upload({2.0f}, DataType::kF32, {1});
  params.presence_penalty = Upload({1.0f}, DataType::kF32, {1});
  params.frequency_penalty = Upload({1.0f}, DataType::kF32, {1});
  params.output_counts = UploadI32({1, 1}, {2});
  params.token_ids = UploadI32({0, 4}, {2});
  params.token_start = UploadI32({0, 2}, {2});
  absl::Status status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("token id 4"));
  params.token_ids = UploadI32({0, 1}, {2});
  params.token_start = UploadI32({0, 3}, {2});
  status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  params.token_start = UploadI32({0, 2}, {2});
  params.repetition_penalty = Upload({0.0f}, DataType::kF32, {1});
  status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(Download(device_logits), logits);
  // Validation: a missing half of an optional pair, a wrong shape.
  params.repetition_penalty = Upload({2.0f}, DataType::kF32, {1});
  params.banned_ids = UploadI32({1}, {1});
  status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("both or neither"));
  params.banned_start = UploadI32({0, 1, 1}, {3});
  status = kernels::ApplyPenalties(backend(), params, stream());
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("field banned_start"));
  params.banned_start = UploadI32({0, 1}, {2});
  ASSERT_TRUE(kernels::ApplyPenalties(backend(), params, stream()).ok());
  // Token 0: 1 / 2 - 1 - 1; token 1: -1 * 2 - 1 - 1, then banned.
  const std::vector<float> got = Download(device_logits);
  EXPECT_EQ(got[0], -1.5f);
  EXPECT_EQ(got[1], -INFINITY);
  EXPECT_EQ(got[2], 2.0f);
}

INSTANTIATE_TEST_SUITE_P(Backends, SampleConformance, ::testing::ValuesIn(testing::BackendNames()),
                         testing::BackendParamName());
INSTANTIATE_TEST_SUITE_P(Backends, ApplyPenaltiesConformance,
                         ::testing::ValuesIn(testing::BackendNames()), testing::BackendParamName());

}  // namespace
}  // namespace tessera::kernels
