#include "bench/mooncake_trace.h"

#include <string>

#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

constexpr char kGood[] =
    "{\"timestamp\": 27482, \"input_length\": 6955, \"output_length\": 52, "
    "\"hash_ids\": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 2353, 2354]}\n";

// The message of parsing `line` as the second line after a good one.
std::string SecondLineError(const std::string& line) {
  absl::StatusOr<std::vector<TraceEntry>> trace =
      ParseMooncakeTrace(std::string(kGood) + line + "\n", "trace.jsonl");
  EXPECT_FALSE(trace.ok()) << line;
  EXPECT_EQ(trace.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(trace.status().message());
}

TEST(MooncakeTraceTest, ParsesGoodLines) {
  auto trace = ParseMooncakeTrace(
      std::string(kGood) +
          "\n"  // blank lines are skipped
          "{\"timestamp\": 27482.5, \"input_length\": 512.0, \"output_length\": 1, "
          "\"hash_ids\": [], \"extra\": \"ignored\"}\r\n",
      "trace.jsonl");
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->size(), 2u);
  const TraceEntry& a = (*trace)[0];
  EXPECT_EQ(a.line, 1);
  EXPECT_EQ(a.timestamp_ms, 27482);
  EXPECT_EQ(a.input_length, 6955);
  EXPECT_EQ(a.output_length, 52);
  ASSERT_EQ(a.hash_ids.size(), 14u);
  EXPECT_EQ(a.hash_ids[13], 2354);
  const TraceEntry& b = (*trace)[1];
  EXPECT_EQ(b.line, 3);
  EXPECT_EQ(b.timestamp_ms, 27482.5);
  EXPECT_EQ(b.input_length, 512);
  EXPECT_TRUE(b.hash_ids.empty());
}

TEST(MooncakeTraceTest, BadJsonNamesTheLine) {
  const std::string m = SecondLineError("{\"timestamp\": 1,");
  EXPECT_EQ(m.rfind("trace.jsonl:2: not valid JSON", 0), 0u) << m;
}

TEST(MooncakeTraceTest, NonObjectNamesTheLine) {
  const std::string m = SecondLineError("[1, 2]");
  EXPECT_EQ(m.rfind("trace.jsonl:2: expected a JSON object", 0), 0u) << m;
}

TEST(MooncakeTraceTest, MissingFieldIsNamed) {
  const std::string m =
      SecondLineError("{\"timestamp\": 30000, \"output_length\": 5, \"hash_ids\": [1]}");
  EXPECT_EQ(m, "trace.jsonl:2: input_length: missing");
}

TEST(MooncakeTraceTest, BadTimestamp) {
  const std::string m = SecondLineError(
      "{\"timestamp\": \"soon\", \"input_length\": 5, \"output_length\": 5, \"hash_ids\": [1]}");
  EXPECT_EQ(m.rfind("trace.jsonl:2: timestamp: expected a non-negative number", 0), 0u) << m;
}

TEST(MooncakeTraceTest, NonPositiveLengths) {
  std::string m = SecondLineError(
      "{\"timestamp\": 30000, \"input_length\": -3, \"output_length\": 5, \"hash_ids\": [1]}");
  EXPECT_EQ(m.rfind("trace.jsonl:2: input_length: expected a positive integer", 0), 0u) << m;
  m = SecondLineError(
      "{\"timestamp\": 30000, \"input_length\": 3, \"output_length\": 0, \"hash_ids\": [1]}");
  EXPECT_EQ(m.rfind("trace.jsonl:2: output_length: expected a positive integer", 0), 0u) << m;
  m = SecondLineError(
      "{\"timestamp\": 30000, \"input_length\": 2.5, \"output_length\": 1, \"hash_ids\": [1]}");
  EXPECT_EQ(m.rfind("trace.jsonl:2: input_length: expected a positive integer", 0), 0u) << m;
}

TEST(MooncakeTraceTest, BadHashIds) {
  std::string m = SecondLineError(
      "{\"timestamp\": 30000, \"input_length\": 3, \"output_length\": 5, \"hash_ids\": 4}");
  EXPECT_EQ(m.rfind("trace.jsonl:2: hash_ids: expected an array", 0), 0u) << m;
  m = SecondLineError(
      "{\"timestamp\": 30000, \"input_length\": 3, \"output_length\": 5, \"hash_ids\": [1, "
      "\"x\"]}");
  EXPECT_EQ(m.rfind("trace.jsonl:2: hash_ids[1]: expected a non-negative integer", 0), 0u) << m;
}

TEST(MooncakeTraceTest, TimestampsMustNotGoBack) {
  const std::string m = SecondLineError(
      "{\"timestamp\": 100, \"input_length\": 3, \"output_length\": 5, \"hash_ids\": []}");
  EXPECT_EQ(m.rfind("trace.jsonl:2: timestamp: 100 is earlier than line 1's 27482", 0), 0u) << m;
}

TEST(MooncakeTraceTest, EmptyTraceIsAnError) {
  auto trace = ParseMooncakeTrace("\n\n", "empty.jsonl");
  ASSERT_FALSE(trace.ok());
  EXPECT_EQ(trace.status().message(), "empty.jsonl: the trace holds no request");
}

TEST(MooncakeTraceTest, MissingFileIsNotFound) {
  auto trace = ReadMooncakeTrace("/nonexistent/trace.jsonl");
  EXPECT_EQ(trace.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tessera::bench
