#include "common/status_macros.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera {
namespace {

absl::Status Fail(int* calls) {
  ++*calls;
  return absl::NotFoundError("missing");
}

absl::Status Succeed(int* calls) {
  ++*calls;
  return absl::OkStatus();
}

absl::Status TwoSteps(bool fail_first, int* first_calls, int* second_calls, bool* reached_end) {
  TESSERA_RETURN_IF_ERROR(fail_first ? Fail(first_calls) : Succeed(first_calls));
  TESSERA_RETURN_IF_ERROR(Succeed(second_calls));
  *reached_end = true;
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnIfErrorPropagatesAndStops) {
  int first = 0, second = 0;
  bool end = false;
  const absl::Status status = TwoSteps(/*fail_first=*/true, &first, &second, &end);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "missing");
  EXPECT_EQ(first, 1);  // evaluated exactly once
  EXPECT_EQ(second, 0);
  EXPECT_FALSE(end);
}

TEST(StatusMacrosTest, ReturnIfErrorContinuesOnOk) {
  int first = 0, second = 0;
  bool end = false;
  EXPECT_TRUE(TwoSteps(/*fail_first=*/false, &first, &second, &end).ok());
  EXPECT_EQ(first, 1);
  EXPECT_EQ(second, 1);
  EXPECT_TRUE(end);
}

absl::StatusOr<int> ReturnIfErrorInStatusOr(bool fail) {
  TESSERA_RETURN_IF_ERROR(fail ? absl::InternalError("boom") : absl::OkStatus());
  return 42;
}

TEST(StatusMacrosTest, ReturnIfErrorInFunctionReturningStatusOr) {
  EXPECT_EQ(ReturnIfErrorInStatusOr(true).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(*ReturnIfErrorInStatusOr(false), 42);
}

TEST(StatusMacrosTest, ReturnIfErrorInUnbracedIf) {
  // The do/while(false) wrapper makes it one statement.
  auto f = [](bool cond) -> absl::Status {
    if (cond)
      TESSERA_RETURN_IF_ERROR(absl::AbortedError("x"));
    else
      return absl::OkStatus();
    return absl::UnknownError("unreachable");
  };
  EXPECT_EQ(f(true).code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(f(false).ok());
}

absl::StatusOr<int> Parse(const std::string& text, int* calls) {
  ++*calls;
  if (text.empty()) return absl::InvalidArgumentError("empty");
  return static_cast<int>(text.size());
}

absl::StatusOr<int> SumOfLengths(const std::string& a, const std::string& b, int* calls) {
  TESSERA_ASSIGN_OR_RETURN(int x, Parse(a, calls));
  TESSERA_ASSIGN_OR_RETURN(auto y, Parse(b, calls));  // second use in the same scope
  return x + y;
}

TEST(StatusMacrosTest, AssignOrReturnAssignsValues) {
  int calls = 0;
  auto sum = SumOfLengths("abc", "de", &calls);
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum, 5);
  EXPECT_EQ(calls, 2);  // each expression evaluated once
}

TEST(StatusMacrosTest, AssignOrReturnPropagatesError) {
  int calls = 0;
  auto sum = SumOfLengths("", "de", &calls);
  EXPECT_EQ(sum.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sum.status().message(), "empty");
  EXPECT_EQ(calls, 1);  // stopped before the second Parse
  calls = 0;
  EXPECT_EQ(SumOfLengths("abc", "", &calls).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 2);
}

absl::Status AssignExisting(bool fail, int* out) {
  int value = -1;
  TESSERA_ASSIGN_OR_RETURN(
      value, fail ? absl::StatusOr<int>(absl::DataLossError("bad")) : absl::StatusOr<int>(17));
  *out = value;
  return absl::OkStatus();
}

TEST(StatusMacrosTest, AssignOrReturnToExistingVariableInStatusFunction) {
  int out = 0;
  EXPECT_TRUE(AssignExisting(false, &out).ok());
  EXPECT_EQ(out, 17);
  out = 0;
  EXPECT_EQ(AssignExisting(true, &out).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(out, 0);
}

absl::StatusOr<std::unique_ptr<int>> MakeBox(int v) {
  if (v < 0) return absl::OutOfRangeError("negative");
  return std::make_unique<int>(v);
}

absl::StatusOr<int> Unbox(int v) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<int> box, MakeBox(v));  // move-only value
  return *box * 2;
}

TEST(StatusMacrosTest, AssignOrReturnMoveOnly) {
  EXPECT_EQ(*Unbox(21), 42);
  EXPECT_EQ(Unbox(-1).status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace tessera
