#include "common/logging.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "common/check.h"

namespace tessera {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

TEST(LoggingTest, ParseLogLevel) {
  struct Case {
    const char* name;
    LogLevel want;
  };
  for (const Case& c : {Case{"debug", LogLevel::kDebug}, Case{"DEBUG", LogLevel::kDebug},
                        Case{"info", LogLevel::kInfo}, Case{"Info", LogLevel::kInfo},
                        Case{"warning", LogLevel::kWarning}, Case{"warn", LogLevel::kWarning},
                        Case{"WARNING", LogLevel::kWarning}, Case{"error", LogLevel::kError},
                        Case{"eRRor", LogLevel::kError}}) {
    auto level = ParseLogLevel(c.name);
    ASSERT_TRUE(level.ok()) << c.name << ": " << level.status();
    EXPECT_EQ(*level, c.want) << c.name;
  }
  for (const char* bad : {"", "verbose", "fatal", "0", " info", "information"}) {
    auto level = ParseLogLevel(bad);
    ASSERT_FALSE(level.ok()) << bad;
    EXPECT_EQ(level.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(level.status().message()), HasSubstr("'" + std::string(bad) + "'"));
  }
}

class LoggingLevelTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = MinLogLevel(); }
  void TearDown() override { SetMinLogLevel(saved_); }
  LogLevel saved_ = LogLevel::kInfo;
};

TEST_F(LoggingLevelTest, SetAndGet) {
  for (LogLevel level : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    SetMinLogLevel(level);
    EXPECT_EQ(MinLogLevel(), level);
  }
}

int Touch(int* counter) { return ++*counter; }

TEST_F(LoggingLevelTest, MessagesBelowTheLevelAreNotEvaluated) {
  SetMinLogLevel(LogLevel::kWarning);
  int counter = 0;
  ::testing::internal::CaptureStderr();
  TESSERA_LOG(INFO) << "hidden " << Touch(&counter);
  TESSERA_LOG(DEBUG) << "hidden " << Touch(&counter);
  TESSERA_LOG(WARNING) << "shown " << Touch(&counter);
  TESSERA_LOG(ERROR) << "also shown";
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(counter, 1);
  EXPECT_THAT(err, Not(HasSubstr("hidden")));
  EXPECT_THAT(err, HasSubstr("shown 1\n"));
  EXPECT_THAT(err, HasSubstr("also shown\n"));
}

TEST_F(LoggingLevelTest, LineFormat) {
  SetMinLogLevel(LogLevel::kDebug);
  ::testing::internal::CaptureStderr();
  TESSERA_LOG(INFO) << "loaded " << 3 << " tensors";
  const std::string err = ::testing::internal::GetCapturedStderr();
  // "I <unix seconds with ms> logging_test.cc:<line>] message\n"
  EXPECT_THAT(err, MatchesRegex("I [0-9]+\\.[0-9][0-9][0-9] logging_test\\.cc:[0-9]+\\] loaded 3 "
                                "tensors\n"));
}

TEST_F(LoggingLevelTest, LogInUnbracedIfElse) {
  // The macro's dangling-else guard: the else binds to the outer if.
  SetMinLogLevel(LogLevel::kInfo);
  bool took_else = false;
  ::testing::internal::CaptureStderr();
  if (false)
    TESSERA_LOG(INFO) << "never";
  else
    took_else = true;
  ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(took_else);
}

TEST(CheckDeathTest, CheckAbortsWithMessage) {
  const int x = 3;
  TESSERA_CHECK(x == 3) << "not printed";
  EXPECT_DEATH(TESSERA_CHECK(x == 4) << "x was " << x, "Check failed: x == 4 x was 3");
  EXPECT_DEATH(TESSERA_CHECK_EQ(x, 4), "\\(3 vs 4\\)");
  EXPECT_DEATH(TESSERA_CHECK_LT(x, 2), "Check failed");
  EXPECT_DEATH(TESSERA_CHECK_OK(absl::InternalError("kaput")), "kaput");
  TESSERA_CHECK_OK(absl::OkStatus());
  TESSERA_CHECK_LE(x, 3);
}

}  // namespace
}  // namespace tessera
