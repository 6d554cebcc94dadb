#include "bench/workload.h"

#include <algorithm>
#include <set>
#include <vector>

#include "bench/mooncake_trace.h"
#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

WorkloadSpec Spec(Dataset dataset) {
  WorkloadSpec spec;
  spec.dataset = dataset;
  spec.input_len = 100;
  spec.output_len = 20;
  return spec;
}

void ExpectIdsInRange(const std::vector<RequestSpec>& requests, int64_t vocab) {
  for (const RequestSpec& r : requests) {
    for (int32_t id : r.prompt) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, vocab);
    }
  }
}

TEST(WorkloadTest, FixedLengthsAreExact) {
  auto requests = GenerateRequests(Spec(Dataset::kFixed), 50, 384, 1);
  ASSERT_TRUE(requests.ok()) << requests.status();
  ASSERT_EQ(requests->size(), 50u);
  for (const RequestSpec& r : *requests) {
    EXPECT_EQ(r.prompt.size(), 100u);
    EXPECT_EQ(r.output_len, 20);
  }
  ExpectIdsInRange(*requests, 384);
}

TEST(WorkloadTest, RandomLengthsStayInTheirRange) {
  WorkloadSpec spec = Spec(Dataset::kRandom);
  spec.range_ratio = 0.5;
  auto requests = GenerateRequests(spec, 2000, 384, 2);
  ASSERT_TRUE(requests.ok());
  std::set<size_t> inputs;
  for (const RequestSpec& r : *requests) {
    EXPECT_GE(r.prompt.size(), 50u);
    EXPECT_LE(r.prompt.size(), 150u);
    EXPECT_GE(r.output_len, 10);
    EXPECT_LE(r.output_len, 30);
    inputs.insert(r.prompt.size());
  }
  EXPECT_GT(inputs.size(), 80u);  // the range is really used
  ExpectIdsInRange(*requests, 384);
}

TEST(WorkloadTest, SameSeedSameWorkload) {
  auto a = GenerateRequests(Spec(Dataset::kChat), 20, 384, 5);
  auto b = GenerateRequests(Spec(Dataset::kChat), 20, 384, 5);
  auto c = GenerateRequests(Spec(Dataset::kChat), 20, 384, 6);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].prompt, (*b)[i].prompt);
    EXPECT_EQ((*a)[i].output_len, (*b)[i].output_len);
  }
  EXPECT_NE((*a)[0].prompt, (*c)[0].prompt);
}

TEST(WorkloadTest, ChatLengthsHaveTheMedianAndALongTail) {
  auto requests = GenerateRequests(Spec(Dataset::kChat), 4000, 384, 3);
  ASSERT_TRUE(requests.ok());
  std::vector<int64_t> inputs, outputs;
  for (const RequestSpec& r : *requests) {
    inputs.push_back(static_cast<int64_t>(r.prompt.size()));
    outputs.push_back(r.output_len);
    EXPECT_GE(r.output_len, 1);
    EXPECT_LE(r.output_len, 8 * 20);
    EXPECT_LE(r.prompt.size(), 8u * 100u);
  }
  std::sort(inputs.begin(), inputs.end());
  std::sort(outputs.begin(), outputs.end());
  EXPECT_NEAR(static_cast<double>(inputs[inputs.size() / 2]), 100, 10);
  EXPECT_NEAR(static_cast<double>(outputs[outputs.size() / 2]), 20, 2);
  EXPECT_GT(inputs[inputs.size() * 9 / 10], 300);  // p90 of a log-normal with sigma 1: 3.6x
}

TEST(WorkloadTest, PrefixesAreReallyShared) {
  WorkloadSpec spec = Spec(Dataset::kPrefix);
  spec.prefix_len = 64;
  spec.num_prefixes = 3;
  spec.input_len = 16;
  auto requests = GenerateRequests(spec, 9, 384, 4);
  ASSERT_TRUE(requests.ok());
  auto prefix = [&](size_t i) {
    const std::vector<int32_t>& p = (*requests)[i].prompt;
    return std::vector<int32_t>(p.begin(), p.begin() + 64);
  };
  for (size_t i = 0; i < 9; ++i) {
    EXPECT_EQ((*requests)[i].prompt.size(), 64u + 16u);
    EXPECT_EQ(prefix(i), prefix(i % 3)) << "request " << i;
  }
  EXPECT_NE(prefix(0), prefix(1));
  EXPECT_NE(prefix(1), prefix(2));
  EXPECT_NE((*requests)[0].prompt, (*requests)[3].prompt);  // the suffixes differ
}

TEST(WorkloadTest, RejectsMooncakeAndEmptyVocab) {
  EXPECT_FALSE(GenerateRequests(Spec(Dataset::kMooncake), 1, 384, 0).ok());
  EXPECT_FALSE(GenerateRequests(Spec(Dataset::kRandom), 1, 0, 0).ok());
}

std::vector<TraceEntry> Trace() {
  auto trace = ParseMooncakeTrace(
      "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [7, 8, 9]}\n"
      "{\"timestamp\": 5, \"input_length\": 7, \"output_length\": 3, \"hash_ids\": [7, 8]}\n"
      "{\"timestamp\": 9, \"input_length\": 9, \"output_length\": 1, \"hash_ids\": [1]}\n",
      "t");
  EXPECT_TRUE(trace.ok()) << trace.status();
  return *trace;
}

TEST(TraceWorkloadTest, EqualHashIdsGiveEqualBlocks) {
  const std::vector<RequestSpec> r = RequestsFromTrace(Trace(), /*block_size=*/4, 384, 0);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].prompt.size(), 10u);
  EXPECT_EQ(r[1].prompt.size(), 7u);
  EXPECT_EQ(r[2].prompt.size(), 9u);
  EXPECT_EQ(r[0].output_len, 2);
  // Blocks 7 and 8 (tokens 0..7) are shared; request 1 stops 1 token into block 8's end.
  EXPECT_TRUE(std::equal(r[1].prompt.begin(), r[1].prompt.end(), r[0].prompt.begin()));
  EXPECT_NE(std::vector<int32_t>(r[2].prompt.begin(), r[2].prompt.begin() + 4),
            std::vector<int32_t>(r[0].prompt.begin(), r[0].prompt.begin() + 4));
  ExpectIdsInRange(r, 384);
}

TEST(TraceWorkloadTest, TokensPastTheListedBlocksAreUniquePerRequest) {
  auto trace = ParseMooncakeTrace(
      "{\"timestamp\": 0, \"input_length\": 12, \"output_length\": 1, \"hash_ids\": [3]}\n"
      "{\"timestamp\": 1, \"input_length\": 12, \"output_length\": 1, \"hash_ids\": [3]}\n",
      "t");
  ASSERT_TRUE(trace.ok());
  const std::vector<RequestSpec> r = RequestsFromTrace(*trace, 4, 1 << 20, 0);
  EXPECT_TRUE(std::equal(r[0].prompt.begin(), r[0].prompt.begin() + 4, r[1].prompt.begin()));
  EXPECT_NE(std::vector<int32_t>(r[0].prompt.begin() + 4, r[0].prompt.end()),
            std::vector<int32_t>(r[1].prompt.begin() + 4, r[1].prompt.end()));
}

TEST(TraceWorkloadTest, ASaltGivesFreshBlocks) {
  const auto a = RequestsFromTrace(Trace(), 4, 1 << 20, 0);
  const auto b = RequestsFromTrace(Trace(), 4, 1 << 20, 1);
  EXPECT_NE(a[0].prompt, b[0].prompt);
  EXPECT_EQ(a[0].prompt, RequestsFromTrace(Trace(), 4, 1 << 20, 0)[0].prompt);
}

TEST(WorkloadTest, CheckFitsContextNamesTheRequest) {
  std::vector<RequestSpec> requests(2);
  requests[0].prompt.assign(10, 1);
  requests[0].output_len = 5;
  requests[1].prompt.assign(20, 1);
  requests[1].output_len = 5;
  EXPECT_TRUE(CheckFitsContext(requests, 25).ok());
  EXPECT_TRUE(CheckFitsContext(requests, 0).ok());
  const absl::Status status = CheckFitsContext(requests, 24);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("request 1 needs 20 prompt + 5 output tokens = 25"),
            std::string::npos)
      << status;
}

}  // namespace
}  // namespace tessera::bench
